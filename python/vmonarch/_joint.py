"""Shared machinery of the processors for joint text+video diffusers models (spec §3b-3c).

HunyuanVideo, HunyuanVideo 1.5, CogVideoX and Mochi run one self-attention over the video tokens and the
text (condition) tokens together. Their VMonarch processors (vmonarch.hunyuan_video, .hunyuan_video15,
.cogvideox, .mochi) compute what the stock processor computes up to the attention itself, then call
vmonarch.joint_attention: video queries get VMonarch over the video keys merged by log-sum-exp with the
exact attention over the valid text keys; text queries get exact attention over all valid keys.

This module holds what they share: the schedule (VMonarchSchedule plus the joint call), the key-padding
mask analysis, the base processor (dense layers/steps, grid check, fallback to the stock processor with a
one-time warning) and enable()/disable() with the forward pre-hook that reads the latent grid.

Under diffusers' context parallelism (enable_parallelism with ContextParallelConfig(ulysses_degree=P) and
the model module's context_parallel_plan(): the video tokens sharded, the text replicated) every call runs
through vmonarch.distributed.ulysses_joint_attention: VMonarch for VMonarch steps and layers, exact
attention (torch's SDPA, what the stock processors compute) for dense ones. The stock processors cannot
run over the sharded joint sequence, so what would fall back to them raises ValueError instead, and so
does ring_degree > 1.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch

from ._schedule import VMonarchSchedule

Grid = Tuple[int, int, int]
_LAYOUT_TOKEN_AXIS = {"bshd": 1, "bhsd": 2}


class JointSchedule(VMonarchSchedule):
    """VMonarchSchedule with the joint text+video call; same options (iterations, clamp,
    recompute_first_frame, sink_frames, dense_steps, dense_layers, attention_fn, cast_float32_on_cuda).

    attention_fn, when given, replaces vmonarch.joint_attention and is called as
    attention_fn(q, k, v, grid=, text_len=, text_first=, text_lens=, layout=, iterations=, clamp=,
    recompute_first_frame=[, sink_frames=]) (sink_frames only when S > 0).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._mask_cache = None   # (mask, its _version, video tokens, analysis): one mask serves a forward's blocks

    def joint_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: Sequence[int], text_len: int,
                        text_first: bool, text_lens: Optional[torch.Tensor], layout: str, group=None,
                        dense: bool = False) -> torch.Tensor:
        """The joint sequence's attention output in q's layout and dtype (spec §3c). With a Ulysses `group`,
        q, k, v hold this rank's video tokens and all text tokens (ulysses_joint_attention's replicated text);
        dense=True (only with a group) attends exactly instead of by VMonarch."""
        dtype = q.dtype
        if dense:
            from .distributed import ulysses_joint_attention

            out = ulysses_joint_attention(q, k, v, tuple(grid), int(text_len), text_first=bool(text_first),
                                          text_lens=text_lens, group=group, layout=layout,
                                          attention_fn=dense_joint_attention)
            return out.to(dtype)
        if q.is_cuda and dtype == torch.float32 and self.attention_fn is None and self.cast_float32_on_cuda:
            self.warn_once("cast", f"vmonarch: float32 activations on CUDA are cast to {self.cast_float32_on_cuda} "
                                   "for the VMonarch kernels (which take bfloat16/float16)")
            q, k, v = (x.to(self.cast_float32_on_cuda) for x in (q, k, v))
        options = dict(text_first=bool(text_first), text_lens=text_lens, layout=layout, iterations=self.iterations,
                       clamp=self.clamp, recompute_first_frame=self.recompute_first_frame)
        if self.sink_frames:
            options["sink_frames"] = self.sink_frames
        if group is not None:
            from .distributed import ulysses_joint_attention

            options.pop("layout")
            local = self._local_joint_attention
            out = ulysses_joint_attention(q, k, v, tuple(grid), int(text_len), group=group, layout=layout,
                                          attention_fn=local, **options)
        else:
            out = self._local_joint_attention(q, k, v, tuple(grid), int(text_len), **options)
        return out.to(dtype)

    def _local_joint_attention(self, q, k, v, grid, text_len, **options):
        if self.attention_fn is not None:
            return self.attention_fn(q, k, v, grid=grid, text_len=text_len, **options)
        import vmonarch

        return vmonarch.joint_attention(q, k, v, grid, text_len, **options)

    def text_lengths(self, full_mask: torch.Tensor, video_tokens: int, source: Optional[torch.Tensor] = None):
        """Analyses a key mask over the joint sequence [video | text] (bool [B, N + L], True = attend).

        Returns ("ok", lens) when every video key is valid and the text keys are a valid prefix of
        length lens[b] per sample (lens None when all text keys are valid), else ("video", None) or
        ("text", None) naming what is not a key-padding prefix. Cached for `source` (the mask tensor the
        processor received, default full_mask): every block of one forward receives the same one.
        """
        source = full_mask if source is None else source
        cache = self._mask_cache
        if cache is not None and cache[0] is source and cache[1:3] == (source._version, video_tokens):
            return cache[3]
        video, text = full_mask[:, :video_tokens], full_mask[:, video_tokens:]
        if not bool(video.all()):
            result = ("video", None)
        else:
            lens = text.sum(dim=1)
            prefix = torch.arange(text.shape[1], device=text.device)[None, :] < lens[:, None]
            if not torch.equal(prefix, text):
                result = ("text", None)
            elif bool((lens == text.shape[1]).all()):
                result = ("ok", None)
            else:
                result = ("ok", lens.to(torch.int64))
        self._mask_cache = (source, source._version, video_tokens, result)
        return result


