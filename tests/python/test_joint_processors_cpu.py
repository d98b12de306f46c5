"""The joint text+video processors (vmonarch.hunyuan_video, .hunyuan_video15, .cogvideox, .mochi) on tiny
diffusers models with random weights, on the CPU at float64.

"reference" runs the processors with the executable spec (joint_reference) as attention_fn; "vmonarch"
runs them with the library's vmonarch.joint_attention (skipped while the package has no joint op).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

pytest.importorskip("diffusers")

import vmonarch  # noqa: E402
import vmonarch.cogvideox  # noqa: E402
import vmonarch.hunyuan_video  # noqa: E402
import vmonarch.hunyuan_video15  # noqa: E402
import vmonarch.mochi  # noqa: E402
import vmonarch.wan  # noqa: E402
from conftest import rel_l2  # noqa: E402
import joint_helpers as jh  # noqa: E402

HAS_JOINT_OP = hasattr(vmonarch, "joint_attention")
needs_joint_op = pytest.mark.skipif(not HAS_JOINT_OP, reason="vmonarch.joint_attention is not in this build yet")


@dataclass
class Case:
    name: str
    module: object
    model: Callable
    inputs: Callable                 # inputs(frames, **kw)
    height: int                      # latent height and width in the default inputs
    width: int
    patch: int                       # spatial patch size
    text_first: bool
    text_len: Callable               # text_len(inputs): tokens after (or before) the video in the joint sequence
    text_lens: Callable              # text_lens(inputs): valid prefix per sample, None when all valid
    blocks: Callable                 # blocks(model): the attention modules enable() replaces


def _hv_lens(x):
    return x["encoder_attention_mask"].sum(1).tolist()


def _hv15_lens(x):
    image = 0 if bool((x["image_embeds"] == 0).all()) else x["image_embeds"].shape[1]
    return (image + x["encoder_attention_mask_2"].sum(1) + x["encoder_attention_mask"].sum(1)).tolist()


def _hv15_len(x):
    return x["image_embeds"].shape[1] + x["encoder_hidden_states_2"].shape[1] + x["encoder_hidden_states"].shape[1]


CASES = {
    "hunyuan_video": Case("hunyuan_video", vmonarch.hunyuan_video, jh.tiny_hunyuan, jh.hunyuan_inputs, 6, 10, 2, False,
                          lambda x: x["encoder_hidden_states"].shape[1], _hv_lens,
                          lambda m: [b.attn for b in m.transformer_blocks] +
                                    [b.attn for b in m.single_transformer_blocks]),
    "hunyuan_video15": Case("hunyuan_video15", vmonarch.hunyuan_video15, jh.tiny_hunyuan15, jh.hunyuan15_inputs, 3, 5,
                            1, False, _hv15_len, _hv15_lens, lambda m: [b.attn for b in m.transformer_blocks]),
    "cogvideox": Case("cogvideox", vmonarch.cogvideox, jh.tiny_cogvideox, jh.cogvideox_inputs, 6, 10, 2, True,
                      lambda x: x["encoder_hidden_states"].shape[1], lambda x: None,
                      lambda m: [b.attn1 for b in m.transformer_blocks]),
    "mochi": Case("mochi", vmonarch.mochi, jh.tiny_mochi, jh.mochi_inputs, 6, 10, 2, False,
                  lambda x: x["encoder_hidden_states"].shape[1], lambda x: x["encoder_attention_mask"].sum(1).tolist(),
                  lambda m: [b.attn1 for b in m.transformer_blocks]),
}
NAMES = list(CASES)


@pytest.fixture(autouse=True)
def _quiet_diffusers():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*autocast.*")       # Mochi's float32 rotary under CPU autocast
        yield


def _attention_fn(backend, ref, calls=None):
    return jh.reference_joint_fn(ref, calls) if backend == "reference" else None


BACKENDS = ["reference", pytest.param("vmonarch", marks=needs_joint_op)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_one_frame_matches_stock(name, backend, ref):
    """At T = 1 VMonarch is dense attention (spec §3): the model's output equals the stock processors'."""
    c = CASES[name]
    model, inputs = c.model(), c.inputs(frames=1)
    stock = jh.run(model, inputs)
    c.module.enable(model, attention_fn=_attention_fn(backend, ref))
    ours = jh.run(model, inputs)
    c.module.disable(model)
    assert rel_l2(ours, stock) < 1e-9
    assert torch.equal(jh.run(model, inputs), stock)     # disable() restores the stock processors


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_sink_frames_covering_every_frame_equal_stock(name, backend, ref):
    """With S = T sink frames every video key is exact (spec §3b): dense attention at several frames, so the
    sequence order, rotary embeddings, masks and projections must all be the stock processor's."""
    c = CASES[name]
    model, inputs = c.model(), c.inputs(frames=3)
    stock = jh.run(model, inputs)
    c.module.enable(model, attention_fn=_attention_fn(backend, ref), sink_frames=3)
    dense = jh.run(model, inputs)
    c.module.enable(model, attention_fn=_attention_fn(backend, ref))
    monarch = jh.run(model, inputs)
    c.module.disable(model)
    assert rel_l2(dense, stock) < 1e-9
    assert rel_l2(monarch, stock) > 1e-6            # with S = 0 and T > 1 VMonarch is not dense attention


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("frames", [2, 3, 5])
def test_calls_carry_grid_and_text_layout(name, frames, ref):
    c = CASES[name]
    model, inputs = c.model(), c.inputs(frames=frames)
    calls = []
    c.module.enable(model, attention_fn=jh.reference_joint_fn(ref, calls))
    jh.run(model, inputs)
    c.module.disable(model)
    grid = (frames, c.height // c.patch, c.width // c.patch)
    assert calls == [(grid, c.text_len(inputs), c.text_first, c.text_lens(inputs))] * len(c.blocks(model))


@needs_joint_op
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("frames,height,width", [(3, 6, 10), (4, 2, 14), (5, 4, 6)])
def test_frames_match_reference_swapped_in(name, frames, height, width, ref):
    """The library's joint op in the model gives what the executable spec gives in the same model."""
    c = CASES[name]
    if c.patch == 1:
        height, width = height // 2, width // 2
    model, inputs = c.model(), c.inputs(frames=frames, height=height, width=width)
    stock = jh.run(model, inputs)
    c.module.enable(model)
    ours = jh.run(model, inputs)
    c.module.enable(model, attention_fn=jh.reference_joint_fn(ref))
    want = jh.run(model, inputs)
    c.module.disable(model)
    assert rel_l2(ours, want) < 1e-6
    assert rel_l2(ours, stock) > 1e-6
    assert rel_l2(ours - stock, want - stock) < 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_options_reach_the_attention(name, ref):
    c = CASES[name]
    seen = []

    def spy(q, k, v, **kwargs):
        seen.append({k: kwargs[k] for k in ("iterations", "clamp", "recompute_first_frame", "layout")} |
                    {"sink_frames": kwargs.get("sink_frames", 0)})
        return jh.reference_joint_fn(ref)(q, k, v, **kwargs)

    model = c.model()
    c.module.enable(model, attention_fn=spy, iterations=3, clamp=0.3, recompute_first_frame=False, sink_frames=1)
    jh.run(model, c.inputs(frames=3))
    c.module.disable(model)
    layout = "bhsd" if name == "cogvideox" else "bshd"
    assert seen == [dict(iterations=3, clamp=0.3, recompute_first_frame=False, layout=layout, sink_frames=1)] * \
        len(c.blocks(model))


@pytest.mark.parametrize("name", NAMES)
def test_enable_disable_restore_the_stock_processors(name):
    c = CASES[name]
    model = c.model()
    before = [a.processor for a in c.blocks(model)]
    schedule = c.module.enable(model)
    assert all(isinstance(a.processor, vmonarch._joint.JointProcessor) for a in c.blocks(model))
    assert all(a.processor.schedule is schedule for a in c.blocks(model))
    assert [a.processor.layer for a in c.blocks(model)] == list(range(len(before)))
    c.module.enable(model, dense_steps=1)            # enabling again replaces, the fallback stays the stock one
    assert [a.processor.fallback for a in c.blocks(model)] == before
    c.module.disable(model)
    assert [a.processor for a in c.blocks(model)] == before
    assert not hasattr(model, "_vmonarch_joint_state")
    c.module.disable(model)                          # a second disable is a no-op


@pytest.mark.parametrize("name", NAMES)
def test_dense_layers(name, ref):
    c = CASES[name]
    model, inputs = c.model(), c.inputs(frames=3)
    n = len(c.blocks(model))
    stock = jh.run(model, inputs)
    fn = jh.reference_joint_fn(ref)
    c.module.enable(model, attention_fn=fn, dense_layers=range(n))
    assert torch.equal(jh.run(model, inputs), stock)
    calls = []
    c.module.enable(model, attention_fn=jh.reference_joint_fn(ref, calls), dense_layers=[0])
    some = jh.run(model, inputs)
    assert len(calls) == n - 1
    c.module.enable(model, attention_fn=fn)
    every = jh.run(model, inputs)
    c.module.disable(model)
    assert rel_l2(some, stock) > 1e-6 and rel_l2(some, every) > 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_dense_steps_follow_the_timesteps(name, ref):
    c = CASES[name]
    model = c.model()
    stock_of = {t: jh.run(model, c.inputs(frames=3, timestep=t)) for t in (999.0, 900.0, 800.0)}
    schedule = c.module.enable(model, attention_fn=jh.reference_joint_fn(ref), dense_steps=2)
    assert torch.equal(jh.run(model, c.inputs(frames=3, timestep=999.0)), stock_of[999.0])
    assert torch.equal(jh.run(model, c.inputs(frames=3, timestep=999.0)), stock_of[999.0])   # guidance pass
    assert torch.equal(jh.run(model, c.inputs(frames=3, timestep=900.0)), stock_of[900.0])
    assert schedule.step == 1
    assert rel_l2(jh.run(model, c.inputs(frames=3, timestep=800.0)), stock_of[800.0]) > 1e-6
    assert schedule.step == 2
    assert torch.equal(jh.run(model, c.inputs(frames=3, timestep=999.0)), stock_of[999.0])   # a new generation
    assert schedule.step == 0
    c.module.disable(model)


def test_cogvideox_positional_call_reads_grid_and_timestep(ref):
    """CogVideoX's forward takes (hidden_states, encoder_hidden_states, timestep) positionally too."""
    model = jh.tiny_cogvideox()
    x = jh.cogvideox_inputs(frames=3)
    schedule = vmonarch.cogvideox.enable(model, attention_fn=jh.reference_joint_fn(ref))
    with torch.no_grad():
        model(x["hidden_states"], x["encoder_hidden_states"], x["timestep"], image_rotary_emb=x["image_rotary_emb"])
    assert schedule.grid == (3, 3, 5) and schedule._last_timestep == 500.0
    vmonarch.cogvideox.disable(model)


def test_cogvideox_fused_projections(ref):
    model, inputs = jh.tiny_cogvideox(), jh.cogvideox_inputs(frames=3)
    fn = jh.reference_joint_fn(ref)
    vmonarch.cogvideox.enable(model, attention_fn=fn)
    unfused = jh.run(model, inputs)
    vmonarch.cogvideox.disable(model)
    model.fuse_qkv_projections()
    fused_stock = type(model.transformer_blocks[0].attn1.processor)
    vmonarch.cogvideox.enable(model, attention_fn=fn)
    assert model.transformer_blocks[0].attn1.fused_projections
    fused = jh.run(model, inputs)
    vmonarch.cogvideox.disable(model)
    assert fused_stock.__name__ == "FusedCogVideoXAttnProcessor2_0"
    assert type(model.transformer_blocks[0].attn1.processor) is fused_stock
    assert rel_l2(fused, unfused) < 1e-9


def test_cogvideox_without_rotary_embedding(ref):
    model, inputs = jh.tiny_cogvideox(), jh.cogvideox_inputs(frames=1, rotary=False)
    stock = jh.run(model, inputs)
    vmonarch.cogvideox.enable(model, attention_fn=jh.reference_joint_fn(ref))
    ours = jh.run(model, inputs)
    vmonarch.cogvideox.disable(model)
    assert rel_l2(ours, stock) < 1e-9


def test_cogvideox_temporal_patch_grid(ref):
    """CogVideoX 1.5 patches time too: the grid has frames / patch_size_t latent frames."""
    model = jh.tiny_cogvideox(patch_size_t=2)
    calls = []
    vmonarch.cogvideox.enable(model, attention_fn=jh.reference_joint_fn(ref, calls), sink_frames=3)
    inputs = jh.cogvideox_inputs(frames=6, patch_size_t=2)
    ours = jh.run(model, inputs)
    vmonarch.cogvideox.disable(model)
    assert calls[0][0] == (3, 3, 5)
    assert rel_l2(ours, jh.run(model, inputs)) < 1e-9      # S = T: dense, equal to stock


@pytest.mark.parametrize("frames", [1, 3])
def test_hunyuan_token_replace_blocks(frames, ref):
    """HunyuanVideo I2V (image_condition_type="token_replace") has its own block classes with the same
    processor: at one frame, and with S = T at three, the model equals the stock one."""
    model, inputs = jh.tiny_hunyuan(image_condition_type="token_replace"), jh.hunyuan_inputs(frames=frames)
    stock = jh.run(model, inputs)
    calls = []
    vmonarch.hunyuan_video.enable(model, attention_fn=jh.reference_joint_fn(ref, calls), sink_frames=frames)
    ours = jh.run(model, inputs)
    vmonarch.hunyuan_video.disable(model)
    assert len(calls) == 3 and rel_l2(ours, stock) < 1e-9


@pytest.mark.parametrize("image", [True, False])
def test_hunyuan15_image_and_text_to_video(image, ref):
    """I2V (image tokens valid) and T2V (image tokens all masked) orderings of the condition tokens."""
    model, inputs = jh.tiny_hunyuan15(), jh.hunyuan15_inputs(frames=3, image=image)
    stock = jh.run(model, inputs)
    calls = []
    vmonarch.hunyuan_video15.enable(model, attention_fn=jh.reference_joint_fn(ref, calls), sink_frames=3)
    ours = jh.run(model, inputs)
    vmonarch.hunyuan_video15.disable(model)
    assert calls[0][3] == _hv15_lens(inputs)
    assert rel_l2(ours, stock) < 1e-9


@pytest.mark.parametrize("name,lens", [("hunyuan_video", (5, 5)), ("hunyuan_video", (1, 2)), ("mochi", (5, 5)),
                                       ("mochi", (3, 1))])
def test_text_lengths_all_valid_and_short(name, lens, ref):
    c = CASES[name]
    model, inputs = c.model(), c.inputs(frames=1, text_lens=lens)
    stock = jh.run(model, inputs)
    calls = []
    c.module.enable(model, attention_fn=jh.reference_joint_fn(ref, calls))
    ours = jh.run(model, inputs)
    c.module.disable(model)
    assert calls[0][3] == (None if min(lens) == 5 else list(lens))
    assert torch.isfinite(stock).all()
    assert rel_l2(ours, stock) < 1e-9


# --- fallbacks ------------------------------------------------------------------------------------------
def test_mochi_non_prefix_mask_falls_back_with_one_warning(ref):
    """Mochi's stock processor compacts the valid text tokens of any mask; only a prefix mask is a
    key-padding mask the joint op takes. Another mask runs the stock processor, with one warning."""
    model = jh.tiny_mochi()
    mask = torch.tensor([[1, 0, 1, 1, 0], [1, 1, 1, 1, 1]])
    inputs = jh.mochi_inputs(frames=3, mask=mask)
    stock = jh.run(model, inputs)
    calls = []
    vmonarch.mochi.enable(model, attention_fn=jh.reference_joint_fn(ref, calls))
    with pytest.warns(UserWarning, match="not a key-padding prefix") as record:
        ours = jh.run(model, inputs)
        jh.run(model, inputs)
    vmonarch.mochi.disable(model)
    assert sum("vmonarch.mochi" in str(w.message) for w in record) == 1
    assert calls == [] and torch.equal(ours, stock)


def _attn_inputs(B, N, L, dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, N, dim, generator=g, dtype=torch.float64),
            torch.randn(B, L, dim, generator=g, dtype=torch.float64))


