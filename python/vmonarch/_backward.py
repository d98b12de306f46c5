"""Fake kernels and autograd rules of the backward pass (spec §7; C++: include/vmonarch/backward.hpp).

torch.ops.vmonarch.attention_train is the forward used when gradients are needed: it returns out, the
LSE and, with save_state=True, the training forward's saved state as a uint8 tensor. Its autograd rule
calls torch.ops.vmonarch.attention_backward, which returns dq, dk, dv in the inputs' layout and dtype.
The plain torch.ops.vmonarch.attention op gets an autograd rule too (paper gradient; without its LSE output
the backward reruns the forward once, as the training forward with the state kept). Either way the forward runs
at most twice per step (lean mode: once more inside the backward; saved mode: never again).
Exact key groups (spec §3b) have attention_exact_train / attention_exact_backward (which also returns the
text keys' gradients), joint sequences (spec §3c) joint_attention_train / joint_attention_backward (lean
mode); the plain attention_exact_groups and joint_attention ops are differentiable the same way.
CUDA tensors: attention_train / attention_backward run on CUDA (bfloat16 / float16, head dim 64 or 128, every
option: entropy_grad, deterministic, save_state; no host synchronization, so capturable in a CUDA graph),
and so do the exact-group and joint ones.
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
    # Absent output gradients arrive as None, not as zeros: autograd would otherwise allocate and fill a zero
    # "gradient" of the saved state (its whole size) and of the LSE for every backward.
    ctx.set_materialize_grads(False)


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
    saved = None
    if lse.numel() == 0:
        # The forward was asked for no LSE, which the backward needs: rerun it once as the training forward
        # with its state kept, so the backward does not rerun it a second time (lean mode would).
        out, lse, saved = torch.ops.vmonarch.attention_train(q, k, v, grid, iterations, clamp, recompute, scale,
                                                             layout, False, False, True)
        dlse = None
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = torch.ops.vmonarch.attention_backward(
        q, k, v, out, lse, dout, dlse, grid, iterations, clamp, recompute, scale, layout, False, False, saved)
    return (dq, dk, dv) + (None,) * 7


torch.library.register_autograd("vmonarch::attention", _attention_backward, setup_context=_attention_setup)


# --- exact key groups (spec §3b): attention_exact_train and the plain attention_exact_groups op -------------
@torch.library.register_fake("vmonarch::attention_exact_train")
def _attention_exact_train_fake(q, k, v, grid, iterations=2, clamp=0.1, recompute_first_frame=True, scale=None,
                                layout="bshd", sink_frames=0, window_radius=None, text_k=None, text_v=None,
                                text_lens=None, entropy_grad=False, deterministic=False, save_state=False):
    return _attention_train_fake(q, k, v, grid, iterations, clamp, recompute_first_frame, scale, layout,
                                 entropy_grad, deterministic, save_state)


@torch.library.register_fake("vmonarch::attention_exact_backward")
def _attention_exact_backward_fake(q, k, v, out, lse, dout, dlse, grid, iterations=2, clamp=0.1,
                                   recompute_first_frame=True, scale=None, layout="bshd", sink_frames=0,
                                   window_radius=None, text_k=None, text_v=None, text_lens=None, entropy_grad=False,
                                   deterministic=False, saved=None):
    dq, dk, dv = _attention_backward_fake(q, k, v, out, lse, dout, dlse, grid)
    if text_k is None:
        return dq, dk, dv, q.new_empty((0,)), q.new_empty((0,))
    return dq, dk, dv, torch.empty_like(text_k, memory_format=torch.contiguous_format), \
        torch.empty_like(text_v, memory_format=torch.contiguous_format)


def _text_grads(text_k, dtk, dtv):
    """The text keys' gradients as autograd returns them (None without text keys)."""
    return (dtk, dtv) if text_k is not None else (None, None)


def _exact_train_setup(ctx, inputs, output):
    (q, k, v, grid, iterations, clamp, recompute, scale, layout, sink_frames, window_radius, text_k, text_v, text_lens,
     entropy_grad, deterministic, _save) = inputs
    out, lse, saved = output
    ctx.save_for_backward(q, k, v, out, lse, saved, text_k, text_v, text_lens)
    ctx.args = (list(grid), int(iterations), float(clamp), bool(recompute), scale, layout, int(sink_frames),
                window_radius, bool(entropy_grad), bool(deterministic))
    ctx.mark_non_differentiable(saved)
    ctx.set_materialize_grads(False)  # as _train_setup: no zero gradient of the saved state


def _exact_train_backward(ctx, dout, dlse, _dsaved):
    q, k, v, out, lse, saved, text_k, text_v, text_lens = ctx.saved_tensors
    grid, iterations, clamp, recompute, scale, layout, sink_frames, window_radius, entropy_grad, deterministic = ctx.args
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv, dtk, dtv = torch.ops.vmonarch.attention_exact_backward(
        q, k, v, out, lse, dout, dlse, grid, iterations, clamp, recompute, scale, layout, sink_frames, window_radius,
        text_k, text_v, text_lens, entropy_grad, deterministic, saved if saved.numel() > 0 else None)
    return (dq, dk, dv) + (None,) * 8 + _text_grads(text_k, dtk, dtv) + (None,) * 4


torch.library.register_autograd("vmonarch::attention_exact_train", _exact_train_backward,
                                setup_context=_exact_train_setup)


