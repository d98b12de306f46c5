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
    from ._ops import _check_grid_entries, _fake_outputs

    _check_grid_entries("vmonarch.attention", grid)
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


# --- autograd of both forwards of a family: the training op (always with its LSE, and a saved state) and the
# plain inference op (paper gradient; without its LSE output the backward reruns the forward first) ------------
def _state(saved):
    """The saved-state argument of a backward op: None for lean mode (no state, or an empty one)."""
    return saved if saved is not None and saved.numel() > 0 else None


def _outputs(ctx, output):
    """(out, lse, saved) of a forward op's output (saved None for the plain ops, which return no state)."""
    if len(output) == 2:
        return (*output, None)
    ctx.mark_non_differentiable(output[2])
    # Absent output gradients arrive as None, not as zeros: autograd would otherwise allocate and fill a zero
    # "gradient" of the saved state (its whole size) and of the LSE for every backward.
    ctx.set_materialize_grads(False)
    return tuple(output)


def _input_grads(ctx, grads):
    """The gradients by input position: grads maps positions to gradients, every other input gets None."""
    return tuple(grads.get(i) for i in range(ctx.input_count))


# --- attention_train (inputs q .. layout, entropy_grad, deterministic, save_state) and attention (q .. layout,
# return_lse) ----------------------------------------------------------------------------------------------
def _attention_save(ctx, inputs, output, entropy_grad, deterministic):
    q, k, v, grid, iterations, clamp, recompute, scale, layout = inputs[:9]
    out, lse, saved = _outputs(ctx, output)
    ctx.save_for_backward(q, k, v, out, lse, saved)
    ctx.args = (list(grid), int(iterations), float(clamp), bool(recompute), scale, layout, bool(entropy_grad),
                bool(deterministic))
    ctx.input_count = len(inputs)


def _attention_grads(ctx, dout, dlse, *_dsaved):
    q, k, v, out, lse, saved = ctx.saved_tensors
    grid, iterations, clamp, recompute, scale, layout, entropy_grad, deterministic = ctx.args
    if lse.numel() == 0:
        # The plain op was asked for no LSE, which the backward needs: rerun it once as the training forward
        # with its state kept, so the backward does not rerun it a second time (lean mode would).
        out, lse, saved = torch.ops.vmonarch.attention_train(q, k, v, grid, iterations, clamp, recompute, scale,
                                                             layout, entropy_grad, deterministic, True)
        dlse = None
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = torch.ops.vmonarch.attention_backward(
        q, k, v, out, lse, dout, dlse, grid, iterations, clamp, recompute, scale, layout, entropy_grad,
        deterministic, _state(saved))
    return _input_grads(ctx, {0: dq, 1: dk, 2: dv})


torch.library.register_autograd("vmonarch::attention_train", _attention_grads,
                                setup_context=lambda ctx, inputs, output: _attention_save(ctx, inputs, output,
                                                                                          *inputs[9:11]))
torch.library.register_autograd("vmonarch::attention", _attention_grads,
                                setup_context=lambda ctx, inputs, output: _attention_save(ctx, inputs, output,
                                                                                          False, False))


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


# attention_exact_train's inputs: q .. layout, sink_frames, window_radius, text_k, text_v, text_lens, entropy_grad,
# deterministic, save_state; attention_exact_groups's: q .. layout, return_lse, sink_frames .. text_lens.
def _exact_save(ctx, inputs, output, exact_at, entropy_grad, deterministic):
    """exact_at: the position of sink_frames among the inputs (text_k, text_v, text_lens follow window_radius)."""
    q, k, v, grid, iterations, clamp, recompute, scale, layout = inputs[:9]
    sink_frames, window_radius, text_k, text_v, text_lens = inputs[exact_at:exact_at + 5]
    out, lse, saved = _outputs(ctx, output)
    ctx.save_for_backward(q, k, v, out, lse, saved, text_k, text_v, text_lens)
    ctx.args = (list(grid), int(iterations), float(clamp), bool(recompute), scale, layout, int(sink_frames),
                window_radius, bool(entropy_grad), bool(deterministic))
    ctx.input_count, ctx.text_k_at = len(inputs), exact_at + 2