def _hunyuan_rotary(grid, head_dim=jh.HEAD_DIM):
    from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoRotaryPosEmbed

    rope = HunyuanVideoRotaryPosEmbed(1, 1, jh._rope_axes(head_dim))
    return tuple(f.double() for f in rope(torch.zeros(1, 1, *grid)))


@pytest.mark.parametrize("block", ["dual", "single"])
def test_hunyuan_masks_that_are_not_key_padding_fall_back(block, ref):
    model = jh.tiny_hunyuan()
    attn = (model.transformer_blocks if block == "dual" else model.single_transformer_blocks)[0].attn
    stock_processor = attn.processor
    grid, L, B = (3, 2, 2), 4, 2
    N = grid[0] * grid[1] * grid[2]
    hidden, text = _attn_inputs(B, N, L, jh.HEADS * jh.HEAD_DIM)
    rotary = _hunyuan_rotary(grid)
    processor = vmonarch.hunyuan_video.VMonarchHunyuanVideoAttnProcessor(   # S = T: dense attention
        vmonarch.hunyuan_video.JointSchedule(attention_fn=jh.reference_joint_fn(ref), sink_frames=grid[0]))
    processor.schedule.grid = grid

    def both(mask):
        want = stock_processor(attn, hidden, text, mask, rotary)
        return processor(attn, hidden, text, mask, rotary), want

    ok = torch.ones(B, 1, 1, N + L, dtype=torch.bool)
    ok[0, ..., N + 2:] = False                                    # a prefix of 2 text tokens
    got, want = both(ok)
    assert all(rel_l2(a, b) < 1e-9 for a, b in zip(got, want))
    hole = ok.clone()
    hole[1, ..., N + 1] = False                                   # a hole in the text
    video = ok.clone()
    video[1, ..., 3] = False                                      # a masked video token
    additive = torch.zeros(B, 1, 1, N + L, dtype=torch.float64)
    square = torch.ones(B, 1, N + L, N + L, dtype=torch.bool)
    for mask, message in ((hole, "not a key-padding prefix"), (video, "masks video"), (additive, "additive"),
                          (square, "shape")):
        processor.schedule._warned.clear()
        with pytest.warns(UserWarning, match=message):
            got, want = both(mask)
        assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_hunyuan15_condition_mask_that_is_not_a_prefix_falls_back(ref):
    model = jh.tiny_hunyuan15()
    attn = model.transformer_blocks[0].attn
    stock_processor = attn.processor
    grid, L, B = (2, 3, 2), 5, 2
    N = grid[0] * grid[1] * grid[2]
    hidden, text = _attn_inputs(B, N, L, jh.HEADS * jh.HEAD_DIM)
    rotary = _hunyuan_rotary(grid)
    processor = vmonarch.hunyuan_video15.VMonarchHunyuanVideo15AttnProcessor(
        vmonarch.hunyuan_video15.JointSchedule(attention_fn=jh.reference_joint_fn(ref), sink_frames=grid[0]))
    processor.schedule.grid = grid
    prefix = jh.text_mask((5, 2), L)
    got = processor(attn, hidden, text, prefix, rotary)             # S = T: dense, and padded rows zero
    want = stock_processor(attn, hidden, text, prefix, rotary)
    assert all(rel_l2(a, b) < 1e-9 for a, b in zip(got, want))
    hole = torch.tensor([[1, 0, 1, 1, 1], [1, 1, 0, 0, 0]])
    with pytest.warns(UserWarning, match="not a key-padding prefix"):
        got = processor(attn, hidden, text, hole, rotary)
    want = stock_processor(attn, hidden, text, hole, rotary)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_cogvideox_attention_mask_falls_back(ref):
    model = jh.tiny_cogvideox()
    attn = model.transformer_blocks[0].attn1
    grid, L, B = (2, 3, 5), 6, 2
    N = grid[0] * grid[1] * grid[2]
    hidden, text = _attn_inputs(B, N, L, jh.HEADS * jh.HEAD_DIM)
    processor = vmonarch.cogvideox.VMonarchCogVideoXAttnProcessor(
        vmonarch.cogvideox.JointSchedule(attention_fn=jh.reference_joint_fn(ref)))
    processor.schedule.grid = grid
    mask = torch.zeros(B, 1, N + L, N + L, dtype=torch.float64)
    mask[..., :2] = -1e4
    with pytest.warns(UserWarning, match="attention mask"):
        got = processor(attn, hidden, text, mask)
    want = attn.processor(attn, hidden, text, mask)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("name", NAMES)
