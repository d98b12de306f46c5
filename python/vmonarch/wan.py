"""VMonarch self-attention for diffusers' Wan video transformers (WanTransformer3DModel).

    import vmonarch.wan
    pipe = diffusers.WanPipeline.from_pretrained(...)
    vmonarch.wan.enable(pipe, dense_steps=2, dense_layers=[0])   # or enable(pipe.transformer, ...)
    video = pipe(prompt, ...).frames[0]
    vmonarch.wan.disable(pipe)                                   # back to the stock processors

enable() gives every block's self-attention (attn1) a VMonarchWanAttnProcessor and leaves the
cross-attention (attn2: text, and the image branch of I2V models) with diffusers' stock processor. The
processor has the stock WanAttnProcessor's call signature and does what it does (QKV projections, fused
or not; RMS norms on q and k; Wan's interleaved rotary embedding; output projection), except that the
self-attention itself is VMonarch over the latent grid (T, H, W) = (frames / p_t, height / p_h,
width / p_w), which a forward pre-hook on the transformer reads from the latent's shape and the
config's patch size. Where VMonarch does not apply (a dense step or layer, an attention mask, a token
count that is not T*H*W) the processor calls the stock processor, with any attention backend set through
diffusers' set_attention_backend. Under diffusers' context parallelism (enable_parallelism with
ContextParallelConfig(ulysses_degree=P)) each rank sees its slice of the tokens and the processor runs
vmonarch.distributed.ulysses_attention over the Ulysses group; ring_degree > 1 raises ValueError.

Written against diffusers 0.42 (WanAttnProcessor, WanAttention, WanTransformer3DModel); Wan 2.1 and 2.2
(also its two-expert pipelines: enable(pipe) covers pipe.transformer and pipe.transformer_2).
"""
from __future__ import annotations

from typing import List, Optional

import torch

from ._schedule import VMonarchSchedule

__all__ = ["VMonarchWanAttnProcessor", "VMonarchSchedule", "enable", "disable", "apply_rotary_emb"]


def apply_rotary_emb(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on [B, N, heads, d]: channel pairs (2i, 2i+1) rotated as complex numbers;
    freqs_cos / freqs_sin [1, N, 1, d] hold each pair's angle twice (repeat-interleaved)."""
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


def _stock_processor():
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    return WanAttnProcessor()


class VMonarchWanAttnProcessor:
    """Drop-in for diffusers' WanAttnProcessor on a self-attention module (WanAttention attn1)."""

    _attention_backend = None   # set by diffusers' set_attention_backend; used on the dense path
    _parallel_config = None     # set by diffusers' enable_parallelism
    ulysses_chunks = 1          # head groups pipelined under context parallelism (ulysses_attention's chunks)

    def __init__(self, schedule: Optional[VMonarchSchedule] = None, layer: Optional[int] = None, fallback=None):
        self.schedule = schedule if schedule is not None else VMonarchSchedule()
        self.layer = layer
        self.fallback = fallback if fallback is not None else _stock_processor()

    def _dense(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, **kwargs):
        fb = self.fallback
        if self._attention_backend is not None:
            fb._attention_backend = self._attention_backend
        if self._parallel_config is not None:
            fb._parallel_config = self._parallel_config
        return fb(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, **kwargs)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, rotary_emb=None, **kwargs) -> torch.Tensor:
        s = self.schedule
        group = self._ulysses_group()
        if encoder_hidden_states is not None or attention_mask is not None or not s.use_vmonarch(self.layer):
            return self._dense(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, **kwargs)
        grid = s.grid
        tokens = hidden_states.shape[1]
        sharded = group is not None and grid is not None and tokens != grid[0] * grid[1] * grid[2]
        if sharded:
            _check_shard(tokens, grid, group)
        elif grid is None or grid[0] * grid[1] * grid[2] != tokens:
            s.warn_once("grid", f"vmonarch.wan: self-attention over {tokens} tokens does not match the latent grid "
                                f"{grid}; using dense attention (is the transformer's forward hook installed?)")
            return self._dense(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, **kwargs)

        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))
        if rotary_emb is not None:
            query = apply_rotary_emb(query, *rotary_emb)
            key = apply_rotary_emb(key, *rotary_emb)

        if sharded:   # this rank's tokens, all heads; VMonarch runs over all tokens of heads/P heads
            from .distributed import ulysses_attention

            out = ulysses_attention(query, key, value, grid, group=group, chunks=self.ulysses_chunks,
                                    attention_fn=lambda q, k, v, g: s.attention(q, k, v, g))
        else:
            out = s.attention(query, key, value, grid)      # [B, N, heads, d]
        out = out.flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        return out

    def _ulysses_group(self):
        """The Ulysses group under diffusers' context parallelism, else None (ValueError for ring_degree > 1).
        enable_parallelism() before vmonarch.wan.enable() left the config on the replaced stock processor."""
        config = self._parallel_config
        if config is None:
            config = getattr(self.fallback, "_parallel_config", None)
        if config is None:
            return None
        from .distributed import context_parallel_group

        return context_parallel_group(config)


