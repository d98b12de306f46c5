"""The joint text+video processors are trainable on the CPU: one backward step through a tiny random-weight
HunyuanVideo / HunyuanVideo 1.5 / CogVideoX / Mochi model with VMonarch attention gives the weight gradients of
the same model with the executable spec (joint_reference, paper gradient) swapped in (spec §3c, §7)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

import joint_helpers as jh  # noqa: E402
from conftest import rel_l2  # noqa: E402
from test_joint_processors_cpu import CASES, NAMES  # noqa: E402


def weight_grads(model, inputs):
    model.zero_grad(set_to_none=True)
    out = model(**inputs, return_dict=False)[0]
    target = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(0))
    ((out - target) ** 2).mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sink_frames", [0, 1])
def test_one_backward_step_matches_reference(name, sink_frames, ref):
    c = CASES[name]
    model, inputs = c.model(), c.inputs(frames=3)
    c.module.enable(model, sink_frames=sink_frames)
    ours = weight_grads(model, inputs)
    c.module.enable(model, attention_fn=jh.reference_joint_fn(ref, detach_entropy=True), sink_frames=sink_frames)
    want = weight_grads(model, inputs)
    c.module.disable(model)
    assert ours.keys() == want.keys() and len(ours) > 0
    attn = [n for n in ours if any(s in n for s in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj"))]
    assert attn, "no attention projection received a gradient"
    scale = float(torch.cat([g.flatten() for g in want.values()]).norm())
    for n in ours:  # per parameter; some are zero up to round-off (a key bias moves no softmax)
        assert torch.isfinite(ours[n]).all(), n
        assert float((ours[n] - want[n]).norm()) <= 1e-8 * float(want[n].norm()) + 1e-12 * scale, n
    # an optimizer step runs and changes the output
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    c.module.enable(model, sink_frames=sink_frames)
    before = model(**inputs, return_dict=False)[0].detach()
    weight_grads(model, inputs)
    opt.step()
    with torch.no_grad():
        after = model(**inputs, return_dict=False)[0]
    c.module.disable(model)
    assert rel_l2(after, before) > 1e-6