def test_grid_that_does_not_cover_the_tokens_falls_back(name, ref):
    c = CASES[name]
    model, inputs = c.model(), c.inputs(frames=2)
    stock = jh.run(model, inputs)
    schedule = c.module.enable(model, attention_fn=jh.reference_joint_fn(ref))
    handle = model.register_forward_pre_hook(lambda m, a, k: setattr(schedule, "grid", (7, 1, 1)), with_kwargs=True)
    with pytest.warns(UserWarning, match="does not match the latent grid"):
        ours = jh.run(model, inputs)
    handle.remove()
    c.module.disable(model)
    assert torch.equal(ours, stock)


def test_wrong_model_or_pipeline_is_a_type_error():
    with pytest.raises(TypeError, match="HunyuanVideoTransformer3DModel"):
        vmonarch.hunyuan_video.enable(jh.tiny_cogvideox())
    with pytest.raises(TypeError, match="CogVideoXTransformer3DModel"):
        vmonarch.cogvideox.enable(object())
    with pytest.raises(TypeError, match="either a schedule or options"):
        vmonarch.mochi.enable(jh.tiny_mochi(), schedule=vmonarch.mochi.JointSchedule(), dense_steps=1)


def test_enable_on_a_pipeline_like_object(ref):
    class Pipe:
        transformer = jh.tiny_mochi()

    pipe = Pipe()
    schedule = vmonarch.mochi.enable(pipe, sink_frames=2)
    assert all(a.processor.schedule is schedule for a in CASES["mochi"].blocks(pipe.transformer))
    assert schedule.sink_frames == 2
    vmonarch.mochi.disable(pipe)
    assert not hasattr(pipe.transformer, "_vmonarch_joint_state")


