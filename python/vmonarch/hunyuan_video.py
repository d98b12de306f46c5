"""VMonarch joint attention for diffusers' HunyuanVideoTransformer3DModel (spec §3c).

    import vmonarch.hunyuan_video
    pipe = diffusers.HunyuanVideoPipeline.from_pretrained(...)
    vmonarch.hunyuan_video.enable(pipe, dense_steps=2, sink_frames=1)
    video = pipe(prompt, ...).frames[0]
    vmonarch.hunyuan_video.disable(pipe)

HunyuanVideo's dual-stream blocks (transformer_blocks) and single-stream blocks
(single_transformer_blocks) attend over one sequence [video tokens | text tokens]; the text is padded
to a fixed length and masked by a key-padding mask [B, 1, 1, N + L] (True = attend) that keeps the
valid prefix of the text. VMonarchHunyuanVideoAttnProcessor mirrors the stock HunyuanVideoAttnProcessor2_0
(q/k/v projections, RMS norms, rotary embedding on the video tokens only, the text's own projections
and norms in the dual-stream blocks, output projections) and calls vmonarch.joint_attention with the
text after the video and the mask's prefix lengths. dense_layers counts the dual-stream blocks first
(0 .. num_layers - 1), then the single-stream blocks. The grid is (F / patch_size_t, H / patch_size,
W / patch_size) of the latent.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._joint import JointProcessor, JointSchedule, project_video_then_text
from ._joint_model import JointModel, grid_of_bcfhw_latent, heads_of, split, text_heads, video_sharded_plan

__all__ = ["VMonarchHunyuanVideoAttnProcessor", "JointSchedule", "enable", "disable", "context_parallel_plan"]


def _rotary(x: torch.Tensor, rotary_emb) -> torch.Tensor:
    from diffusers.models.embeddings import apply_rotary_emb

    return apply_rotary_emb(x, rotary_emb, sequence_dim=1)


class VMonarchHunyuanVideoAttnProcessor(JointProcessor):
    """Drop-in for HunyuanVideoAttnProcessor2_0 on the attention of a dual- or single-stream block."""

    model = "hunyuan_video"

    @staticmethod
    def stock_processor():
        from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

        return HunyuanVideoAttnProcessor2_0()

    def _text_lens(self, attention_mask, batch: int, video: int, text: int):
        """("ok", lens) for a key-padding prefix mask, or (reason, None) to fall back."""
        if attention_mask is None:
            return "ok", None
        if attention_mask.dtype != torch.bool:
            return "an additive (non-boolean) attention mask", None
        if attention_mask.numel() != batch * (video + text):
            return f"an attention mask of shape {tuple(attention_mask.shape)} (not a key mask [B, 1, 1, N + L])", None
        status, lens = self.schedule.text_lengths(attention_mask.reshape(batch, video + text), video,
                                                     source=attention_mask)
        if status == "ok":
            return "ok", lens
        return {"video": "an attention mask that masks video tokens",
                "text": "a text mask that is not a key-padding prefix"}[status], None

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, image_rotary_emb=None):
        args = (attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        if encoder_hidden_states is None:
            return self.stock(*args)
        grid, group, dense = self.route(hidden_states.shape[1])
        if grid is None:
            return self.stock(*args)
        B, N, L = hidden_states.shape[0], hidden_states.shape[1], encoder_hidden_states.shape[1]
        status, text_lens = self._text_lens(attention_mask, B, N, L)
        if status != "ok":
            self.warn_fallback("mask", status)
            return self.stock(*args)

        joint_input = attn.add_q_proj is None          # single-stream block: one projection for both streams
        x = torch.cat([hidden_states, encoder_hidden_states], dim=1) if joint_input else hidden_states
        query, key, value = heads_of(attn, x, ("to_q", "to_k", "to_v"), ("norm_q", "norm_k"))
        if image_rotary_emb is not None:                # rotary embedding on the video tokens only
            if joint_input:
                query = torch.cat([_rotary(query[:, :N], image_rotary_emb), query[:, N:]], dim=1)
                key = torch.cat([_rotary(key[:, :N], image_rotary_emb), key[:, N:]], dim=1)
            else:
                query, key = _rotary(query, image_rotary_emb), _rotary(key, image_rotary_emb)
        if not joint_input:
            eq, ek, ev = text_heads(attn, encoder_hidden_states)
            query, key, value = (torch.cat(p, dim=1) for p in ((query, eq), (key, ek), (value, ev)))

        # [B, N + L, heads, d]
        out = self.schedule.joint_attention(query, key, value, grid, L, text_first=False, text_lens=text_lens,
                                            layout="bshd", group=group, dense=dense)
        return project_video_then_text(attn, out, N, query.dtype)


# --- context parallelism ---------------------------------------------------------------------------------
def context_parallel_plan():
    """diffusers' cp_plan for HunyuanVideoTransformer3DModel (diffusers 0.42 has none): the video tokens (the
    x_embedder's output and the rotary table, both frame-major) are sharded along the sequence and the model
    output gathered; the text stays replicated, as ulysses_joint_attention's default takes it. Use with
    vmonarch.hunyuan_video.enable(): model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=P),
    cp_plan=context_parallel_plan()). Text-to-video only (image_condition_type "token_replace" treats the
    first frame's tokens by position, which the shards do not keep)."""
    return video_sharded_plan({"x_embedder": {0: split(1, 3, split_output=True)}}, rope_dims=2)


# --- enable / disable ------------------------------------------------------------------------------------
def _transformer_class():
    from diffusers import HunyuanVideoTransformer3DModel

    return HunyuanVideoTransformer3DModel


_MODEL = JointModel("hunyuan_video", _transformer_class,
                    lambda t: [b.attn for b in t.transformer_blocks] + [b.attn for b in t.single_transformer_blocks],
                    VMonarchHunyuanVideoAttnProcessor, grid_of_bcfhw_latent, timestep_index=1)


def enable(pipe_or_transformer, schedule: Optional[JointSchedule] = None, **options) -> JointSchedule:
    """Use VMonarch for the joint attention of every dual- and single-stream block of a HunyuanVideo
    pipeline's transformer or of a HunyuanVideoTransformer3DModel.

    options: iterations=2, clamp=0.1, recompute_first_frame=True, sink_frames=0, dense_steps=0,
    dense_layers=() (dual-stream blocks first, then single-stream), attention_fn=None,
    cast_float32_on_cuda=bf16 (see vmonarch.wan.VMonarchSchedule). Returns the shared schedule.
    """
    return _MODEL.enable(pipe_or_transformer, schedule, options)


def disable(pipe_or_transformer) -> None:
    """Restore the processors that were there before enable() and remove the hook."""
    _MODEL.disable(pipe_or_transformer)