def dense_joint_attention(q, k, v, grid, text_len: int, text_first: bool = False, text_lens=None, layout: str = "bshd",
                          **unused) -> torch.Tensor:
    """Exact attention over every valid key of a joint sequence (torch's SDPA with the key-padding mask):
    what the stock processors compute, as a local attention of ulysses_joint_attention."""
    qb, kb, vb = (x.transpose(1, 2) if layout == "bshd" else x for x in (q, k, v))     # [B, h, N + L, d]
    mask = None
    if text_lens is not None:
        B, video = qb.shape[0], qb.shape[2] - text_len
        lens = torch.as_tensor(text_lens, device=q.device)
        text_ok = torch.arange(text_len, device=q.device)[None, :] < lens[:, None]
        video_ok = torch.ones(B, video, dtype=torch.bool, device=q.device)
        mask = torch.cat([text_ok, video_ok] if text_first else [video_ok, text_ok], dim=1)[:, None, None, :]
    out = torch.nn.functional.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask)
    return out.transpose(1, 2) if layout == "bshd" else out


def zero_padded_text_rows(out: torch.Tensor, text_lens: Optional[torch.Tensor], text_start: int, text_len: int,
                          layout: str) -> torch.Tensor:
    """Sets the output rows of padded text queries to 0 (what stock processors give rows whose keys
    are all masked, or padded rows they never compute)."""
    if text_lens is None:
        return out
    axis = _LAYOUT_TOKEN_AXIS[layout]
    positions = torch.arange(text_len, device=out.device)
    padded = positions[None, :] >= text_lens.to(out.device)[:, None]            # [B, L]
    keep = torch.ones(out.shape[0], out.shape[axis], dtype=torch.bool, device=out.device)
    keep[:, text_start:text_start + text_len] = ~padded
    shape = [out.shape[0], 1, 1, 1]
    shape[axis] = out.shape[axis]
    return out * keep.view(shape).to(out.dtype)