# --- sink_frames in the shared schedule and in vmonarch.wan ---------------------------------------------
def test_sink_frames_must_not_be_negative():
    with pytest.raises(ValueError, match="'sink_frames' is -1"):
        vmonarch.wan.VMonarchSchedule(sink_frames=-1)
    with pytest.raises(ValueError, match="'sink_frames' is -2"):
        vmonarch.hunyuan_video.enable(jh.tiny_hunyuan(), sink_frames=-2)


def test_wan_passes_sink_frames_through(ref):
    from wan_helpers import reference_attention_fn, run, tiny_inputs, tiny_wan

    seen = []
    plain = reference_attention_fn(ref)

    def fn(q, k, v, grid, iterations, clamp, recompute_first_frame, sink_frames=0):
        seen.append(sink_frames)
        qb, kb, vb = (x.transpose(1, 2).double() for x in (q, k, v))
        out = ref.vmonarch_reference(qb, kb, vb, frames=grid[0], t=iterations, clamp=clamp,
                                     recompute_first_frame=recompute_first_frame, sink_frames=sink_frames)
        return out.transpose(1, 2).to(q.dtype)

    model, inputs = tiny_wan(), tiny_inputs(frames=3)
    stock = run(model, inputs)
    vmonarch.wan.enable(model, attention_fn=fn, sink_frames=3)        # S = T: dense
    dense = run(model, inputs)
    vmonarch.wan.enable(model, attention_fn=plain)                     # S = 0: sink_frames not passed at all
    monarch = run(model, inputs)
    vmonarch.wan.disable(model)
    assert seen == [3] * len(model.blocks)
    assert rel_l2(dense, stock) < 1e-9 and rel_l2(monarch, stock) > 1e-6


