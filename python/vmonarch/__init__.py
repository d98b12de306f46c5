"""VMonarch structured attention for video diffusion transformers, as PyTorch operators.

    import vmonarch
    out = vmonarch.attention(q, k, v, grid=(T, H, W))                 # q, k, v: [B, T*H*W, heads, d]
    out = vmonarch.attention(q, k, v, grid=(T, H, W), layout="bhsd")  # q, k, v: [B, heads, T*H*W, d]

Tokens are frame-major (token n = i*H*W + j). CPU: bfloat16, float16, float32, float64. CUDA: bfloat16
and float16 (head_dim 64 or 128); float32 CUDA tensors raise TypeError. attention() is differentiable
on the CPU and on CUDA (spec §7, torch.autograd; entropy_grad, deterministic and save_state on both), exact
key groups and joint sequences included; dense_attention's backward and forward-mode AD raise
NotImplementedError. Integrations: vmonarch.wan (diffusers), vmonarch.wan_original (Wan2.1 code
base).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch

from . import _exact, _ops
from ._args import check_bool, check_grid, check_int, check_options, check_scale

__version__ = "0.1.0"
__all__ = ["attention", "joint_attention", "dense_attention", "flops", "FlopCount", "cuda_built", "cuda_available"]

_LAYOUTS = ("bshd", "bhsd")


def _check_common(fn: str, q, k, v, layout: str) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: {name} is a {type(t).__name__}, expected a torch.Tensor")
    if not isinstance(layout, str) or layout not in _LAYOUTS:
        raise ValueError(f"{fn}: layout is {layout!r}, expected 'bshd' ([batch, tokens, heads, head_dim]) "
                         "or 'bhsd' ([batch, heads, tokens, head_dim])")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    grid: Sequence[int],
    layout: str = "bshd",
    iterations: int = 2,
    clamp: float = 0.1,
    recompute_first_frame: bool = True,
    scale: Optional[float] = None,
    return_lse: bool = False,
    sink_frames: int = 0,
    window_radius: Optional[int] = None,
    text_k: Optional[torch.Tensor] = None,
    text_v: Optional[torch.Tensor] = None,
    text_lens=None,
    entropy_grad: bool = False,
    deterministic: bool = False,
    save_state: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """VMonarch attention over a video's T*H*W tokens (spec: shared/spec/VMONARCH.md).

    Args:
        q, k: [B, N, heads, d] ("bshd") or [B, heads, N, d] ("bhsd"), N = T*H*W, frame-major.
        v: like k with its own last dimension dv (CUDA: dv == d).
        grid: (T, H, W), the latent video in tokens.
        iterations: alternating R/L steps t, 1..8 (default 2).
        clamp: the R-step divides by max(cR, clamp); 0 disables the clamp.
        recompute_first_frame: exact dense attention for the queries of frame 0.
        scale: softmax scale, default 1/sqrt(d).
        return_lse: also return the per-row log-sum-exp [B, heads, N] (float32; float64 for float64 CPU
            inputs): the Monarch row objective, exact for recomputed rows.
        sink_frames: S >= 0; the keys of frames 0..S-1 are attended exactly by every query and merged with
            its Monarch row by log-sum-exp (spec §3b); S >= T gives dense attention. Default 0 (the paper).
        window_radius: r >= 0 or None; key frames within r of the query's frame are exact too (spec §3b).
        text_k, text_v: extra keys/values [B, L, heads, d] (in `layout`, any L >= 0) attended exactly by every
            query (text tokens); text_lens: valid prefix length per batch element (list or int tensor [B]).
            All of these run on CPU and CUDA, forward and backward (text_k and text_v get gradients too).
        entropy_grad: backward through the R-step entropy cL too (the exact gradient); default False is
            the paper's gradient, which treats cL as a constant.
        deterministic: bitwise repeatable backward (the CPU backward always is).
        save_state: keep the training forward's intermediates for the backward (per token per head at
            d = 128, t = 2: about 2 KB on the CPU, 1 KB on CUDA) instead of rerunning the forward inside the
            backward (default).

    Returns out in q's layout and dtype ([B, N, heads, dv] or [B, heads, N, dv]), or (out, lse).
    Raises ValueError for invalid shapes/values (tensors on different devices among them), TypeError for
    dtypes (float32 on CUDA among them) and for arguments of the wrong type (e.g. a float iterations or a
    string recompute_first_frame), NotImplementedError for forward-mode AD (torch.func.jvp).
    """
    fn = "vmonarch.attention"
    _check_common(fn, q, k, v, layout)
    grid = check_grid(fn, grid)
    iterations, clamp, recompute_first_frame, scale = check_options(fn, iterations, clamp, recompute_first_frame, scale)
    return_lse = check_bool(fn, "return_lse", return_lse)
    entropy_grad = check_bool(fn, "entropy_grad", entropy_grad)
    deterministic = check_bool(fn, "deterministic", deterministic)
    save_state = check_bool(fn, "save_state", save_state)
    if _exact.wanted(sink_frames, window_radius, text_k, text_v, text_lens):
        return _exact.attention(q, k, v, grid, layout, iterations, clamp, recompute_first_frame, scale,
                                return_lse, sink_frames, window_radius, text_k, text_v, text_lens, entropy_grad,
                                deterministic, save_state)
    wants_grad = torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in (q, k, v))
    if wants_grad:
        # Gradients wanted (CPU and CUDA): the training forward, which always returns the LSE the backward
        # needs and whose autograd rule carries the backward options (spec §7).
        out, lse, _ = _ops.ops.attention_train(q, k, v, list(grid), iterations, clamp, recompute_first_frame, scale,
                                               layout, entropy_grad, deterministic, save_state)
        return (out, lse) if return_lse else out
    out, lse = _ops.ops.attention(q, k, v, list(grid), iterations, clamp, recompute_first_frame, scale, layout,
                                  return_lse)
    return (out, lse) if return_lse else out


def joint_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    grid: Sequence[int],
    text_len: int,
    text_first: bool = False,
    text_lens=None,
    text_mask: Optional[torch.Tensor] = None,
    layout: str = "bshd",
    iterations: int = 2,
    clamp: float = 0.1,
    recompute_first_frame: bool = True,
    scale: Optional[float] = None,
    return_lse: bool = False,
    sink_frames: int = 0,
    window_radius: Optional[int] = None,
    entropy_grad: bool = False,
    deterministic: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """MMDiT self-attention over one sequence of N = T*H*W video and text_len text tokens (spec §3c).

    q, k, v: [B, N + L, heads, d] ("bshd") or [B, heads, N + L, d] ("bhsd"); the text comes first
    (text_first=True, CogVideoX) or last (HunyuanVideo, Mochi); the video part is frame-major. Video queries
    get VMonarch over the video keys merged with the valid text keys by log-sum-exp (and sink_frames /
    window_radius as in attention()); text queries get exact attention over every valid key. Valid text:
    text_lens (list or int tensor [B] of prefix lengths) or text_mask (bool [B, L] key-padding mask, which
    must be a prefix: ValueError otherwise); default all valid. Returns out (and lse [B, heads, N + L]) in the
    sequence's order; padded text queries are computed like the others. CPU and CUDA.
    Differentiable on CPU and CUDA (spec §7; entropy_grad and deterministic as in attention(), lean mode).
    """
    fn = "vmonarch.joint_attention"
    _check_common(fn, q, k, v, layout)
    grid = check_grid(fn, grid)
    iterations, clamp, recompute_first_frame, scale = check_options(fn, iterations, clamp, recompute_first_frame, scale)
    return_lse = check_bool(fn, "return_lse", return_lse)
    text_first = check_bool(fn, "text_first", text_first)
    entropy_grad = check_bool(fn, "entropy_grad", entropy_grad)
    deterministic = check_bool(fn, "deterministic", deterministic)
    return _exact.joint_attention(q, k, v, grid, text_len, text_first, text_lens, text_mask, layout, iterations,
                                  clamp, recompute_first_frame, scale, return_lse, sink_frames,
                                  window_radius, entropy_grad, deterministic)


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: str = "bshd",
    scale: Optional[float] = None,
    return_lse: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Exact softmax(q kᵀ scale) v through the same library (q and k may have different token counts)."""
    fn = "vmonarch.dense_attention"
    _check_common(fn, q, k, v, layout)
    return_lse = check_bool(fn, "return_lse", return_lse)
    out, lse = _ops.ops.dense_attention(q, k, v, check_scale(fn, scale), layout, return_lse)
    return (out, lse) if return_lse else out