class JointProcessor:
    """Base of the joint processors: decides VMonarch or the stock processor for one call."""

    model = "vmonarch"            # the integration's module name, for messages
    _attention_backend = None     # set by diffusers' set_attention_backend; passed to the stock processor
    _parallel_config = None

    def __init__(self, schedule: Optional[JointSchedule] = None, layer: Optional[int] = None, fallback=None):
        self.schedule = schedule if schedule is not None else JointSchedule()
        self.layer = layer
        self.fallback = fallback if fallback is not None else self.stock_processor()

    @staticmethod
    def stock_processor():
        raise NotImplementedError

    def stock(self, attn, *args, **kwargs):
        """The stock processor's result, with any attention backend set on this processor. Under context
        parallelism: ValueError (the stock processors cannot attend over the sharded joint sequence)."""
        if self.ulysses_group() is not None:
            raise ValueError(f"vmonarch.{self.model}: this call (e.g. one without text) would need the stock "
                             "processor, and under context parallelism it cannot attend over the sharded joint "
                             "sequence")
        fb = self.fallback
        if self._attention_backend is not None and hasattr(fb, "_attention_backend"):
            fb._attention_backend = self._attention_backend
        if self._parallel_config is not None and hasattr(fb, "_parallel_config"):
            fb._parallel_config = self._parallel_config
        return fb(attn, *args, **kwargs)

    def grid_for(self, video_tokens: int) -> Optional[Grid]:
        """The latent grid when this call runs VMonarch; None for a dense step/layer or a grid that does
        not cover the call's video tokens (warned once)."""
        s = self.schedule
        if not s.use_vmonarch(self.layer):
            return None
        grid = s.grid
        if grid is None or grid[0] * grid[1] * grid[2] != video_tokens:
            s.warn_once("grid", f"vmonarch.{self.model}: attention over {video_tokens} video tokens does not match "
                                f"the latent grid {grid}; using the stock processor (is the transformer's forward "
                                "hook installed, i.e. was enable() called on this transformer?)")
            return None
        return grid

    def ulysses_group(self):
        """The Ulysses group under diffusers' context parallelism, else None (ValueError for ring_degree > 1)."""
        config = self._parallel_config
        if config is None:
            config = getattr(self.fallback, "_parallel_config", None)
        if config is None:
            return None
        from .distributed import context_parallel_group

        return context_parallel_group(config, caller=f"vmonarch.{self.model}")

    def route(self, video_tokens: int):
        """(grid, group, dense) for one call: grid None -> the stock processor; group the Ulysses group under
        context parallelism (video_tokens is then this rank's share of T*H*W, checked), where dense says the
        step or layer attends exactly; without context parallelism group is None and dense False."""
        group = self.ulysses_group()
        if group is None:
            return self.grid_for(video_tokens), None, False
        import torch.distributed as dist
        from .distributed import token_split

        grid = self.schedule.grid
        if grid is None:
            raise ValueError(f"vmonarch.{self.model}: no latent grid under context parallelism (is the transformer's "
                             "forward hook installed, i.e. was enable() called on this transformer?)")
        N = grid[0] * grid[1] * grid[2]
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        held, _ = token_split(N, world)
        if video_tokens != held[rank]:
            raise ValueError(f"vmonarch.{self.model}: attention on rank {rank} of {world} (context parallelism) has "
                             f"{video_tokens} video tokens, expected {held[rank]} (its share of N = T*H*W = {N} for "
                             f"the latent grid {grid}; is the model's context_parallel_plan() in use?)")
        return grid, group, not self.schedule.use_vmonarch(self.layer)

    def warn_fallback(self, key: str, message: str) -> None:
        """One warning per schedule and kind of input (key, message) that VMonarch does not take; under
        context parallelism a ValueError naming it (the stock processor cannot run there)."""
        if self.ulysses_group() is not None:
            raise ValueError(f"vmonarch.{self.model}: {message}: the stock processor would be needed, and under "
                             "context parallelism it cannot attend over the sharded joint sequence")
        self.schedule.warn_once(f"{key}:{message}", f"vmonarch.{self.model}: {message}; using the stock processor "
                                                    "for such calls (warned once)")