def _exact_grads(ctx, dout, dlse, *_dsaved):
    q, k, v, out, lse, saved, text_k, text_v, text_lens = ctx.saved_tensors
    grid, iterations, clamp, recompute, scale, layout, sink_frames, window_radius, entropy_grad, deterministic = ctx.args
    if lse.numel() == 0:
        # As for the plain attention op: rerun the forward once, as the training forward with its state kept, so
        # that the backward does not rerun it a second time.
        out, lse, saved = torch.ops.vmonarch.attention_exact_train(
            q, k, v, grid, iterations, clamp, recompute, scale, layout, sink_frames, window_radius, text_k, text_v,
            text_lens, entropy_grad, deterministic, True)
        dlse = None
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv, dtk, dtv = torch.ops.vmonarch.attention_exact_backward(
        q, k, v, out, lse, dout, dlse, grid, iterations, clamp, recompute, scale, layout, sink_frames, window_radius,
        text_k, text_v, text_lens, entropy_grad, deterministic, _state(saved))
    grads = {0: dq, 1: dk, 2: dv}
    if text_k is not None:  # the text keys' gradients (none without text keys)
        grads.update({ctx.text_k_at: dtk, ctx.text_k_at + 1: dtv})
    return _input_grads(ctx, grads)


torch.library.register_autograd("vmonarch::attention_exact_train", _exact_grads,
                                setup_context=lambda ctx, inputs, output: _exact_save(ctx, inputs, output, 9,
                                                                                      *inputs[14:16]))
torch.library.register_autograd("vmonarch::attention_exact_groups", _exact_grads,
                                setup_context=lambda ctx, inputs, output: _exact_save(ctx, inputs, output, 10,
                                                                                      False, False))


# --- joint text+video sequences (spec §3c): joint_attention_train and the plain joint_attention op ---------
def prefix_lengths(text_mask):
    """Valid lengths [B] of a key-padding prefix mask (the forward operator checked that it is a prefix)."""
    return None if text_mask is None else text_mask.sum(dim=1).to(torch.int64)


@torch.library.register_fake("vmonarch::joint_attention_train")
def _joint_train_fake(q, k, v, grid, text_len, text_first=False, text_lens=None, text_mask=None, iterations=2,
                      clamp=0.1, recompute_first_frame=True, scale=None, layout="bshd", sink_frames=0,
                      window_radius=None, entropy_grad=False, deterministic=False):
    from ._ops import _joint_attention_fake

    return _joint_attention_fake(q, k, v, grid, text_len, text_first, text_lens, text_mask, iterations, clamp,
                                 recompute_first_frame, scale, layout, True, sink_frames, window_radius)


@torch.library.register_fake("vmonarch::joint_attention_backward")
def _joint_backward_fake(q, k, v, out, lse, dout, dlse, grid, text_len, text_first=False, text_lens=None,
                         iterations=2, clamp=0.1, recompute_first_frame=True, scale=None, layout="bshd", sink_frames=0,
                         window_radius=None, entropy_grad=False, deterministic=False):
    return _attention_backward_fake(q, k, v, out, lse, dout, dlse, grid)


# joint_attention_train's inputs: q .. text_mask, iterations .. layout, sink_frames, window_radius, entropy_grad,
# deterministic; joint_attention's: q .. layout, return_lse, sink_frames, window_radius. Lean mode only.
def _joint_save(ctx, inputs, output, sink_frames, window_radius, entropy_grad, deterministic):
    q, k, v, grid, text_len, text_first, text_lens, text_mask, iterations, clamp, recompute, scale, layout = inputs[:13]
    out, lse, _ = _outputs(ctx, output)
    ctx.save_for_backward(q, k, v, out, lse, text_lens if text_lens is not None else prefix_lengths(text_mask))
    ctx.args = (list(grid), int(text_len), bool(text_first), int(iterations), float(clamp), bool(recompute), scale,
                layout, int(sink_frames), window_radius, bool(entropy_grad), bool(deterministic))
    ctx.input_count = len(inputs)


def _joint_grads(ctx, dout, dlse):
    q, k, v, out, lse, text_lens = ctx.saved_tensors
    grid, text_len, text_first, iterations, clamp, recompute, scale, layout, sink_frames, window_radius, \
        entropy_grad, deterministic = ctx.args
    if lse.numel() == 0:  # the plain op was asked for no LSE: the backward needs it, so rerun
        out, lse = torch.ops.vmonarch.joint_attention_train(q, k, v, grid, text_len, text_first, text_lens, None,
                                                            iterations, clamp, recompute, scale, layout, sink_frames,
                                                            window_radius, entropy_grad, deterministic)
        dlse = None
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = torch.ops.vmonarch.joint_attention_backward(
        q, k, v, out, lse, dout, dlse, grid, text_len, text_first, text_lens, iterations, clamp, recompute, scale,
        layout, sink_frames, window_radius, entropy_grad, deterministic)
    return _input_grads(ctx, {0: dq, 1: dk, 2: dv})


torch.library.register_autograd("vmonarch::joint_attention_train", _joint_grads,
                                setup_context=lambda ctx, inputs, output: _joint_save(ctx, inputs, output,
                                                                                      *inputs[13:17]))
torch.library.register_autograd("vmonarch::joint_attention", _joint_grads,
                                setup_context=lambda ctx, inputs, output: _joint_save(ctx, inputs, output,
                                                                                      *inputs[14:16], False, False))
