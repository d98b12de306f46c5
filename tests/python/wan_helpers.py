"""Tiny Wan transformers with random weights (no download) for the vmonarch.wan tests."""
from __future__ import annotations

import torch


def tiny_wan(i2v: bool = False, layers: int = 2, heads: int = 2, head_dim: int = 24, dtype=torch.float64,
             device="cpu", seed: int = 0):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    config = dict(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=4,
                  out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=layers, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64)
    if i2v:
        config.update(image_dim=8, added_kv_proj_dim=heads * head_dim)
    model = WanTransformer3DModel(**config).eval()
    # Random (not zero) weights everywhere, so every branch changes the output.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) / max(1, p.shape[-1]) ** 0.5)
    # (diffusers warns that some modules should stay float32 when cast with .to(); harmless here)
    return model.to(device=device, dtype=dtype)


def tiny_inputs(frames: int, height: int = 6, width: int = 10, i2v: bool = False, timestep: float = 500.0,
                dtype=torch.float64, device="cpu", seed: int = 1, batch: int = 1):
    g = torch.Generator().manual_seed(seed)
    kwargs = dict(
        hidden_states=torch.randn(batch, 4, frames, height, width, generator=g),
        timestep=torch.full((batch,), timestep),
        encoder_hidden_states=torch.randn(batch, 512 if i2v else 7, 16, generator=g),
    )
    if i2v:
        kwargs["encoder_hidden_states_image"] = torch.randn(batch, 5, 8, generator=g)
    return {k: (v.to(device=device, dtype=dtype) if k != "timestep" else v.to(device)) for k, v in kwargs.items()}


def run(model, inputs):
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def reference_attention_fn(ref, detach_entropy=False):
    """vmonarch_reference (fp64) adapted to the processor's attention_fn signature ("bshd" layout), its result in
    the inputs' dtype. detach_entropy=True: the paper's gradient (cL a constant, spec §7)."""

    def fn(q, k, v, grid, iterations, clamp, recompute_first_frame):
        qb, kb, vb = (x.transpose(1, 2).double() for x in (q, k, v))
        out = ref.vmonarch_reference(qb, kb, vb, frames=grid[0], t=iterations, clamp=clamp,
                                     recompute_first_frame=recompute_first_frame, detach_entropy=detach_entropy)
        return out.transpose(1, 2).to(q.dtype)

    return fn


def run_with_reference(model, inputs, ref):
    """The model's output with the fp64 reference swapped in for vmonarch's attention, and the video grid of
    every call the processor made (one per transformer block). Leaves the processor disabled."""
    import vmonarch.wan

    calls = []
    reference = reference_attention_fn(ref)

    def counted(*args, **kwargs):
        calls.append(kwargs["grid"])
        return reference(*args, **kwargs)

    vmonarch.wan.enable(model, attention_fn=counted)
    want = run(model, inputs)
    vmonarch.wan.disable(model)
    return want, calls
