"""vmonarch.wan is trainable on the CPU: parameter gradients of a tiny WanTransformer3DModel with the
VMonarch processor equal those with the float64 reference (paper gradient: detach_entropy=True) swapped in."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

import vmonarch.wan  # noqa: E402
from conftest import rel_l2  # noqa: E402
from wan_helpers import reference_attention_fn, tiny_inputs, tiny_wan  # noqa: E402


def parameter_grads(model, inputs, weight):
    model.zero_grad(set_to_none=True)
    out = model(**inputs, return_dict=False)[0]
    (out * weight).sum().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("frames,height,width", [(3, 6, 10), (4, 2, 14)])
def test_wan_parameter_grads_match_reference(frames, height, width, ref):
    model = tiny_wan()
    inputs = tiny_inputs(frames=frames, height=height, width=width)
    with torch.no_grad():
        weight = torch.randn_like(model(**inputs, return_dict=False)[0])
    vmonarch.wan.enable(model, iterations=2)
    ours = parameter_grads(model, inputs, weight)
    vmonarch.wan.disable(model)
    vmonarch.wan.enable(model, iterations=2, attention_fn=reference_attention_fn(ref, detach_entropy=True))
    want = parameter_grads(model, inputs, weight)
    vmonarch.wan.disable(model)
    assert ours.keys() == want.keys() and len(ours) > 10
    attention_params = [n for n in ours if ".attn1.to_q." in n or ".attn1.to_k." in n]
    assert attention_params
    for name in ours:
        assert rel_l2(ours[name], want[name]) < 1e-8, name
