"""VMonarch in the original Wan2.1 / Wan2.2 code base (the `wan` package of Wan-Video/Wan2.1 and Wan2.2).

There, every attention goes through `flash_attention(q, k, v, q_lens, k_lens, ..., window_size, ...)` of
wan/modules/attention.py, which wan/modules/model.py imports by name. That function is not told the
video grid, but its caller WanSelfAttention.forward(x, seq_lens, grid_sizes, freqs) is. install()
therefore patches, in wan.modules.model:

  * WanSelfAttention.forward: records (grid_sizes, seq_lens, layer) while the original forward runs;
  * flash_attention: inside such a self-attention call, runs VMonarch on each sample's first
    seq_len = F*H*W tokens (grid_sizes[b] = (F, H, W)) and writes zeros to the padding rows beyond them
    (their values never reach a valid token: padding keys are masked and unpatchify drops them);
    everywhere else (cross-attention, image branch) it calls the original flash_attention;
  * WanModel.forward: counts denoising steps from its timestep t (for dense_steps).

Usage, in generate.py or your own script, before the pipeline runs:

    import vmonarch.wan_original
    wan_t2v = wan.WanT2V(config=cfg, checkpoint_dir=...)
    vmonarch.wan_original.install(wan_t2v.model, dense_steps=2)   # model: the WanModel, for layer indices
    video = wan_t2v.generate(prompt, ...)
    vmonarch.wan_original.uninstall()

It falls back to the original function for causal or windowed attention, dropout, given q_lens, and
grids that do not match the sequence. Not covered: the xDiT/USP context-parallel path
(wan/distributed/xdit_context_parallel.py replaces WanSelfAttention.forward itself).
"""
from __future__ import annotations

import contextvars
import functools
import importlib
from typing import Optional

import torch

from ._schedule import VMonarchSchedule

__all__ = ["install", "uninstall", "VMonarchSchedule"]

_context: contextvars.ContextVar = contextvars.ContextVar("vmonarch_wan_self_attention", default=None)
_installed = {}  # module -> (originals dict, schedule)


def _vmonarch_flash_attention(schedule: VMonarchSchedule, original):
    @functools.wraps(original)
    def flash_attention(q, k, v, q_lens=None, k_lens=None, dropout_p=0.0, softmax_scale=None, q_scale=None,
                        causal=False, window_size=(-1, -1), deterministic=False, dtype=torch.bfloat16,
                        version=None):
        ctx = _context.get()
        plain = (q_lens is None and not causal and tuple(window_size) == (-1, -1) and dropout_p == 0.0
                 and q.shape[1] == k.shape[1])
        if ctx is None or not plain or not schedule.use_vmonarch(ctx["layer"]):
            return original(q, k, v, q_lens=q_lens, k_lens=k_lens, dropout_p=dropout_p, softmax_scale=softmax_scale,
                            q_scale=q_scale, causal=causal, window_size=window_size, deterministic=deterministic,
                            dtype=dtype, version=version)
        _context.set(None)  # one self-attention call per forward: anything after it is not ours
        grids = [tuple(int(x) for x in g) for g in ctx["grid_sizes"].tolist()]
        lens = [int(n) for n in (k_lens.tolist() if k_lens is not None else [k.shape[1]] * k.shape[0])]
        if any(g[0] * g[1] * g[2] != n or n > q.shape[1] for g, n in zip(grids, lens)):
            schedule.warn_once("grid", f"vmonarch.wan_original: grids {grids} do not match sequence lengths {lens}; "
                                       "using the original flash_attention")
            return original(q, k, v, q_lens=q_lens, k_lens=k_lens, dropout_p=dropout_p, softmax_scale=softmax_scale,
                            q_scale=q_scale, causal=causal, window_size=window_size, deterministic=deterministic,
                            dtype=dtype, version=version)

        # Same dtype handling as the original: non-half inputs go to `dtype`, q and k follow v.
        out_dtype = q.dtype
        half = (torch.float16, torch.bfloat16)
        if q.is_cuda:
            q, k, v = (x if x.dtype in half else x.to(dtype) for x in (q, k, v))
        q, k = q.to(v.dtype), k.to(v.dtype)
        if q_scale is not None:
            q = q * q_scale

        def run(qs, ks, vs, grid):
            return schedule.attention(qs, ks, vs, grid, scale=softmax_scale)

        B, L = q.shape[0], q.shape[1]
        if all(n == L for n in lens) and len(set(grids)) == 1:
            out = run(q, k, v, grids[0])
        else:
            out = q.new_zeros(B, L, q.shape[2], v.shape[3])
            for b, (g, n) in enumerate(zip(grids, lens)):
                out[b:b + 1, :n] = run(q[b:b + 1, :n], k[b:b + 1, :n], v[b:b + 1, :n], g)
        return out.type(out_dtype)

    return flash_attention


