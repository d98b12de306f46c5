"""Exact key groups merged by log-sum-exp (spec §3b) and joint text+video attention (spec §3c).

vmonarch.attention(..., sink_frames=, window_radius=, text_k=, text_v=, text_lens=) and
vmonarch.joint_attention(...) call into here; the operators are torch.ops.vmonarch.attention_exact_groups
and torch.ops.vmonarch.joint_attention (fake kernels in _ops.py, so torch.compile traces them). When gradients
are wanted (CPU or CUDA tensors), the training operators attention_exact_train / joint_attention_train run
instead: their autograd rules (_backward.py) carry entropy_grad, deterministic and save_state to the backward
(spec §7).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import _ops
from ._args import check_int


def _sink_frames(fn: str, value) -> int:
    return check_int(fn, "sink_frames", value, 0, what="an int >= 0 (0: no sink frames)")


def _window_radius(fn: str, value) -> Optional[int]:
    return None if value is None else check_int(fn, "window_radius", value, 0, what="an int >= 0 or None (no window)")


def wanted(sink_frames, window_radius, text_k, text_v, text_lens) -> bool:
    """True unless every exact-group argument has its default (then the plain operator runs)."""
    plain_sinks = isinstance(sink_frames, int) and not isinstance(sink_frames, bool) and sink_frames == 0
    return not plain_sinks or any(x is not None for x in (window_radius, text_k, text_v, text_lens))


def _lens_tensor(fn: str, name: str, lens) -> Optional[torch.Tensor]:
    """text_lens as an int64 tensor [B] (a tensor, or a sequence of ints), or None."""
    if lens is None:
        return None
    if isinstance(lens, torch.Tensor):
        if lens.dtype.is_floating_point or lens.dtype == torch.bool:
            raise TypeError(f"{fn}: {name} has dtype {lens.dtype}, expected an integer tensor")
        return lens
    try:
        values = [int(x) for x in lens]
    except TypeError:
        raise TypeError(f"{fn}: {name} is a {type(lens).__name__}, expected a tensor or a sequence of ints") from None
    return torch.tensor(values, dtype=torch.int64)


def _wants_grad(*tensors) -> bool:
    """Gradients are wanted through a CPU or CUDA call: grad mode on and some input requires grad."""
    return (torch.is_grad_enabled() and tensors[0].device.type in ("cpu", "cuda")
            and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors))


def attention(q, k, v, grid: Sequence[int], layout: str, iterations: int, clamp: float, recompute_first_frame: bool,
              scale: Optional[float], return_lse: bool, sink_frames: int, window_radius: Optional[int],
              text_k, text_v, text_lens, entropy_grad: bool = False, deterministic: bool = False,
              save_state: bool = False):
    fn = "vmonarch.attention"
    sink_frames = _sink_frames(fn, sink_frames)
    window_radius = _window_radius(fn, window_radius)
    for name, t in (("text_k", text_k), ("text_v", text_v)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: {name} is a {type(t).__name__}, expected a torch.Tensor or None")
    if (text_k is None) != (text_v is None):
        raise ValueError(f"{fn}: {'text_k' if text_k is not None else 'text_v'} is given without "
                         f"{'text_v' if text_k is not None else 'text_k'}, expected both or neither")
    if text_k is None and text_lens is not None:
        raise ValueError(f"{fn}: text_lens is given without text_k/text_v")
    lens = _lens_tensor(fn, "text_lens", text_lens)
    if _wants_grad(q, k, v, text_k, text_v):
        out, lse, _ = _ops.ops.attention_exact_train(
            q, k, v, list(grid), iterations, clamp, recompute_first_frame, scale, layout, sink_frames, window_radius,
            text_k, text_v, lens, entropy_grad, deterministic, save_state)
        return (out, lse) if return_lse else out
    out, lse = _ops.ops.attention_exact_groups(
        q, k, v, list(grid), iterations, clamp, recompute_first_frame, scale, layout, return_lse, sink_frames,
        window_radius, text_k, text_v, lens)
    return (out, lse) if return_lse else out


def joint_attention(q, k, v, grid: Sequence[int], text_len: int, text_first: bool, text_lens,
                    text_mask: Optional[torch.Tensor], layout: str, iterations: int, clamp: float,
                    recompute_first_frame: bool, scale: Optional[float], return_lse: bool, sink_frames: int,
                    window_radius: Optional[int], entropy_grad: bool = False, deterministic: bool = False):
    fn = "vmonarch.joint_attention"
    text_len = check_int(fn, "text_len", text_len, 0)
    sink_frames = _sink_frames(fn, sink_frames)
    window_radius = _window_radius(fn, window_radius)
    if text_lens is not None and text_mask is not None:
        raise ValueError(f"{fn}: text_lens and text_mask are both given, expected at most one")
    if text_mask is not None and not isinstance(text_mask, torch.Tensor):
        raise TypeError(f"{fn}: text_mask is a {type(text_mask).__name__}, expected a bool tensor [B, L] or None")
    lens = _lens_tensor(fn, "text_lens", text_lens)
    if _wants_grad(q, k, v):
        out, lse = _ops.ops.joint_attention_train(
            q, k, v, list(grid), text_len, text_first, lens, text_mask, iterations, clamp, recompute_first_frame, scale,
            layout, sink_frames, window_radius, entropy_grad, deterministic)
        return (out, lse) if return_lse else out
    out, lse = _ops.ops.joint_attention(
        q, k, v, list(grid), text_len, text_first, lens, text_mask, iterations,
        clamp, recompute_first_frame, scale, layout, return_lse, sink_frames, window_radius)
    return (out, lse) if return_lse else out


def flops(fn: str, grid, sizes, recompute_first_frame: bool, sink_frames, window_radius, text_len, joint: bool):
    """The exact_flops operator's counts (r_steps, l_steps, recompute, vmonarch, dense, exact, text_queries)."""
    return _ops.ops.exact_flops(list(grid), *sizes, recompute_first_frame, _sink_frames(fn, sink_frames),
                                _window_radius(fn, window_radius), check_int(fn, "text_len", text_len, 0), joint)