def _check_shard(tokens: int, grid, group) -> None:
    """Context parallelism gives rank r tokens [r-th torch.tensor_split slice] of the T*H*W sequence."""
    import torch.distributed as dist
    from .distributed import token_split

    N = grid[0] * grid[1] * grid[2]
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    held, _ = token_split(N, world)
    if tokens != held[rank]:
        raise ValueError(f"vmonarch.wan: self-attention on rank {rank} of {world} (context parallelism) has {tokens} "
                         f"tokens, expected {held[rank]} (its share of N = T*H*W = {N} for the latent grid {grid})")


# --- enable / disable ------------------------------------------------------------------------------------
def _transformers(obj) -> List[torch.nn.Module]:
    if hasattr(obj, "blocks") and hasattr(obj, "config"):
        return [obj]
    found = [getattr(obj, name) for name in ("transformer", "transformer_2") if getattr(obj, name, None) is not None]
    if not found:
        raise TypeError(f"vmonarch.wan: {type(obj).__name__} is neither a Wan transformer (with .blocks) nor a "
                        "pipeline with .transformer")
    return found


def _grid_hook(schedule: VMonarchSchedule, patch_size):
    p_t, p_h, p_w = (int(p) for p in patch_size)

    def hook(module, args, kwargs):
        latent = kwargs.get("hidden_states", args[0] if args else None)
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if latent is not None and latent.dim() == 5:
            _, _, frames, height, width = latent.shape
            schedule.grid = (int(frames) // p_t, int(height) // p_h, int(width) // p_w)
        schedule.observe_timestep(timestep)

    return hook


def enable(pipe_or_transformer, schedule: Optional[VMonarchSchedule] = None, **options) -> VMonarchSchedule:
    """Use VMonarch for the self-attention of a Wan pipeline's transformer(s) or of a WanTransformer3DModel.

    options: iterations=2, clamp=0.1, recompute_first_frame=True, sink_frames=0, dense_steps=0 (first K
    denoising steps dense), dense_layers=() (block indices kept dense), attention_fn=None, cast_float32_on_cuda=bf16,
    entropy_grad=False and save_state=False (training: vmonarch.attention's backward options) — see
    VMonarchSchedule. Returns the schedule (shared by all transformers): change its fields, call
    reset() or set_step() at run time. Calling enable() again replaces the previous setting.
    """
    if schedule is None:
        schedule = VMonarchSchedule(**options)
    elif options:
        raise TypeError("vmonarch.wan.enable: pass either a schedule or options, not both")
    elif not isinstance(schedule, VMonarchSchedule):
        raise TypeError(f"vmonarch.wan.enable: argument 'schedule' is a {type(schedule).__name__}, expected a "
                        "vmonarch.wan.VMonarchSchedule or None")
    transformers = _transformers(pipe_or_transformer)
    for transformer in transformers:   # every check before anything is installed
        schedule.check_layers("vmonarch.wan.enable", len(transformer.blocks))
    for transformer in transformers:
        disable(transformer)
        saved = []
        for index, block in enumerate(transformer.blocks):
            attn = block.attn1
            saved.append(attn.processor)
            fallback = attn.processor if not isinstance(attn.processor, VMonarchWanAttnProcessor) else None
            attn.set_processor(VMonarchWanAttnProcessor(schedule, layer=index, fallback=fallback))
        handle = transformer.register_forward_pre_hook(_grid_hook(schedule, transformer.config.patch_size),
                                                       with_kwargs=True)
        transformer._vmonarch_state = (schedule, saved, handle)
    return schedule


def disable(pipe_or_transformer) -> None:
    """Restore the processors that were there before enable() and remove the hook."""
    for transformer in _transformers(pipe_or_transformer):
        state = getattr(transformer, "_vmonarch_state", None)
        if state is None:
            continue
        _, saved, handle = state
        handle.remove()
        for block, processor in zip(transformer.blocks, saved):
            block.attn1.set_processor(processor)
        del transformer._vmonarch_state
