"""Fake kernels and autograd rules of the backward pass (spec §7; C++: include/vmonarch/backward.hpp).

torch.ops.vmonarch.attention_train is the forward used when gradients are needed: it returns out, the
LSE and, with save_state=True, the training forward's saved state as a uint8 tensor. Its autograd rule
calls torch.ops.vmonarch.attention_backward, which returns dq, dk, dv in the inputs' layout and dtype.
The plain torch.ops.vmonarch.attention op gets an autograd rule too (paper gradient, lean mode).
CPU and CUDA tensors (CUDA: bfloat16 / float16, head dim 64 or 128); exact key groups have no backward.
"""
from __future__ import annotations

import torch

_HEADER_BYTES = 128  # SavedHeader (src/core/backward_problem.hpp)


def _layout_axes(layout):
    if layout == "bshd":
        return 1, 2
    if layout == "bhsd":
        return 2, 1
    raise ValueError(f"vmonarch: layout is {layout!r}, expected 'bshd' or 'bhsd'")


def _align(x, to=256):
    return (x + to - 1) // to * to


def saved_state_bytes(q, v, iterations, layout="bshd"):
    """Bytes of the saved state of one training forward (header included), as the C++ library computes.

    CPU: per (batch, head) blocks in the accumulation precision. CUDA: whole-tensor regions (256-byte
    aligned) with 2-byte vectors and f32 scalars (src/core/backward_problem.hpp, CudaSavedLayout)."""
    tok, hd = _layout_axes(layout)
    B, N, H, d, dv, t = q.shape[0], q.shape[tok], q.shape[hd], q.shape[3], v.shape[3], int(iterations)
    if q.device.type == "cuda":
        rows = B * H * N
        vec_d, vec_dv, scalar = _align(rows * d * 2), _align(rows * dv * 2), _align(rows * 4)
        return _HEADER_BYTES + t * (vec_d + 2 * scalar) + (t - 1) * (vec_d + scalar) + vec_dv
    per_head = t * (N * d + 2 * N) + (t - 1) * (N * d + N) + N * dv
    acc = 8 if q.dtype == torch.float64 else 4
    return _HEADER_BYTES + B * H * per_head * acc


@torch.library.register_fake("vmonarch::attention_train")
def _attention_train_fake(q, k, v, grid, iterations=2, clamp=0.1, recompute_first_frame=True, scale=None,
                          layout="bshd", entropy_grad=False, deterministic=False, save_state=False):
    from ._ops import _fake_outputs

    if len(grid) != 3:
        raise ValueError(f"vmonarch.attention: grid has {len(grid)} entries, expected 3")
    out, lse = _fake_outputs("vmonarch.attention", q, k, v, layout, True)
    size = saved_state_bytes(q, v, iterations, layout) if save_state else 0
    return out, lse, q.new_empty((size,), dtype=torch.uint8)


@torch.library.register_fake("vmonarch::attention_backward")
def _attention_backward_fake(q, k, v, out, lse, dout, dlse, grid, iterations=2, clamp=0.1,
                             recompute_first_frame=True, scale=None, layout="bshd", entropy_grad=False,
                             deterministic=False, saved=None):
    return torch.empty_like(q, memory_format=torch.contiguous_format), \
        torch.empty_like(k, memory_format=torch.contiguous_format), \
        torch.empty_like(v, memory_format=torch.contiguous_format)


# --- attention_train: the forward of training --------------------------------------------------------
def _train_setup(ctx, inputs, output):
    q, k, v, grid, iterations, clamp, recompute, scale, layout, entropy_grad, deterministic, _save = inputs
    out, lse, saved = output
    ctx.save_for_backward(q, k, v, out, lse, saved)
    ctx.args = (list(grid), int(iterations), float(clamp), bool(recompute), scale, layout, bool(entropy_grad),
                bool(deterministic))
    ctx.mark_non_differentiable(saved)


def _train_backward(ctx, dout, dlse, _dsaved):
    q, k, v, out, lse, saved = ctx.saved_tensors
    grid, iterations, clamp, recompute, scale, layout, entropy_grad, deterministic = ctx.args
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = torch.ops.vmonarch.attention_backward(
        q, k, v, out, lse, dout, dlse, grid, iterations, clamp, recompute, scale, layout, entropy_grad,
        deterministic, saved if saved.numel() > 0 else None)
    return (dq, dk, dv) + (None,) * 9


torch.library.register_autograd("vmonarch::attention_train", _train_backward, setup_context=_train_setup)


# --- attention: the inference op, differentiable too (paper gradient, lean mode) ---------------------
def _attention_setup(ctx, inputs, output):
    q, k, v, grid, iterations, clamp, recompute, scale, layout, _return_lse = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.args = (list(grid), int(iterations), float(clamp), bool(recompute), scale, layout)


def _attention_backward(ctx, dout, dlse):
    q, k, v, out, lse = ctx.saved_tensors
    grid, iterations, clamp, recompute, scale, layout = ctx.args
    if lse.numel() == 0:  # the forward was asked for no LSE: the backward needs it, so rerun
        out, lse = torch.ops.vmonarch.attention(q, k, v, grid, iterations, clamp, recompute, scale, layout, True)
        dlse = None
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = torch.ops.vmonarch.attention_backward(
        q, k, v, out, lse, dout, dlse, grid, iterations, clamp, recompute, scale, layout, False, False, None)
    return (dq, dk, dv) + (None,) * 7


torch.library.register_autograd("vmonarch::attention", _attention_backward, setup_context=_attention_setup)
