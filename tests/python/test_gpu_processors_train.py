"""The processors are trainable on a CUDA device (skipped without one or without CUDA kernels): one backward step
through a tiny random-weight bfloat16 Wan (vmonarch.wan: the operator's CUDA backward, d 64 and 128) and
HunyuanVideo / HunyuanVideo 1.5 / CogVideoX / Mochi model (the joint operator's CUDA backward, spec §3c) with
VMonarch attention, against the same bf16 model with the executable spec in float64 swapped in as its attention
(vmonarch_reference / joint_reference, paper gradient, spec §7), so that the two differ only by the attention's
bf16 rounding in the forward and the backward.

Bounds: the whole weight gradient's relative L2 <= 2e-2 (the issue's bf16 bound for dq, dk, dv, here after the
model's bf16 layers), each parameter's within 0.1 of its own norm plus 1e-3 of the whole gradient's (a key bias
moves no softmax: its gradient is round-off in both); the attention projections get a gradient.
Run on the GPU machine: scripts/gpu_python_suite.sh --gpu-files.
"""
from __future__ import annotations

import pytest
import torch

import vmonarch
from conftest import rel_l2

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

try:
    import diffusers  # noqa: F401
    import joint_helpers as jh
    import vmonarch.wan
    import wan_helpers as wh
    from test_gpu_joint import CASES, _module, _setup
except ImportError:
    jh = None

TOTAL_BOUND = 2e-2
PARAM_BOUND = 1e-1
ATTENTION_WEIGHTS = ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")


def _needs_kernels():
    if jh is None:
        pytest.skip("the processors need diffusers")
    if not vmonarch.cuda_built():
        pytest.skip("this vmonarch build has no CUDA kernels")


def loss_of(model, inputs):
    out = model(**inputs, return_dict=False)[0]
    gen = torch.Generator(device=out.device).manual_seed(0)
    target = torch.randn(out.shape, dtype=out.dtype, device=out.device, generator=gen)
    return ((out.float() - target.float()) ** 2).mean()


def weight_grads(model, inputs):
    model.zero_grad(set_to_none=True)
    loss_of(model, inputs).backward()
    return {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}


def check_grads(ours, want):
    """The module docstring's bounds on two {parameter name: gradient} maps."""
    assert ours.keys() == want.keys() and len(ours) > 0
    assert [n for n in ours if any(s in n for s in ATTENTION_WEIGHTS)], "no attention projection got a gradient"
    flat_ours = torch.cat([ours[n].flatten() for n in ours])
    flat_want = torch.cat([want[n].flatten() for n in ours])
    assert torch.isfinite(flat_ours).all()
    assert rel_l2(flat_ours, flat_want) <= TOTAL_BOUND
    scale = float(flat_want.norm())
    for n in ours:
        err = float((ours[n] - want[n]).norm())
        assert err <= PARAM_BOUND * float(want[n].norm()) + 1e-3 * scale, (n, err, float(want[n].norm()))


@pytest.mark.parametrize("name,head_dim", CASES)
@pytest.mark.parametrize("sink_frames", [0, 1])
def test_joint_backward_step_matches_reference_bf16(name, head_dim, sink_frames, ref):
    _needs_kernels()
    model, inputs = _setup(name, head_dim, frames=5)
    module = _module(name)
    module.enable(model, sink_frames=sink_frames)
    ours = weight_grads(model, inputs)
    module.enable(model, attention_fn=jh.reference_joint_fn(ref, detach_entropy=True), sink_frames=sink_frames)
    want = weight_grads(model, inputs)
    module.disable(model)
    check_grads(ours, want)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("i2v", [False, True])
def test_wan_backward_step_matches_reference_bf16(head_dim, i2v, ref):
    _needs_kernels()
    model = wh.tiny_wan(i2v=i2v, head_dim=head_dim, dtype=torch.bfloat16, device="cuda")
    inputs = wh.tiny_inputs(frames=5, height=14, width=18, i2v=i2v, dtype=torch.bfloat16, device="cuda")
    vmonarch.wan.enable(model)
    ours = weight_grads(model, inputs)
    vmonarch.wan.enable(model, attention_fn=wh.reference_attention_fn(ref, detach_entropy=True))
    want = weight_grads(model, inputs)
    vmonarch.wan.disable(model)
    check_grads(ours, want)

