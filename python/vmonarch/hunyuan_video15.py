"""VMonarch joint attention for diffusers' HunyuanVideo15Transformer3DModel (HunyuanVideo 1.5, spec §3c).

    import vmonarch.hunyuan_video15
    vmonarch.hunyuan_video15.enable(pipe, dense_steps=2, sink_frames=1)

Every block of HunyuanVideo 1.5 is a dual-stream block attending over [video tokens | condition tokens],
the condition being the image tokens, the ByT5 and the MLLM text tokens, reordered by the model so that
the valid ones come first and the padding last. The stock HunyuanVideo15AttnProcessor2_0 builds a
symmetric mask from the condition mask [B, L]: padded condition tokens are neither keys nor queries
(their rows come out as zeros). VMonarchHunyuanVideo15AttnProcessor mirrors it (projections, RMS norms,
rotary embedding on the video tokens, the condition's own projections and norms, output projections),
calls vmonarch.joint_attention with the condition after the video and the mask's prefix lengths, and
zeroes the padded condition rows as the stock processor does. The grid is (F / patch_size_t,
H / patch_size, W / patch_size) of the latent.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ._joint import JointProcessor, JointSchedule, project_video_then_text, zero_padded_text_rows
from ._joint_model import JointModel, grid_of_bcfhw_latent, split, text_heads, video_sharded_plan

__all__ = ["VMonarchHunyuanVideo15AttnProcessor", "JointSchedule", "enable", "disable", "context_parallel_plan"]


class VMonarchHunyuanVideo15AttnProcessor(JointProcessor):
    """Drop-in for HunyuanVideo15AttnProcessor2_0 on a HunyuanVideo15TransformerBlock's attention."""

    model = "hunyuan_video15"

    @staticmethod
    def stock_processor():
        from diffusers.models.transformers.transformer_hunyuan_video15 import HunyuanVideo15AttnProcessor2_0

        return HunyuanVideo15AttnProcessor2_0()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, image_rotary_emb=None):
        args = (attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        if encoder_hidden_states is None or attention_mask is None or attention_mask.dim() != 2:
            return self.stock(*args)
        grid, group, dense = self.route(hidden_states.shape[1])
        if grid is None:
            return self.stock(*args)
        N, L = hidden_states.shape[1], encoder_hidden_states.shape[1]
        # The stock processor pads the mask with True in front to the sequence length N + L.
        if attention_mask.shape[1] > N + L:
            return self.stock(*args)
        full_mask = F.pad(attention_mask.bool(), (N + L - attention_mask.shape[1], 0), value=True)
        status, text_lens = self.schedule.text_lengths(full_mask, N, source=attention_mask)
        if status != "ok":
            self.warn_fallback("mask", {"video": "a condition mask that masks video tokens",
                                        "text": "a condition mask that is not a key-padding prefix"}[status])
            return self.stock(*args)

        query, key, value = (proj(hidden_states).unflatten(2, (attn.heads, -1))
                             for proj in (attn.to_q, attn.to_k, attn.to_v))
        query, key = attn.norm_q(query), attn.norm_k(key)
        if image_rotary_emb is not None:
            from diffusers.models.embeddings import apply_rotary_emb

            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        eq, ek, ev = text_heads(attn, encoder_hidden_states)
        query, key, value = (torch.cat(p, dim=1) for p in ((query, eq), (key, ek), (value, ev)))

        # [B, N + L, heads, d]
        out = self.schedule.joint_attention(query, key, value, grid, L, text_first=False, text_lens=text_lens,
                                            layout="bshd", group=group, dense=dense)
        out = zero_padded_text_rows(out, text_lens, N, L, "bshd")
        return project_video_then_text(attn, out, N, query.dtype)


# --- context parallelism ---------------------------------------------------------------------------------
def context_parallel_plan():
    """diffusers' cp_plan for HunyuanVideo15Transformer3DModel (diffusers 0.42 has none): the video tokens (the
    x_embedder's output and the rotary table) sharded along the sequence, the model output gathered, the
    condition tokens replicated. model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=P),
    cp_plan=context_parallel_plan()) with vmonarch.hunyuan_video15.enable()."""
    return video_sharded_plan({"x_embedder": {0: split(1, 3, split_output=True)}}, rope_dims=2)


# --- enable / disable ------------------------------------------------------------------------------------
def _transformer_class():
    from diffusers import HunyuanVideo15Transformer3DModel

    return HunyuanVideo15Transformer3DModel


_MODEL = JointModel("hunyuan_video15", _transformer_class, lambda t: [b.attn for b in t.transformer_blocks],
                    VMonarchHunyuanVideo15AttnProcessor, grid_of_bcfhw_latent, timestep_index=1)


def enable(pipe_or_transformer, schedule: Optional[JointSchedule] = None, **options) -> JointSchedule:
    """Use VMonarch for the joint attention of every block of a HunyuanVideo 1.5 pipeline's transformer
    or of a HunyuanVideo15Transformer3DModel. Options as vmonarch.hunyuan_video.enable."""
    return _MODEL.enable(pipe_or_transformer, schedule, options)


def disable(pipe_or_transformer) -> None:
    """Restore the processors that were there before enable() and remove the hook."""
    _MODEL.disable(pipe_or_transformer)
