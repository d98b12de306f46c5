"""VMonarch joint attention for diffusers' CogVideoXTransformer3DModel (spec §3c).

    import vmonarch.cogvideox
    pipe = diffusers.CogVideoXPipeline.from_pretrained(...)
    vmonarch.cogvideox.enable(pipe, dense_steps=2)
    video = pipe(prompt, ...).frames[0]
    vmonarch.cogvideox.disable(pipe)

CogVideoX attends over one sequence [text tokens | video tokens] (text first, d = 64 in CogVideoX-5B)
and its stock processor (CogVideoXAttnProcessor2_0, or FusedCogVideoXAttnProcessor2_0 after
fuse_qkv_projections()) calls torch's SDPA directly, without a mask. VMonarchCogVideoXAttnProcessor
mirrors it (q/k/v projections, fused or not; LayerNorm on q and k per head; rotary embedding on the video
tokens; output projection) and calls vmonarch.joint_attention with the text first. The grid is
(F / patch_size_t, H / patch_size, W / patch_size) of the latent [B, F, C, H, W] (F when the model has no
temporal patch). Fuse the projections before enable(): fuse_qkv_projections() replaces every processor.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._joint import JointProcessor, JointSchedule
from ._joint_model import JointModel, split, video_sharded_plan

__all__ = ["VMonarchCogVideoXAttnProcessor", "JointSchedule", "enable", "disable", "context_parallel_plan"]


class VMonarchCogVideoXAttnProcessor(JointProcessor):
    """Drop-in for CogVideoXAttnProcessor2_0 / FusedCogVideoXAttnProcessor2_0 on a CogVideoXBlock's attn1."""

    model = "cogvideox"

    @staticmethod
    def stock_processor():
        from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

        return CogVideoXAttnProcessor2_0()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: Optional[torch.Tensor] = None, image_rotary_emb=None):
        args = (attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        grid, group, dense = self.route(hidden_states.shape[1])
        if grid is None:
            return self.stock(*args)
        if attention_mask is not None:
            self.warn_fallback("mask", "an attention mask was given (CogVideoX's joint attention has none)")
            return self.stock(*args)

        L = encoder_hidden_states.shape[1]
        x = torch.cat([encoder_hidden_states, hidden_states], dim=1)        # text first
        B = x.shape[0]
        if getattr(attn, "fused_projections", False) and hasattr(attn, "to_qkv"):
            query, key, value = attn.to_qkv(x).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(B, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:                  # rotary embedding on the video tokens only
            from diffusers.models.embeddings import apply_rotary_emb

            query = torch.cat([query[:, :, :L], apply_rotary_emb(query[:, :, L:], image_rotary_emb)], dim=2)
            if not attn.is_cross_attention:
                key = torch.cat([key[:, :, :L], apply_rotary_emb(key[:, :, L:], image_rotary_emb)], dim=2)

        # [B, heads, L + N, d]
        out = self.schedule.joint_attention(query, key, value, grid, L, text_first=True, text_lens=None,
                                            layout="bhsd", group=group, dense=dense)
        out = out.transpose(1, 2).reshape(B, -1, attn.heads * head_dim)
        out = attn.to_out[1](attn.to_out[0](out))
        text_out, hidden_out = out.split([L, out.shape[1] - L], dim=1)
        return hidden_out, text_out


# --- context parallelism ---------------------------------------------------------------------------------
def context_parallel_plan():
    """diffusers' cp_plan for CogVideoXTransformer3DModel (diffusers 0.42 has none, and its stock processor
    calls SDPA directly, so only vmonarch's processor runs under it): the video tokens entering the first
    block and the rotary table (image_rotary_emb) sharded along the sequence, the model output gathered, the
    text replicated. model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=P),
    cp_plan=context_parallel_plan()) with vmonarch.cogvideox.enable()."""
    return video_sharded_plan({"": {"image_rotary_emb": (split(0, 2), split(0, 2))},
                               "transformer_blocks.0": {"hidden_states": split(1, 3)}}, rope_dims=None)


# --- enable / disable ------------------------------------------------------------------------------------
def _transformer_class():
    from diffusers import CogVideoXTransformer3DModel

    return CogVideoXTransformer3DModel


def _grid_of_latent(transformer, latent: torch.Tensor):
    _, frames, _, height, width = latent.shape           # [B, F, C, H, W]
    p, p_t = int(transformer.config.patch_size), transformer.config.patch_size_t
    return int(frames) // (1 if p_t is None else int(p_t)), int(height) // p, int(width) // p


_MODEL = JointModel("cogvideox", _transformer_class, lambda t: [b.attn1 for b in t.transformer_blocks],
                    VMonarchCogVideoXAttnProcessor, _grid_of_latent, timestep_index=2)


def enable(pipe_or_transformer, schedule: Optional[JointSchedule] = None, **options) -> JointSchedule:
    """Use VMonarch for the joint attention of every block of a CogVideoX pipeline's transformer or of a
    CogVideoXTransformer3DModel. Options as vmonarch.hunyuan_video.enable (dense_layers: block indices)."""
    return _MODEL.enable(pipe_or_transformer, schedule, options)


def disable(pipe_or_transformer) -> None:
    """Restore the processors that were there before enable() and remove the hook."""
    _MODEL.disable(pipe_or_transformer)