# The attention call of each stock processor, patched to record its q, k, v ([B, heads, S, d]).
_STOCK_ATTENTION = {
    "hunyuan_video": ("diffusers.models.transformers.transformer_hunyuan_video", "dispatch_attention_fn", "bshd"),
    "hunyuan_video15": ("diffusers.models.transformers.transformer_hunyuan_video15", "dispatch_attention_fn", "bshd"),
    "cogvideox": ("torch.nn.functional", "scaled_dot_product_attention", "bhsd"),
    "mochi": ("torch.nn.functional", "scaled_dot_product_attention", "bhsd"),
}


@pytest.mark.parametrize("name", NAMES)
def test_joint_sequence_is_the_stock_processors(name, ref, monkeypatch):
    """The q, k, v our processor hands to the joint op are, token for token, those the stock processor
    attends over (projections, norms, rotary embedding, text before or after the video); where the video
    tokens sit is test_calls_carry_grid_and_text_layout's check. Mochi's stock processor runs one call
    per sample."""
    import importlib

    c = CASES[name]
    model = c.model()
    inputs = c.inputs(frames=3, text_lens=(5, 5)) if name in ("hunyuan_video", "mochi") else c.inputs(frames=3)
    module_name, attr, layout = _STOCK_ATTENTION[name]
    module = importlib.import_module(module_name)
    original = getattr(module, attr)
    stock_qkv = []

    def recording(query, key, value, *args, **kwargs):
        stock_qkv.append(tuple(x if layout == "bhsd" else x.transpose(1, 2) for x in (query, key, value)))
        return original(query, key, value, *args, **kwargs)

    ours_qkv = []

    def spy(q, k, v, **kwargs):
        ours_qkv.append(tuple(x if kwargs["layout"] == "bhsd" else x.transpose(1, 2) for x in (q, k, v)))
        return jh.reference_joint_fn(ref)(q, k, v, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(module, attr, recording)
        jh.run(model, inputs)
        c.module.enable(model, attention_fn=spy)
        jh.run(model, inputs)
        c.module.disable(model)
    stock_qkv = [s for s in stock_qkv if s[0].shape[2] > c.text_len(inputs)]     # not the text refiner's
    if name == "mochi":                                                          # per-sample calls
        stock_qkv = [tuple(torch.cat(parts, 0) for parts in zip(*stock_qkv[i:i + 2]))
                     for i in range(0, len(stock_qkv), 2)]
    assert len(ours_qkv) == len(stock_qkv) == len(c.blocks(model))
    # Block 0 sees the same inputs in both runs; later blocks differ by the attention's approximation.
    for ours, stock in zip(ours_qkv[0], stock_qkv[0]):
        assert ours.shape == stock.shape and rel_l2(ours, stock) < 1e-12


# --- the shared helpers -----------------------------------------------------------------------------------
def test_text_lengths_of_key_masks():
    s = vmonarch._joint.JointSchedule()
    N = 4

    def analyse(text_rows, video_ok=True):
        text = torch.tensor(text_rows, dtype=torch.bool).reshape(len(text_rows), -1)
        video = torch.ones(text.shape[0], N, dtype=torch.bool)
        video[0, 1] = video_ok
        return s.text_lengths(torch.cat([video, text], 1), N)

    assert analyse([[1, 1, 1], [1, 1, 1]]) == ("ok", None)
    status, lens = analyse([[1, 1, 0], [0, 0, 0]])
    assert status == "ok" and lens.tolist() == [2, 0] and lens.dtype == torch.int64
    assert analyse([[1, 0, 1], [1, 1, 1]]) == ("text", None)
    assert analyse([[0, 1, 1], [1, 1, 1]]) == ("text", None)
    assert analyse([[1, 1, 1], [1, 1, 1]], video_ok=False) == ("video", None)
    assert analyse([[], []]) == ("ok", None)                               # no text tokens at all
    mask = torch.ones(2, N + 3, dtype=torch.bool)
    first = s.text_lengths(mask, N)
    mask[0, -1] = False                                                    # changed in place: not the cached result
    assert first == ("ok", None) and s.text_lengths(mask, N)[1].tolist() == [2, 3]


@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
def test_zero_padded_text_rows(layout):
    B, N, L, H, d = 2, 5, 3, 2, 4
    out = torch.randn(B, N + L, H, d, dtype=torch.float64)
    x = out if layout == "bshd" else out.transpose(1, 2)
    got = vmonarch._joint.zero_padded_text_rows(x, torch.tensor([1, 3]), N, L, layout)
    got = got if layout == "bshd" else got.transpose(1, 2)
    want = out.clone()
    want[0, N + 1:] = 0
    assert torch.equal(got, want)
    assert vmonarch._joint.zero_padded_text_rows(x, None, N, L, layout) is x


# --- torch.compile ----------------------------------------------------------------------------------------
def _dense_joint_fn(q, k, v, grid, text_len, text_first, text_lens, layout, **options):
    """Exact attention over the joint sequence with the text key-padding mask: a traceable stand-in for
    the joint op (dense attention is what VMonarch gives with S >= T)."""
    if layout == "bshd":
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    mask = None
    if text_lens is not None:
        text = torch.arange(text_len, device=q.device)[None, :] < text_lens[:, None]
        video = torch.ones(q.shape[0], q.shape[2] - text_len, dtype=torch.bool, device=q.device)
        mask = torch.cat([text, video] if text_first else [video, text], 1)[:, None, None, :]
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out if layout == "bhsd" else out.transpose(1, 2)


def test_cogvideox_blocks_compile_fullgraph():
    """No mask, no host sync: CogVideoX's processor traces with fullgraph=True."""
    torch._dynamo.reset()
    model, inputs = jh.tiny_cogvideox(dtype=torch.float32), jh.cogvideox_inputs(frames=3, dtype=torch.float32)
    vmonarch.cogvideox.enable(model, attention_fn=_dense_joint_fn)
    want = jh.run(model, inputs)
    for block in model.transformer_blocks:
        block.compile(fullgraph=True, backend="aot_eager")
    got = jh.run(model, inputs)
    vmonarch.cogvideox.disable(model)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_hunyuan_blocks_compile_with_a_graph_break_at_the_mask():
    torch._dynamo.reset()
    model, inputs = jh.tiny_hunyuan(dtype=torch.float32), jh.hunyuan_inputs(frames=3, dtype=torch.float32)
    vmonarch.hunyuan_video.enable(model, attention_fn=_dense_joint_fn)
    want = jh.run(model, inputs)
    model.compile_repeated_blocks(fullgraph=False, backend="aot_eager")
    got = jh.run(model, inputs)
    vmonarch.hunyuan_video.disable(model)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
