"""vmonarch.wan on a tiny WanTransformer3DModel with random weights, on the CPU at float64."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

import vmonarch.wan  # noqa: E402
from conftest import rel_l2  # noqa: E402
from wan_helpers import reference_attention_fn, run, run_with_reference, tiny_inputs, tiny_wan  # noqa: E402


@pytest.mark.parametrize("i2v", [False, True])
def test_one_frame_matches_stock(i2v):
    """At T = 1 VMonarch is exact dense attention: the model's output equals the stock processor's."""
    model = tiny_wan(i2v=i2v)
    inputs = tiny_inputs(frames=1, i2v=i2v)
    stock = run(model, inputs)
    vmonarch.wan.enable(model)
    ours = run(model, inputs)
    vmonarch.wan.disable(model)
    assert rel_l2(ours, stock) < 1e-6
    assert torch.equal(run(model, inputs), stock)   # disable() restores the stock processors


@pytest.mark.parametrize("i2v", [False, True])
@pytest.mark.parametrize("frames,height,width", [(3, 6, 10), (4, 2, 14), (5, 4, 4)])
def test_frames_match_reference_swapped_in(i2v, frames, height, width, ref):
    model = tiny_wan(i2v=i2v)
    inputs = tiny_inputs(frames=frames, height=height, width=width, i2v=i2v)
    stock = run(model, inputs)
    vmonarch.wan.enable(model, iterations=2)
    ours = run(model, inputs)
    want, calls = run_with_reference(model, inputs, ref)
    assert calls == [(frames, height // 2, width // 2)] * len(model.blocks)
    assert rel_l2(ours, want) < 1e-6
    # VMonarch is not dense attention when T > 1, and its departure from dense is the reference's
    assert rel_l2(ours, stock) > 1e-6
    assert rel_l2(ours - stock, want - stock) < 1e-3


def test_options_reach_the_operator(ref):
    model = tiny_wan()
    inputs = tiny_inputs(frames=3)
    opts = dict(iterations=3, clamp=0.3, recompute_first_frame=False)
    vmonarch.wan.enable(model, **opts)
    ours = run(model, inputs)
    vmonarch.wan.enable(model, attention_fn=reference_attention_fn(ref), **opts)
    want = run(model, inputs)
    vmonarch.wan.disable(model)
    assert rel_l2(ours, want) < 1e-6


def test_grid_comes_from_latent_and_patch_size():
    model = tiny_wan()
    schedule = vmonarch.wan.enable(model)
    run(model, tiny_inputs(frames=3, height=8, width=6))
    assert schedule.grid == (3, 4, 3)
    vmonarch.wan.disable(model)


def test_only_self_attention_is_replaced():
    model = tiny_wan(i2v=True)
    before = [b.attn2.processor for b in model.blocks]
    vmonarch.wan.enable(model)
    assert all(isinstance(b.attn1.processor, vmonarch.wan.VMonarchWanAttnProcessor) for b in model.blocks)
    assert [b.attn2.processor for b in model.blocks] == before
    vmonarch.wan.disable(model)
    assert not any(isinstance(b.attn1.processor, vmonarch.wan.VMonarchWanAttnProcessor) for b in model.blocks)


def test_dense_layers():
    model = tiny_wan(layers=3)
    inputs = tiny_inputs(frames=3)
    stock = run(model, inputs)
    vmonarch.wan.enable(model, dense_layers=[0, 1, 2])
    assert torch.equal(run(model, inputs), stock)
    vmonarch.wan.enable(model, dense_layers=[0, 2])
    some = run(model, inputs)
    vmonarch.wan.enable(model)
    all_vm = run(model, inputs)
    vmonarch.wan.disable(model)
    assert rel_l2(some, stock) > 1e-6 and rel_l2(some, all_vm) > 1e-6


def test_dense_steps_follow_the_timesteps():
    model = tiny_wan()
    schedule = vmonarch.wan.enable(model, dense_steps=2)
    stock_of = {}
    vmonarch.wan.disable(model)
    for t in (999.0, 900.0, 800.0):
        stock_of[t] = run(model, tiny_inputs(frames=3, timestep=t))
    schedule = vmonarch.wan.enable(model, dense_steps=2)
    # generation 1: steps 0, 0 (guidance pass at the same timestep), 1, 2
    assert torch.equal(run(model, tiny_inputs(frames=3, timestep=999.0)), stock_of[999.0])
    assert torch.equal(run(model, tiny_inputs(frames=3, timestep=999.0)), stock_of[999.0])
    assert schedule.step == 0
    assert torch.equal(run(model, tiny_inputs(frames=3, timestep=900.0)), stock_of[900.0])
    assert schedule.step == 1
    assert rel_l2(run(model, tiny_inputs(frames=3, timestep=800.0)), stock_of[800.0]) > 1e-6
    assert schedule.step == 2
    # a larger timestep starts a new generation: dense again
    assert torch.equal(run(model, tiny_inputs(frames=3, timestep=999.0)), stock_of[999.0])
    assert schedule.step == 0
    schedule.set_step(5)
    assert not torch.equal(run(model, tiny_inputs(frames=3, timestep=999.0)), stock_of[999.0])
    vmonarch.wan.disable(model)


def test_fused_projections():
    model = tiny_wan()
    inputs = tiny_inputs(frames=3)
    vmonarch.wan.enable(model)
    unfused = run(model, inputs)
    model.fuse_qkv_projections()
    assert model.blocks[0].attn1.fused_projections
    fused = run(model, inputs)
    vmonarch.wan.disable(model)
    assert rel_l2(fused, unfused) < 1e-9


def test_float32_and_batch_two():
    model = tiny_wan(dtype=torch.float32)
    inputs = tiny_inputs(frames=1, dtype=torch.float32, batch=2)
    stock = run(model, inputs)
    vmonarch.wan.enable(model)
    ours = run(model, inputs)
    vmonarch.wan.disable(model)
    assert rel_l2(ours, stock) < 1e-4


def test_enable_on_a_pipeline_like_object():
    class Pipe:
        def __init__(self):
            self.transformer = tiny_wan(seed=1)
            self.transformer_2 = tiny_wan(seed=2)

    pipe = Pipe()
    schedule = vmonarch.wan.enable(pipe, dense_steps=1)
    for t in (pipe.transformer, pipe.transformer_2):
        assert all(b.attn1.processor.schedule is schedule for b in t.blocks)
    vmonarch.wan.disable(pipe)
    assert not hasattr(pipe.transformer, "_vmonarch_state")
    with pytest.raises(TypeError):
        vmonarch.wan.enable(object())


def test_blocks_compile_fullgraph():
    """The processor traces with torch.compile(fullgraph=True) at block level (compile_repeated_blocks)."""
    torch._dynamo.reset()
    model = tiny_wan(dtype=torch.float32)
    inputs = tiny_inputs(frames=3, dtype=torch.float32)
    vmonarch.wan.enable(model)
    want = run(model, inputs)
    model.compile_repeated_blocks(fullgraph=True, backend="aot_eager")
    got = run(model, inputs)
    vmonarch.wan.disable(model)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
