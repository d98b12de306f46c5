"""Exact key groups merged by log-sum-exp (spec §3b) and joint text+video attention (spec §3c).

vmonarch.attention(..., sink_frames=, window_radius=, text_k=, text_v=, text_lens=) and
vmonarch.joint_attention(...) call into here; the operators are torch.ops.vmonarch.attention_exact_groups
and torch.ops.vmonarch.joint_attention (fake kernels in _ops.py, so torch.compile traces them).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import _ops


def _check_int(fn: str, name: str, value, minimum: int, allow_none: bool = False) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{fn}: {name} is a {type(value).__name__}, expected an int"
                        + (" or None" if allow_none else ""))
    if value < minimum:
        raise ValueError(f"{fn}: {name} is {value}, expected >= {minimum}" + (" or None" if allow_none else ""))
    return int(value)


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


def attention(q, k, v, grid: Sequence[int], layout: str, iterations: int, clamp: float, recompute_first_frame: bool,
              scale: Optional[float], return_lse: bool, sink_frames: int, window_radius: Optional[int],
              text_k, text_v, text_lens):
    fn = "vmonarch.attention"
    sink_frames = _check_int(fn, "sink_frames", sink_frames, 0)
    window_radius = _check_int(fn, "window_radius", window_radius, 0, allow_none=True)
    for name, t in (("text_k", text_k), ("text_v", text_v)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: {name} is a {type(t).__name__}, expected a torch.Tensor or None")
    if (text_k is None) != (text_v is None):
        raise ValueError(f"{fn}: {'text_k' if text_k is not None else 'text_v'} is given without "
                         f"{'text_v' if text_k is not None else 'text_k'}, expected both or neither")
    if text_k is None and text_lens is not None:
        raise ValueError(f"{fn}: text_lens is given without text_k/text_v")
    out, lse = _ops.ops.attention_exact_groups(
        q, k, v, list(grid), int(iterations), float(clamp), bool(recompute_first_frame),
        None if scale is None else float(scale), layout, bool(return_lse), sink_frames, window_radius,
        text_k, text_v, _lens_tensor(fn, "text_lens", text_lens))
    return (out, lse) if return_lse else out


def joint_attention(q, k, v, grid: Sequence[int], text_len: int, text_first: bool = False, text_lens=None,
                    text_mask: Optional[torch.Tensor] = None, layout: str = "bshd", iterations: int = 2,
                    clamp: float = 0.1, recompute_first_frame: bool = True, scale: Optional[float] = None,
                    return_lse: bool = False, sink_frames: int = 0, window_radius: Optional[int] = None):
    fn = "vmonarch.joint_attention"
    text_len = _check_int(fn, "text_len", text_len, 0)
    sink_frames = _check_int(fn, "sink_frames", sink_frames, 0)
    window_radius = _check_int(fn, "window_radius", window_radius, 0, allow_none=True)
    if text_lens is not None and text_mask is not None:
        raise ValueError(f"{fn}: text_lens and text_mask are both given, expected at most one")
    if text_mask is not None and not isinstance(text_mask, torch.Tensor):
        raise TypeError(f"{fn}: text_mask is a {type(text_mask).__name__}, expected a bool tensor [B, L] or None")
    grid = tuple(grid)
    if len(grid) != 3:
        raise ValueError(f"{fn}: grid is {grid!r}, expected (T, H, W)")
    out, lse = _ops.ops.joint_attention(
        q, k, v, [int(x) for x in grid], text_len, bool(text_first), _lens_tensor(fn, "text_lens", text_lens),
        text_mask, int(iterations), float(clamp), bool(recompute_first_frame), None if scale is None else float(scale),
        layout, bool(return_lse), sink_frames, window_radius)
    return (out, lse) if return_lse else out