# --- enable / disable ------------------------------------------------------------------------------------
def project_video_then_text(attn, out: torch.Tensor, video_tokens: int, dtype: torch.dtype):
    """The output projections of a joint sequence with the video first: out [B, N + L, heads, d] ->
    (attn.to_out applied to the video rows, attn.to_add_out to the text rows), each where the module has it."""
    out = out.flatten(2, 3).to(dtype)
    hidden_out, text_out = out[:, :video_tokens], out[:, video_tokens:]
    if getattr(attn, "to_out", None) is not None:
        hidden_out = attn.to_out[1](attn.to_out[0](hidden_out))
    if getattr(attn, "to_add_out", None) is not None:
        text_out = attn.to_add_out(text_out)
    return hidden_out, text_out


def set_processor(attn, processor) -> None:
    if hasattr(attn, "set_processor"):      # diffusers' Attention
        attn.set_processor(processor)
    else:                                   # MochiAttention keeps a plain attribute
        attn.processor = processor


def transformers_of(obj, transformer_class, model: str) -> List[torch.nn.Module]:
    if isinstance(obj, transformer_class):
        return [obj]
    found = [getattr(obj, n) for n in ("transformer", "transformer_2") if isinstance(getattr(obj, n, None),
                                                                                   transformer_class)]
    if not found:
        raise TypeError(f"vmonarch.{model}: {type(obj).__name__} is neither a {transformer_class.__name__} nor a "
                        f"pipeline whose .transformer is one")
    return found


def grid_hook(schedule: JointSchedule, grid_of_latent: Callable[[torch.Tensor], Optional[Grid]], timestep_index: int):
    """Forward pre-hook on the transformer: the latent grid from hidden_states, the step from timestep."""

    def hook(module, args, kwargs):
        latent = kwargs.get("hidden_states", args[0] if args else None)
        timestep = kwargs.get("timestep", args[timestep_index] if len(args) > timestep_index else None)
        if isinstance(latent, torch.Tensor) and latent.dim() == 5:
            schedule.grid = grid_of_latent(latent)
        schedule._mask_cache = None
        schedule.observe_timestep(timestep)

    return hook


def enable(pipe_or_transformer, *, transformer_class, model: str, attention_modules, processor_class,
           grid_of_latent, timestep_index: int, schedule: Optional[JointSchedule], options) -> JointSchedule:
    """Installs processor_class on every module attention_modules(transformer) returns (its position in
    that list is the layer index of dense_layers) and the grid hook; see each model module's enable()."""
    if schedule is None:
        schedule = JointSchedule(**options)
    elif options:
        raise TypeError(f"vmonarch.{model}.enable: pass either a schedule or options, not both")
    for transformer in transformers_of(pipe_or_transformer, transformer_class, model):
        disable(transformer, transformer_class=transformer_class, model=model, attention_modules=attention_modules)
        saved = []
        for index, attn in enumerate(attention_modules(transformer)):
            saved.append(attn.processor)
            fallback = None if isinstance(attn.processor, JointProcessor) else attn.processor
            set_processor(attn, processor_class(schedule, layer=index, fallback=fallback))
        # enable_parallelism() before enable() left its config on the model (the stock processors of CogVideoX
        # and Mochi have no _parallel_config for it to be set on)
        config = getattr(transformer, "_parallel_config", None)
        if config is not None and getattr(config, "context_parallel_config", None) is not None:
            for attn in attention_modules(transformer):
                attn.processor._parallel_config = config
        hook = grid_hook(schedule, lambda latent, t=transformer: grid_of_latent(t, latent), timestep_index)
        handle = transformer.register_forward_pre_hook(hook, with_kwargs=True)
        transformer._vmonarch_joint_state = (schedule, saved, handle)
    return schedule


def disable(pipe_or_transformer, *, transformer_class, model: str, attention_modules) -> None:
    """Restores the processors that were there before enable() and removes the hook."""
    for transformer in transformers_of(pipe_or_transformer, transformer_class, model):
        state = getattr(transformer, "_vmonarch_joint_state", None)
        if state is None:
            continue
        _, saved, handle = state
        handle.remove()
        for attn, processor in zip(attention_modules(transformer), saved):
            set_processor(attn, processor)
        del transformer._vmonarch_joint_state
