"""Tiny joint text+video diffusers transformers with random weights (no download) for the processor tests,
and the executable reference adapted to the processors' attention_fn signature."""
from __future__ import annotations

import torch

HEADS, HEAD_DIM = 2, 16


def randomize(model, dtype=torch.float64, device="cpu"):
    """Random (not zero) weights everywhere, so every branch changes the output."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) / max(1, p.shape[-1]) ** 0.5)
    return model.eval().to(device=device, dtype=dtype)


def reference_joint_fn(ref, calls=None, detach_entropy=False):
    """joint_reference (fp64) with the processors' attention_fn signature, its result in the inputs' dtype;
    records each call's grid and text layout in `calls` when given. detach_entropy=True: the paper's gradient
    (cL a constant, spec §7), the one the processors train with by default."""

    def fn(q, k, v, grid, text_len, text_first, text_lens, layout, iterations, clamp, recompute_first_frame,
           sink_frames=0):
        if calls is not None:
            calls.append((tuple(grid), text_len, text_first, None if text_lens is None else text_lens.tolist()))
        qb, kb, vb = (x.double() if layout == "bhsd" else x.transpose(1, 2).double() for x in (q, k, v))
        out = ref.joint_reference(qb, kb, vb, frames=grid[0], text_len=text_len, text_first=text_first,
                                  text_lens=text_lens, t=iterations, clamp=clamp,
                                  recompute_first_frame=recompute_first_frame, sink_frames=sink_frames,
                                  detach_entropy=detach_entropy)
        out = out if layout == "bhsd" else out.transpose(1, 2)
        return out.to(q.dtype)

    return fn


def run(model, inputs):
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _cast(kwargs, dtype, device):
    out = {}
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device=device, dtype=dtype) if v.is_floating_point() and k != "timestep" else v.to(device)
        elif isinstance(v, tuple):
            v = tuple(t.to(device) for t in v)
        out[k] = v
    return out


def _rope_axes(head_dim):
    """HunyuanVideo's rotary split of the head dim over (time, height, width)."""
    t = head_dim // 4
    return (t, (head_dim - t) // 2, (head_dim - t) // 2)


def text_mask(lens, L):
    return (torch.arange(L)[None, :] < torch.tensor(lens)[:, None]).long()


# --- HunyuanVideo ---------------------------------------------------------------------------------------
def tiny_hunyuan(dtype=torch.float64, device="cpu", seed=0, layers=1, single_layers=2, head_dim=HEAD_DIM,
                 image_condition_type=None):
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(seed)
    model = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=HEADS, attention_head_dim=head_dim, num_layers=layers,
        num_single_layers=single_layers, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1,
        guidance_embeds=False, text_embed_dim=12, pooled_projection_dim=8, rope_axes_dim=_rope_axes(head_dim),
        image_condition_type=image_condition_type)
    return randomize(model, dtype, device)


def hunyuan_inputs(frames, height=6, width=10, text_lens=(5, 3), L=5, timestep=500.0, dtype=torch.float64,
                   device="cpu", seed=1):
    g, B = _gen(seed), len(text_lens)
    kwargs = dict(hidden_states=torch.randn(B, 4, frames, height, width, generator=g),
                  timestep=torch.full((B,), timestep),
                  encoder_hidden_states=torch.randn(B, L, 12, generator=g),
                  encoder_attention_mask=text_mask(text_lens, L),
                  pooled_projections=torch.randn(B, 8, generator=g))
    return _cast(kwargs, dtype, device)


# --- HunyuanVideo 1.5 -----------------------------------------------------------------------------------
def tiny_hunyuan15(dtype=torch.float64, device="cpu", seed=0, layers=2, head_dim=HEAD_DIM):
    from diffusers import HunyuanVideo15Transformer3DModel

    torch.manual_seed(seed)
    model = HunyuanVideo15Transformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=HEADS, attention_head_dim=head_dim, num_layers=layers,
        num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=12, text_embed_2_dim=10,
        image_embed_dim=8, rope_axes_dim=_rope_axes(head_dim))
    return randomize(model, dtype, device)


