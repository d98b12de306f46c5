"""VMonarch attention as a differentiable composition of PyTorch operations (spec §3, gradients §7).

    import vmonarch.torch_impl
    out = vmonarch.torch_impl.attention(q, k, v, grid=(T, H, W))                     # like vmonarch.attention
    out = vmonarch.torch_impl.attention(q, k, v, grid, entropy_grad=True)            # exact gradient
    out.sum().backward()

Same algorithm, options, layouts and output as `vmonarch.attention`, but built from torch operations, so
torch.autograd differentiates it on any device torch runs on. Two uses: the PyTorch composition that the
operator's own backward is compared against, and training where the operator has no backward.

Gradient variants (spec §7): entropy_grad=False (default) treats cL, the negative entropy of the R rows,
as a constant (the paper's gradient, `vmonarch_reference(..., detach_entropy=True)`); entropy_grad=True
differentiates through it too (the exact gradient).

Numerics (spec §5): bfloat16/float16 inputs are computed in float32 (compute_dtype overrides this, e.g.
compute_dtype=torch.bfloat16 for an all-bf16 composition); the output has q's dtype, the LSE the compute
dtype. Autocast is switched off inside (it would lower the compute dtype of the matrix products).

Memory. No N×N matrix is formed. The R-step logits of one key frame are HW×HW per (batch, head); they are
formed for a chunk of (batch, head, key frame) blocks at a time, at most max(HW², max_logits) logits per
chunk (the frame-0 recompute likewise: HW×N logits per (batch, head), in chunks of pairs or of query rows, at
most max(N, max_logits) logits per chunk). A chunk's function holds about four tensors of its logit count
(logits, probabilities, the entropy product, logsumexp's exponentials), so the workspace peak is about
4 · max(HW², max_logits) elements of the compute dtype (and up to twice that while its backward runs).
With checkpoint=True (default) each chunk's R-step is recomputed in the backward pass (+1 R-step
forward per chunk, FlashAttention-style), so what autograd keeps between forward and backward is O(N·d)
per (batch, head) for the R-steps plus the L-steps' T×T softmax per position (2·N·T elements per
iteration: the logits' inputs and the probabilities), independent of HW. checkpoint=False keeps each
chunk's probabilities instead: t·T·HW² elements per (batch, head), faster when memory allows.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from ._args import check_bool, check_grid, check_int, check_options

__all__ = ["attention"]

_FN = "vmonarch.torch_impl.attention"
_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)
_HALF = (torch.bfloat16, torch.float16)


def _check_tensors(q, k, v, layout: str) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{_FN}: {name} is a {type(t).__name__}, expected a torch.Tensor")
    if not isinstance(layout, str) or layout not in ("bshd", "bhsd"):
        raise ValueError(f"{_FN}: layout is {layout!r}, expected 'bshd' ([batch, tokens, heads, head_dim]) "
                         "or 'bhsd' ([batch, heads, tokens, head_dim])")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{_FN}: {name} has {t.dim()} dimensions (shape {tuple(t.shape)}), expected 4 "
                             f"({'[batch, tokens, heads, head_dim]' if layout == 'bshd' else '[batch, heads, tokens, head_dim]'})")
        if t.device != q.device:
            raise ValueError(f"{_FN}: {name} is on {t.device}, expected {q.device} like q")
        if t.dtype != q.dtype:
            raise TypeError(f"{_FN}: {name} has dtype {t.dtype}, expected {q.dtype} like q")
    if q.dtype not in _DTYPES:
        raise TypeError(f"{_FN}: dtype {q.dtype} is not supported, expected bfloat16, float16, float32 or float64")
    if k.shape != q.shape:
        raise ValueError(f"{_FN}: k has shape {tuple(k.shape)}, expected {tuple(q.shape)} like q")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"{_FN}: v has shape {tuple(v.shape)}, expected {tuple(q.shape[:3])} in its first three "
                         "dimensions like q (only the value dimension may differ)")


def _r_step_chunk(aR, gamma, K, V, scale: float):
    """R-step of a chunk of key-frame blocks (spec §3). aR, K: [c, HW, d]; gamma: [c, HW] (the row scale
    s / max(cR, clamp)); V: [c, HW, dv] or None. Returns aL = s·R·K, cL = Σ_l R·x − logsumexp_l x
    (= Σ_l R log R) and Y = R·V (None when V is None), R = softmax_l x, x = gamma·⟨aR, K⟩."""
    x = torch.bmm(aR * gamma[..., None], K.transpose(1, 2))
    R = torch.softmax(x, -1)
    cL = (R * x).sum(-1) - torch.logsumexp(x, -1)
    aL = torch.bmm(R, K) * scale
    Y = torch.bmm(R, V) if V is not None else None
    return aL, cL, Y


def _dense_rows_chunk(q0, K, V, scale: float):
    """Exact attention of query rows q0 [c, r, d] over all keys K, V [c, N, ·]: (out, lse)."""
    x = torch.matmul(q0, K.transpose(-1, -2)) * scale
    return torch.matmul(torch.softmax(x, -1), V), torch.logsumexp(x, -1)


def _recompute_frame0(Q0, K, V, scale, max_logits, use_checkpoint):
    """Exact attention of the frame-0 queries Q0 [B, h, HW, d] over all keys K, V [B, h, N, ·], in chunks
    of whole (batch, head) pairs when HW·N logits fit in max_logits, else of query rows of one pair."""
    B, h, HW, d = Q0.shape
    N = K.shape[2]
    flat = lambda x: x.reshape(B * h, *x.shape[2:])
    Q0, K, V = flat(Q0), flat(K), flat(V)
    if HW * N <= max_logits:
        size = max_logits // (HW * N)
        chunks = [(Q0[i:j], K[i:j], V[i:j]) for i, j in _split(B * h, size)]
    else:
        rows = max(1, max_logits // N)
        chunks = [(Q0[p:p + 1, i:j], K[p:p + 1], V[p:p + 1]) for p in range(B * h) for i, j in _split(HW, rows)]
    parts = _chunked(lambda q0, kk, vv: _dense_rows_chunk(q0, kk, vv, scale), chunks, use_checkpoint)
    if HW * N <= max_logits:
        out, lse = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    else:
        per_pair = len(parts) // (B * h)
        out = torch.cat([torch.cat([p[0] for p in parts[i:i + per_pair]], 1) for i in range(0, len(parts), per_pair)])
        lse = torch.cat([torch.cat([p[1] for p in parts[i:i + per_pair]], 1) for i in range(0, len(parts), per_pair)])
    return out.reshape(B, h, HW, -1), lse.reshape(B, h, HW)


def _chunked(fn, chunks, use_checkpoint: bool):
    """Runs fn on each argument tuple; with use_checkpoint, its intermediates are recomputed in backward."""
    if use_checkpoint:
        return [_checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False) for args in chunks]
    return [fn(*args) for args in chunks]


def _split(n: int, size: int):
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def _r_step(aR, gamma, K, V, scale, max_logits, use_checkpoint):
    """All key-frame blocks of one R-step, chunked: aR, K [B, h, T, HW, d] → aL, cL, Y (spec §3)."""
    B, h, T, HW, d = aR.shape
    blocks = B * h * T
    per_chunk = max(1, max_logits // (HW * HW))
    flat = lambda x: x.reshape(blocks, *x.shape[3:])
    aR_f, g_f, K_f = flat(aR), flat(gamma), flat(K)
    V_f = flat(V) if V is not None else None
    fn = lambda a, g, kk, vv: _r_step_chunk(a, g, kk, vv, scale)
    parts = _chunked(fn, [(aR_f[i:j], g_f[i:j], K_f[i:j], None if V_f is None else V_f[i:j])
                          for i, j in _split(blocks, per_chunk)], use_checkpoint)
    aL = torch.cat([p[0] for p in parts]).reshape(B, h, T, HW, d)
    cL = torch.cat([p[1] for p in parts]).reshape(B, h, T, HW)
    Y = torch.cat([p[2] for p in parts]).reshape(B, h, T, HW, V.shape[-1]) if V is not None else None
    return aL, cL, Y


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
    entropy_grad: bool = False,
    compute_dtype: Optional[torch.dtype] = None,
    max_logits: int = 1 << 24,
    checkpoint: bool = True,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """VMonarch attention (spec §3) from torch operations, differentiable by torch.autograd.

    Args as `vmonarch.attention` (q, k, v in layout "bshd" [B, N, heads, d] or "bhsd" [B, heads, N, d],
    N = T*H*W frame-major; grid; iterations 1..8; clamp >= 0; recompute_first_frame; scale; return_lse),
    plus:
        entropy_grad: False = the paper's gradient (cL constant), True = the exact gradient (spec §7).
        compute_dtype: dtype of the computation; default float32 for bfloat16/float16 inputs, else q's.
        max_logits: logits formed at once per chunk (at least one key frame's HW×HW block); see the
            module docstring for the memory this bounds.
        checkpoint: recompute each chunk's R-step in the backward pass instead of keeping its HW×HW
            probabilities (only matters when gradients are recorded).

    Returns out in q's layout and dtype, or (out, lse) with lse [B, heads, N] in the compute dtype (the
    Monarch row objective logsumexp_k z; the exact log-sum-exp for recomputed frame-0 rows).
    Raises TypeError / ValueError like `vmonarch.attention` for wrong types, shapes and values.
    """
    _check_tensors(q, k, v, layout)
    grid = check_grid(_FN, grid)
    iterations, clamp, recompute_first_frame, scale = check_options(_FN, iterations, clamp, recompute_first_frame,
                                                                    scale)
    return_lse = check_bool(_FN, "return_lse", return_lse)
    entropy_grad = check_bool(_FN, "entropy_grad", entropy_grad)
    checkpoint = check_bool(_FN, "checkpoint", checkpoint)
    max_logits = check_int(_FN, "max_logits", max_logits, lo=1)
    if compute_dtype is None:
        compute_dtype = torch.float32 if q.dtype in _HALF else q.dtype
    elif compute_dtype not in _DTYPES:
        raise TypeError(f"{_FN}: argument 'compute_dtype' is {compute_dtype!r}, expected None or one of "
                        "torch.bfloat16, torch.float16, torch.float32, torch.float64")

    # Autocast would run the matrix products in half precision: the compute dtype is ours to choose.
    with torch.autocast(q.device.type, enabled=False):
        return _attention(q, k, v, grid, layout, iterations, clamp, recompute_first_frame, scale, return_lse,
                          entropy_grad, compute_dtype, max_logits, checkpoint)


def _attention(q, k, v, grid, layout, iterations, clamp, recompute_first_frame, scale, return_lse, entropy_grad,
               compute_dtype, max_logits, checkpoint):
    T, H, W = grid
    HW = H * W
    tok = 1 if layout == "bshd" else 2
    N = q.shape[tok]
    if T * HW != N:
        raise ValueError(f"{_FN}: argument 'grid' is {grid!r} ({T * HW} tokens), expected T*H*W == {N}, "
                         f"the token count of q (dimension {tok})")
    B, heads, d, dv = q.shape[0], q.shape[3 - tok], q.shape[3], v.shape[3]
    s = d ** -0.5 if scale is None else scale

    # [B, heads, T, HW, ·] in the compute dtype.
    to_frames = lambda x: (x.transpose(1, 2) if layout == "bshd" else x).to(compute_dtype).reshape(
        B, heads, T, HW, x.shape[-1])
    Q, K, V = to_frames(q), to_frames(k), to_frames(v)
    use_checkpoint = checkpoint and torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))

    # Start: L = identity, so aR = Q and cR = 1 (spec §3); the row scale is s / max(cR, clamp).
    aR = Q
    gamma = torch.full((B, heads, T, HW), s / max(1.0, clamp), dtype=compute_dtype, device=q.device)
    Q_pos = Q.transpose(2, 3)                               # [B, h, HW (position j), T (frame i), d]
    for it in range(iterations):
        last = it == iterations - 1
        aL, cL, Y = _r_step(aR, gamma, K, V if last else None, s, max_logits, use_checkpoint)
        if not entropy_grad:
            cL = cL.detach()
        # L-step per position j: z[i, k] = ⟨Q[i][j], aL[j][k]⟩ − cL[j][k], L = softmax_k z (spec §3).
        z = torch.matmul(Q_pos, aL.transpose(2, 3).transpose(-1, -2)) - cL.transpose(2, 3)[..., None, :]
        Lm = torch.softmax(z, -1)                           # [B, h, j, i, k]
        if not last:
            cR = Lm.sum(-2).transpose(2, 3)                 # Σ_i L[j][i][k] → [B, h, k, j]
            aR = torch.matmul(Lm.transpose(-1, -2), Q_pos).transpose(2, 3)   # Σ_i L·Q[i][j] → [B, h, k, j, d]
            gamma = s / cR.clamp_min(clamp)
    out = torch.matmul(Lm, Y.transpose(2, 3)).transpose(2, 3).reshape(B, heads, N, dv)   # O[i][j] = Σ_k L·y[k][j]
    lse = torch.logsumexp(z, -1).transpose(2, 3).reshape(B, heads, N)

    if recompute_first_frame:
        # Frame-0 queries: exact attention over all N keys (spec §3), chunked like the R-step.
        o0, lse0 = _recompute_frame0(Q[:, :, 0], K.reshape(B, heads, N, d), V.reshape(B, heads, N, dv), s,
                                     max_logits, use_checkpoint)
        out = torch.cat([o0, out[:, :, HW:]], 2)
        lse = torch.cat([lse0, lse[:, :, HW:]], 2)

    out = out.to(q.dtype)
    if layout == "bshd":
        out = out.transpose(1, 2).contiguous()
    return (out, lse) if return_lse else out