def _self_attention_forward(original):
    @functools.wraps(original)
    def forward(self, x, seq_lens, grid_sizes, freqs, *args, **kwargs):
        token = _context.set({"grid_sizes": grid_sizes, "seq_lens": seq_lens,
                              "layer": getattr(self, "_vmonarch_layer", None)})
        try:
            return original(self, x, seq_lens, grid_sizes, freqs, *args, **kwargs)
        finally:
            _context.reset(token)

    return forward


def _model_forward(schedule: VMonarchSchedule, original):
    @functools.wraps(original)
    def forward(self, x, t, *args, **kwargs):
        schedule.observe_timestep(t)
        return original(self, x, t, *args, **kwargs)

    return forward


def install(model: Optional[torch.nn.Module] = None, module=None, schedule: Optional[VMonarchSchedule] = None,
            **options) -> VMonarchSchedule:
    """Patch wan.modules.model (or `module`, a module with the same names) to use VMonarch in self-attention.

    model: the WanModel; when given, its blocks' self-attention gets layer indices for dense_layers.
    options: see vmonarch.wan.VMonarchSchedule (iterations, clamp, recompute_first_frame, dense_steps,
    dense_layers, attention_fn). Returns the schedule. Installing again replaces the previous one.
    """
    if module is None:
        module = importlib.import_module("wan.modules.model")
    if schedule is None:
        schedule = VMonarchSchedule(**options)
    elif options:
        raise TypeError("vmonarch.wan_original.install: pass either a schedule or options, not both")
    if model is not None and hasattr(model, "blocks"):
        schedule.check_layers("vmonarch.wan_original.install", len(model.blocks))
    uninstall(module)
    originals = {"flash_attention": module.flash_attention,
                 "WanSelfAttention.forward": module.WanSelfAttention.forward}
    module.flash_attention = _vmonarch_flash_attention(schedule, originals["flash_attention"])
    module.WanSelfAttention.forward = _self_attention_forward(originals["WanSelfAttention.forward"])
    if hasattr(module, "WanModel"):
        originals["WanModel.forward"] = module.WanModel.forward
        module.WanModel.forward = _model_forward(schedule, originals["WanModel.forward"])
    if model is not None:
        for index, block in enumerate(getattr(model, "blocks", [])):
            block.self_attn._vmonarch_layer = index
    _installed[module] = (originals, schedule)
    return schedule


def uninstall(module=None) -> None:
    """Undo install() on wan.modules.model (or `module`)."""
    if module is None:
        if not _installed:
            return
        for m in list(_installed):
            uninstall(m)
        return
    entry = _installed.pop(module, None)
    if entry is None:
        return
    originals, _ = entry
    module.flash_attention = originals["flash_attention"]
    module.WanSelfAttention.forward = originals["WanSelfAttention.forward"]
    if "WanModel.forward" in originals:
        module.WanModel.forward = originals["WanModel.forward"]