def hunyuan15_inputs(frames, height=3, width=5, text_lens=(4, 2), byt5_lens=(2, 3), L=4, L2=3, image_tokens=2,
                     image=True, timestep=500.0, dtype=torch.float64, device="cpu", seed=1):
    g, B = _gen(seed), len(text_lens)
    image_embeds = torch.randn(B, image_tokens, 8, generator=g)
    kwargs = dict(hidden_states=torch.randn(B, 4, frames, height, width, generator=g),
                  timestep=torch.full((B,), timestep),
                  encoder_hidden_states=torch.randn(B, L, 12, generator=g),
                  encoder_attention_mask=text_mask(text_lens, L),
                  encoder_hidden_states_2=torch.randn(B, L2, 10, generator=g),
                  encoder_attention_mask_2=text_mask(byt5_lens, L2),
                  image_embeds=image_embeds if image else torch.zeros_like(image_embeds))
    kwargs = _cast(kwargs, dtype, device)
    kwargs["timestep"] = kwargs["timestep"].to(dtype)     # the 1.5 time embedding runs in the timestep's dtype
    return kwargs


# --- CogVideoX ------------------------------------------------------------------------------------------
def tiny_cogvideox(dtype=torch.float64, device="cpu", seed=0, layers=2, L=6, patch_size_t=None, head_dim=HEAD_DIM):
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    model = CogVideoXTransformer3DModel(
        num_attention_heads=HEADS, attention_head_dim=head_dim, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=12, num_layers=layers, sample_width=10, sample_height=6, sample_frames=9, patch_size=2,
        patch_size_t=patch_size_t, max_text_seq_length=L, use_rotary_positional_embeddings=True)
    return randomize(model, dtype, device)


def cogvideox_inputs(frames, height=6, width=10, L=6, batch=2, timestep=500.0, dtype=torch.float64, device="cpu",
                     seed=1, rotary=True, patch_size_t=None, head_dim=HEAD_DIM):
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    g = _gen(seed)
    gh, gw = height // 2, width // 2
    temporal = frames if patch_size_t is None else frames // patch_size_t
    kwargs = dict(hidden_states=torch.randn(batch, frames, 4, height, width, generator=g),
                  encoder_hidden_states=torch.randn(batch, L, 12, generator=g),
                  timestep=torch.full((batch,), timestep))
    if rotary:
        cos, sin = get_3d_rotary_pos_embed(embed_dim=head_dim, crops_coords=((0, 0), (gh, gw)), grid_size=(gh, gw),
                                           temporal_size=temporal)
        kwargs["image_rotary_emb"] = (cos.to(dtype), sin.to(dtype))
    return _cast(kwargs, dtype, device)


# --- Mochi ----------------------------------------------------------------------------------------------
def tiny_mochi(dtype=torch.float64, device="cpu", seed=0, layers=2, L=5, head_dim=HEAD_DIM):
    from diffusers import MochiTransformer3DModel

    torch.manual_seed(seed)
    model = MochiTransformer3DModel(
        patch_size=2, num_attention_heads=HEADS, attention_head_dim=head_dim, num_layers=layers,
        pooled_projection_dim=8, in_channels=4, text_embed_dim=16, time_embed_dim=8, max_sequence_length=L)
    return randomize(model, dtype, device)


def mochi_inputs(frames, height=6, width=10, text_lens=(5, 2), L=5, timestep=500.0, dtype=torch.float64,
                 device="cpu", seed=1, mask=None):
    g, B = _gen(seed), len(text_lens)
    kwargs = dict(hidden_states=torch.randn(B, 4, frames, height, width, generator=g),
                  encoder_hidden_states=torch.randn(B, L, 16, generator=g),   # Mochi's text pooler has 8 heads
                  timestep=torch.full((B,), timestep),
                  encoder_attention_mask=text_mask(text_lens, L) if mask is None else mask)
    return _cast(kwargs, dtype, device)
