"""vmonarch.wan's training options (VMonarchSchedule entropy_grad / save_state) reach vmonarch.attention: on a
tiny WanTransformer3DModel on the CPU, entropy_grad=True gives the exact gradient of the float64 reference
(detach_entropy=False), which differs from the default paper gradient; save_state=True keeps one saved state
per block and leaves the gradients as they are."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

import vmonarch.wan  # noqa: E402
from conftest import rel_l2  # noqa: E402
from wan_helpers import tiny_inputs, tiny_wan  # noqa: E402


def reference_fn(ref):
    """The fp64 reference with the processor's attention_fn signature; the schedule passes entropy_grad=True
    only when it is set."""

    def fn(q, k, v, grid, iterations, clamp, recompute_first_frame, entropy_grad=False):
        qb, kb, vb = (x.transpose(1, 2) for x in (q, k, v))
        out = ref.vmonarch_reference(qb, kb, vb, frames=grid[0], t=iterations, clamp=clamp,
                                     recompute_first_frame=recompute_first_frame, detach_entropy=not entropy_grad)
        return out.transpose(1, 2)

    return fn


def parameter_grads(model, inputs, weight, **options):
    vmonarch.wan.enable(model, iterations=2, **options)
    try:
        model.zero_grad(set_to_none=True)
        out = model(**inputs, return_dict=False)[0]
        (out * weight).sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    finally:
        vmonarch.wan.disable(model)


def attention_grads(grads):
    return [n for n in grads if ".attn1.to_q." in n or ".attn1.to_k." in n]


@pytest.fixture
def problem():
    model = tiny_wan(layers=2)
    inputs = tiny_inputs(frames=3, height=6, width=10)
    with torch.no_grad():
        weight = torch.randn_like(model(**inputs, return_dict=False)[0])
    return model, inputs, weight


def test_entropy_grad_gives_the_exact_gradient(problem, ref):
    model, inputs, weight = problem
    ours = parameter_grads(model, inputs, weight, entropy_grad=True)
    want = parameter_grads(model, inputs, weight, entropy_grad=True, attention_fn=reference_fn(ref))
    paper = parameter_grads(model, inputs, weight)
    names = attention_grads(ours)
    assert names and ours.keys() == want.keys()
    for name in ours:
        assert rel_l2(ours[name], want[name]) < 1e-8, name
    # The option changes the attention parameters' gradients (else the test could not tell it was passed).
    assert max(rel_l2(paper[n], ours[n]) for n in names) > 1e-6


def test_save_state_keeps_one_state_per_block_and_the_same_gradients(problem):
    model, inputs, weight = problem
    lean = parameter_grads(model, inputs, weight)
    saved = parameter_grads(model, inputs, weight, save_state=True)
    for name in lean:
        assert rel_l2(saved[name], lean[name]) < 1e-12, name
    for options, states in (({}, 0), ({"save_state": True}, 2)):
        kept = []

        def pack(t):
            if t.dtype == torch.uint8 and t.numel() > 0:
                kept.append(t.numel())
            return t

        vmonarch.wan.enable(model, iterations=2, **options)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(**inputs, return_dict=False)
        vmonarch.wan.disable(model)
        assert len(kept) == states, options


@pytest.mark.parametrize("name", ["entropy_grad", "save_state"])
def test_options_must_be_bools(name):
    with pytest.raises(TypeError, match=f"argument '{name}' is"):
        vmonarch.wan.VMonarchSchedule(**{name: 1})