class FlopCount(NamedTuple):
    """Forward FLOPs, all batches and heads (spec §4)."""

    r_steps: float
    l_steps: float
    recompute: float
    vmonarch: float
    dense: float
    exact: float = 0.0         # exact key groups of the video queries (spec §3b)
    text_queries: float = 0.0  # exact text queries of a joint sequence (spec §3c)


def flops(grid: Sequence[int], head_dim: int, heads: int, batch: int = 1, iterations: int = 2,
          recompute_first_frame: bool = True, sink_frames: int = 0, window_radius: Optional[int] = None,
          text_len: int = 0, joint: bool = False) -> FlopCount:
    """FLOPs of one VMonarch attention call and of dense attention on the same shapes (spec §4).

    sink_frames, window_radius: the exact key groups; text_len: extra (text) keys of every video query;
    joint=True: a joint sequence (joint_attention) whose text queries and dense cost cover N + text_len.

    Raises TypeError for arguments of the wrong type, ValueError for sizes < 1, iterations outside 1..8
    and sizes whose products (T*H*W, batch*T*H*W*heads*head_dim) overflow int64.
    """
    fn = "vmonarch.flops"
    grid = check_grid(fn, grid)
    # Ranges and size products are checked once, by the operator (the C++ library's checked sizes).
    sizes = [check_int(fn, name, value) for name, value in
             (("head_dim", head_dim), ("heads", heads), ("batch", batch), ("iterations", iterations))]
    recompute_first_frame = check_bool(fn, "recompute_first_frame", recompute_first_frame)
    if sink_frames != 0 or window_radius is not None or text_len != 0 or joint:
        return FlopCount(*_exact.flops(fn, grid, sizes, recompute_first_frame, sink_frames, window_radius, text_len,
                                       check_bool(fn, "joint", joint)))
    values = _ops.ops.flops(list(grid), *sizes, recompute_first_frame)
    return FlopCount(*values)


def cuda_built() -> bool:
    """True when this build of the extension has the CUDA kernels."""
    return bool(_ops.ops.cuda_built())


def cuda_available() -> bool:
    """True when the extension has CUDA kernels and a CUDA device is visible."""
    return bool(_ops.ops.cuda_available())
