"""VMonarch joint attention for diffusers' MochiTransformer3DModel (spec §3c).

    import vmonarch.mochi
    pipe = diffusers.MochiPipeline.from_pretrained(...)
    vmonarch.mochi.enable(pipe, dense_steps=2)

Mochi attends over [video tokens | text tokens]. Its stock MochiAttnProcessor2_0 drops each sample's
padded text tokens (encoder_attention_mask [B, L], nonzero = valid), runs SDPA per sample over the
video and the valid text, and pads the output with zeros. VMonarchMochiAttnProcessor mirrors it (q/k/v
projections and RMS norms of both streams, the rotary embedding on the video tokens, output
projections; the last block has no text output projection) and calls vmonarch.joint_attention once for
the batch with the text after the video and per-sample valid lengths; padded text rows are zeros as in
the stock processor. This equals the stock result when the valid text tokens are a prefix (as Mochi's
tokenizer pads); another mask falls back to the stock processor. The grid is (F, H / patch_size,
W / patch_size) of the latent.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._joint import JointProcessor, JointSchedule, zero_padded_text_rows
from ._joint_model import JointModel, grid_of_bcfhw_latent, heads_of, split, text_heads, video_sharded_plan

__all__ = ["VMonarchMochiAttnProcessor", "JointSchedule", "enable", "disable", "context_parallel_plan",
           "apply_rotary_emb"]


def apply_rotary_emb(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Mochi's rotary embedding on [B, N, heads, d]: channel pairs (2i, 2i+1) rotate by the angle whose
    cosine and sine are freqs_cos / freqs_sin [N, heads, d / 2], computed in float32."""
    even, odd = x[..., 0::2].float(), x[..., 1::2].float()
    rotated = torch.stack(((even * freqs_cos - odd * freqs_sin).to(x.dtype),
                           (even * freqs_sin + odd * freqs_cos).to(x.dtype)), dim=-1)
    return rotated.flatten(-2)


class VMonarchMochiAttnProcessor(JointProcessor):
    """Drop-in for MochiAttnProcessor2_0 on a MochiTransformerBlock's attn1."""

    model = "mochi"

    @staticmethod
    def stock_processor():
        from diffusers.models.attention_processor import MochiAttnProcessor2_0

        return MochiAttnProcessor2_0()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor, image_rotary_emb=None):
        args = (attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        grid, group, dense = self.route(hidden_states.shape[1])
        if grid is None:
            return self.stock(*args)
        B, N, L = hidden_states.shape[0], hidden_states.shape[1], encoder_hidden_states.shape[1]
        if attention_mask is None or attention_mask.numel() != B * L:
            return self.stock(*args)
        text_mask = attention_mask.reshape(B, L).bool()
        full_mask = torch.cat([torch.ones(B, N, dtype=torch.bool, device=text_mask.device), text_mask], dim=1)
        status, text_lens = self.schedule.text_lengths(full_mask, N, source=attention_mask)
        if status != "ok":
            self.warn_fallback("mask", "a text mask that is not a key-padding prefix (the stock processor "
                                       "compacts the valid tokens)")
            return self.stock(*args)

        query, key, value = heads_of(attn, hidden_states, ("to_q", "to_k", "to_v"), ("norm_q", "norm_k"))
        eq, ek, ev = text_heads(attn, encoder_hidden_states)
        if image_rotary_emb is not None:
            query, key = (apply_rotary_emb(t, *image_rotary_emb) for t in (query, key))
        query, key, value = (torch.cat(p, dim=1) for p in ((query, eq), (key, ek), (value, ev)))

        # [B, N + L, heads, d]
        out = self.schedule.joint_attention(query, key, value, grid, L, text_first=False, text_lens=text_lens,
                                            layout="bshd", group=group, dense=dense)
        out = zero_padded_text_rows(out, text_lens, N, L, "bshd").flatten(2, 3)
        hidden_out, text_out = out.split_with_sizes((N, L), dim=1)
        hidden_out = attn.to_out[1](attn.to_out[0](hidden_out))
        if hasattr(attn, "to_add_out"):
            text_out = attn.to_add_out(text_out)
        return hidden_out, text_out


# --- context parallelism ---------------------------------------------------------------------------------
def context_parallel_plan():
    """diffusers' cp_plan for MochiTransformer3DModel (diffusers 0.42 has none, and its stock processor calls
    SDPA per sample, so only vmonarch's processor runs under it): the video tokens entering the first block
    and the rotary table sharded along the sequence, the model output gathered, the text replicated.
    model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=P), cp_plan=context_parallel_plan())
    with vmonarch.mochi.enable()."""
    return video_sharded_plan({"transformer_blocks.0": {"hidden_states": split(1, 3)}}, rope_dims=3)


# --- enable / disable ------------------------------------------------------------------------------------
def _transformer_class():
    from diffusers import MochiTransformer3DModel

    return MochiTransformer3DModel


_MODEL = JointModel("mochi", _transformer_class, lambda t: [b.attn1 for b in t.transformer_blocks],
                    VMonarchMochiAttnProcessor, grid_of_bcfhw_latent, timestep_index=2)


def enable(pipe_or_transformer, schedule: Optional[JointSchedule] = None, **options) -> JointSchedule:
    """Use VMonarch for the joint attention of every block of a Mochi pipeline's transformer or of a
    MochiTransformer3DModel. Options as vmonarch.hunyuan_video.enable (dense_layers: block indices)."""
    return _MODEL.enable(pipe_or_transformer, schedule, options)


def disable(pipe_or_transformer) -> None:
    """Restore the processors that were there before enable() and remove the hook."""
    _MODEL.disable(pipe_or_transformer)