def _exact_setup(ctx, inputs, output):
    (q, k, v, grid, iterations, clamp, recompute, scale, layout, _return_lse, sink_frames, window_radius, text_k,
     text_v, text_lens) = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, text_k, text_v, text_lens)
    ctx.args = (list(grid), int(iterations), float(clamp), bool(recompute), scale, layout, int(sink_frames),
                window_radius)


def _exact_backward(ctx, dout, dlse):
    q, k, v, out, lse, text_k, text_v, text_lens = ctx.saved_tensors
    grid, iterations, clamp, recompute, scale, layout, sink_frames, window_radius = ctx.args
    saved = None
    if lse.numel() == 0:
        # As for the plain attention op: rerun the forward once, as the training forward with its state kept, so
        # that the backward does not rerun it a second time.
        out, lse, saved = torch.ops.vmonarch.attention_exact_train(
            q, k, v, grid, iterations, clamp, recompute, scale, layout, sink_frames, window_radius, text_k, text_v,
            text_lens, False, False, True)
        dlse = None
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv, dtk, dtv = torch.ops.vmonarch.attention_exact_backward(
        q, k, v, out, lse, dout, dlse, grid, iterations, clamp, recompute, scale, layout, sink_frames, window_radius,
        text_k, text_v, text_lens, False, False, saved)
    return (dq, dk, dv) + (None,) * 9 + _text_grads(text_k, dtk, dtv) + (None,)


torch.library.register_autograd("vmonarch::attention_exact_groups", _exact_backward, setup_context=_exact_setup)


# --- joint text+video sequences (spec §3c): joint_attention_train and the plain joint_attention op ---------
@torch.library.register_fake("vmonarch::joint_attention_train")
def _joint_train_fake(q, k, v, grid, text_len, text_first=False, text_lens=None, iterations=2, clamp=0.1,
                      recompute_first_frame=True, scale=None, layout="bshd", sink_frames=0, window_radius=None,
                      entropy_grad=False, deterministic=False):
    from ._ops import _joint_attention_fake

    return _joint_attention_fake(q, k, v, grid, text_len, text_first, text_lens, None, iterations, clamp,
                                 recompute_first_frame, scale, layout, True, sink_frames, window_radius)


@torch.library.register_fake("vmonarch::joint_attention_backward")
def _joint_backward_fake(q, k, v, out, lse, dout, dlse, grid, text_len, text_first=False, text_lens=None,
                         iterations=2, clamp=0.1, recompute_first_frame=True, scale=None, layout="bshd", sink_frames=0,
                         window_radius=None, entropy_grad=False, deterministic=False):
    return _attention_backward_fake(q, k, v, out, lse, dout, dlse, grid)


def _joint_train_setup(ctx, inputs, output):
    (q, k, v, grid, text_len, text_first, text_lens, iterations, clamp, recompute, scale, layout, sink_frames,
     window_radius, entropy_grad, deterministic) = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, text_lens)
    ctx.args = (list(grid), int(text_len), bool(text_first), int(iterations), float(clamp), bool(recompute), scale,
                layout, int(sink_frames), window_radius, bool(entropy_grad), bool(deterministic))


def _joint_train_backward(ctx, dout, dlse):
    q, k, v, out, lse, text_lens = ctx.saved_tensors
    grid, text_len, text_first, iterations, clamp, recompute, scale, layout, sink_frames, window_radius, \
        entropy_grad, deterministic = ctx.args
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = torch.ops.vmonarch.joint_attention_backward(
        q, k, v, out, lse, dout, dlse, grid, text_len, text_first, text_lens, iterations, clamp, recompute, scale,
        layout, sink_frames, window_radius, entropy_grad, deterministic)
    return (dq, dk, dv) + (None,) * 13


torch.library.register_autograd("vmonarch::joint_attention_train", _joint_train_backward,
                                setup_context=_joint_train_setup)


def prefix_lengths(text_mask):
    """Valid lengths [B] of a key-padding prefix mask (the forward operator checked that it is a prefix)."""
    return None if text_mask is None else text_mask.sum(dim=1).to(torch.int64)


def _joint_setup(ctx, inputs, output):
    (q, k, v, grid, text_len, text_first, text_lens, text_mask, iterations, clamp, recompute, scale, layout,
     _return_lse, sink_frames, window_radius) = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, text_lens if text_lens is not None else prefix_lengths(text_mask))
    ctx.args = (list(grid), int(text_len), bool(text_first), int(iterations), float(clamp), bool(recompute), scale,
                layout, int(sink_frames), window_radius)


def _joint_backward(ctx, dout, dlse):
    q, k, v, out, lse, text_lens = ctx.saved_tensors
    grid, text_len, text_first, iterations, clamp, recompute, scale, layout, sink_frames, window_radius = ctx.args
    if lse.numel() == 0:  # the forward was asked for no LSE: the backward needs it, so rerun
        out, lse = torch.ops.vmonarch.joint_attention_train(q, k, v, grid, text_len, text_first, text_lens, iterations,
                                                            clamp, recompute, scale, layout, sink_frames,
                                                            window_radius)
        dlse = None
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = torch.ops.vmonarch.joint_attention_backward(
        q, k, v, out, lse, dout, dlse, grid, text_len, text_first, text_lens, iterations, clamp, recompute, scale,
        layout, sink_frames, window_radius, False, False)
    return (dq, dk, dv) + (None,) * 13


torch.library.register_autograd("vmonarch::joint_attention", _joint_backward, setup_context=_joint_setup)
