"""Fake kernels and autograd rules of the backward pass (spec §7; C++: include/vmonarch/backward.hpp).

torch.ops.vmonarch.attention_train is the forward used when gradients are needed: it returns out, the
LSE and, with save_state=True, the training forward's saved state as a uint8 tensor. Its autograd rule
calls torch.ops.vmonarch.attention_backward, which returns dq, dk, dv in the inputs' layout and dtype.
The plain torch.ops.vmonarch.attention op gets an autograd rule too (paper gradient, lean mode).
CUDA tensors: the backward is CPU-only in this version and raises NotImplementedError.
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


def saved_state_bytes(q, v, iterations, layout="bshd"):
    """Bytes of the saved state of one training forward (header included), as the C++ library computes."""
    tok, hd = _layout_axes(layout)
    B, N, H, d, dv, t = q.shape[0], q.shape[tok], q.shape[hd], q.shape[3], v.shape[3], int(iterations)
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


def _cuda_not_yet(q):
    if q.device.type == "cuda":
        raise NotImplementedError(
            "vmonarch.attention: the backward pass runs on the CPU only in this version (the CUDA backward "
            "kernels are not written yet); run inference under torch.no_grad(), or train on CPU tensors")


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
    _cuda_not_yet(q)
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
    _cuda_not_yet(q)
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
