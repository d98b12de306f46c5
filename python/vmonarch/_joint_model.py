"""What the joint-attention model modules (hunyuan_video, hunyuan_video15, mochi, cogvideox) share besides
the processor base class of _joint: the per-model description that enable()/disable() install from, the
grid of a latent, the text stream's projections and diffusers' context-parallel plan pieces.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from . import _joint
from ._joint import JointSchedule


def heads_of(attn, states: torch.Tensor, projections: Tuple[str, str, str], norms: Tuple[str, str]):
    """q, k, v [B, S, heads, d] of `states` through attn's projections named in `projections` (e.g.
    ("add_q_proj", "add_k_proj", "add_v_proj")), with the RMS norms named in `norms` applied to q and k
    where the module has them (an attribute that is None is skipped)."""
    q, k, v = (getattr(attn, name)(states).unflatten(2, (attn.heads, -1)) for name in projections)
    norm_q, norm_k = (getattr(attn, name, None) for name in norms)
    if norm_q is not None:
        q = norm_q(q)
    if norm_k is not None:
        k = norm_k(k)
    return q, k, v


def text_heads(attn, encoder_hidden_states: torch.Tensor):
    """The text (condition) stream's own q, k, v and norms of a dual-stream block: [B, L, heads, d] each."""
    return heads_of(attn, encoder_hidden_states, ("add_q_proj", "add_k_proj", "add_v_proj"),
                    ("norm_added_q", "norm_added_k"))


def grid_of_bcfhw_latent(transformer, latent: torch.Tensor):
    """(F / patch_size_t, H / patch_size, W / patch_size) of a [B, C, F, H, W] latent; a model without
    patch_size_t (Mochi) patches space only."""
    _, _, frames, height, width = latent.shape
    p = int(transformer.config.patch_size)
    p_t = getattr(transformer.config, "patch_size_t", None)
    return int(frames) // (1 if p_t is None else int(p_t)), int(height) // p, int(width) // p


def video_sharded_plan(video_entry: dict, rope_dims: Optional[int]):
    """A diffusers cp_plan that shards the video tokens along the sequence (`video_entry`: module name ->
    {input: split(...)}), shards the two tensors of the "rope" module's output (rope_dims: their rank, or
    None where the model has no such module) and gathers the model output after proj_out; the text stays
    replicated, as ulysses_joint_attention's default takes it."""
    from diffusers.models._modeling_parallel import ContextParallelOutput as Gather

    plan = dict(video_entry)
    if rope_dims is not None:
        plan["rope"] = {i: split(0, rope_dims, split_output=True) for i in (0, 1)}
    plan["proj_out"] = Gather(gather_dim=1, expected_dims=3)
    return plan


def split(split_dim: int, expected_dims: int, split_output: bool = False):
    """diffusers' ContextParallelInput (imported on use: diffusers is optional)."""
    from diffusers.models._modeling_parallel import ContextParallelInput

    return ContextParallelInput(split_dim=split_dim, expected_dims=expected_dims, split_output=split_output)


class JointModel:
    """One diffusers model's joint attention: where its processors go and how its grid is read. enable()
    installs `processor_class` on every module attention_modules(transformer) lists (its index there is the
    layer of dense_layers) plus the grid hook; disable() restores what was there."""

    def __init__(self, model: str, transformer_class: Callable[[], type], attention_modules, processor_class,
                 grid_of_latent, timestep_index: int):
        self.model, self._transformer_class = model, transformer_class
        self.attention_modules, self.processor_class = attention_modules, processor_class
        self.grid_of_latent, self.timestep_index = grid_of_latent, timestep_index

    def enable(self, pipe_or_transformer, schedule: Optional[JointSchedule], options) -> JointSchedule:
        return _joint.enable(pipe_or_transformer, transformer_class=self._transformer_class(), model=self.model,
                             attention_modules=self.attention_modules, processor_class=self.processor_class,
                             grid_of_latent=self.grid_of_latent, timestep_index=self.timestep_index,
                             schedule=schedule, options=options)

    def disable(self, pipe_or_transformer) -> None:
        _joint.disable(pipe_or_transformer, transformer_class=self._transformer_class(), model=self.model,
                       attention_modules=self.attention_modules)
