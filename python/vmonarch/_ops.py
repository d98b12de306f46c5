"""Loads the compiled operators (torch.ops.vmonarch.*) and registers their fake and autograd rules.

The shared library `_C*.so` next to this file is not a Python extension module: it only registers
operators with torch's dispatcher (TORCH_LIBRARY), so it is loaded with torch.ops.load_library.
"""
from __future__ import annotations

import glob
import json
import os

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))


def _find_library() -> str:
    override = os.environ.get("VMONARCH_TORCH_LIBRARY")
    if override:
        return override
    found = sorted(glob.glob(os.path.join(_HERE, "_C*.so")))
    if not found:
        raise ImportError(
            f"vmonarch: the compiled operator library (_C.so) is missing from {_HERE}; install the package "
            "with `pip install --no-build-isolation .` from the repository root (see the README's PyTorch section)"
        )
    return found[0]


def _check_build_info() -> dict:
    path = os.path.join(_HERE, "_build_info.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        info = json.load(f)
    built = info.get("torch_version", "")
    running = torch.__version__.split("+")[0]
    if built and built.split("+")[0] != running:
        raise ImportError(
            f"vmonarch was built against torch {built} but torch {torch.__version__} is imported; rebuild it "
            "against this torch with `pip install --no-build-isolation --force-reinstall --no-deps .`"
        )
    return info


BUILD_INFO = _check_build_info()
LIBRARY_PATH = _find_library()
try:
    torch.ops.load_library(LIBRARY_PATH)
except OSError as e:  # undefined symbols: built against another torch
    raise ImportError(
        f"vmonarch: could not load {LIBRARY_PATH} into torch {torch.__version__}: {e}. Rebuild against the "
        "installed torch with `pip install --no-build-isolation --force-reinstall --no-deps .`"
    ) from e

ops = torch.ops.vmonarch


# --- shapes shared by the fake (meta) kernels ---------------------------------------------------------
def _axes(layout: str):
    if layout == "bshd":
        return 1, 2
    if layout == "bhsd":
        return 2, 1
    raise ValueError(f"vmonarch: layout is {layout!r}, expected 'bshd' or 'bhsd'")


def _check_grid_entries(fn, grid):
    """The operators' own check of the grid's length (python/csrc/binding_args.hpp: grid_of), same message."""
    if len(grid) != 3:
        raise ValueError(f"{fn}: argument 'grid' is {list(grid)} ({len(grid)} entries), expected 3 entries "
                         "(frames T, height H, width W in tokens)")


def _fake_outputs(fn, q, k, v, layout, return_lse):
    # The dispatcher sends a call here when any input is on `meta`, also when the others are real: a meta
    # tensor among CPU/CUDA ones must raise (the output would be uninitialised memory), like the C++
    # kernels' check of one device for all.
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.device != q.device:
            raise ValueError(f"{fn}: {name} is on {t.device}, expected {q.device} like q "
                             "(q, k and v must be on one device)")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{fn}: {name} has {t.dim()} dimensions, expected 4")
        if t.dtype != q.dtype:
            raise TypeError(f"{fn}: {name} has dtype {t.dtype}, expected {q.dtype} like q")
    if q.dtype not in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        raise TypeError(f"{fn}: dtype {q.dtype} is not supported, expected bfloat16, float16, float32 or float64")
    if q.device.type == "cuda" and q.dtype not in (torch.bfloat16, torch.float16):
        raise TypeError(f"{fn}: the CUDA kernels take bfloat16 or float16, got {q.dtype}")
    tok, hd = _axes(layout)
    B, N, H, dv = q.shape[0], q.shape[tok], q.shape[hd], v.shape[3]
    shape = (B, N, H, dv) if layout == "bshd" else (B, H, N, dv)
    out = q.new_empty(shape)
    lse_dtype = torch.float64 if (q.device.type == "cpu" and q.dtype == torch.float64) else torch.float32
    lse = q.new_empty((B, H, N) if return_lse else (0,), dtype=lse_dtype)
    return out, lse


@torch.library.register_fake("vmonarch::attention")
def _attention_fake(q, k, v, grid, iterations=2, clamp=0.1, recompute_first_frame=True, scale=None,
                    layout="bshd", return_lse=False):
    _check_grid_entries("vmonarch.attention", grid)
    tok, _ = _axes(layout)
    for value in grid:
        torch._check(value >= 1,
                     lambda: f"vmonarch.attention: grid {tuple(grid)} has an entry < 1, expected T, H, W >= 1")
    torch._check(grid[0] * grid[1] * grid[2] == q.shape[tok],
                 lambda: f"vmonarch.attention: grid {tuple(grid)} does not cover q's {q.shape[tok]} tokens")
    return _fake_outputs("vmonarch.attention", q, k, v, layout, return_lse)


@torch.library.register_fake("vmonarch::dense_attention")
def _dense_fake(q, k, v, scale=None, layout="bshd", return_lse=False):
    return _fake_outputs("vmonarch.dense_attention", q, k, v, layout, return_lse)


# --- autograd: dense_attention is forward only; the rules of attention (exact groups and joint too) are in
# _backward.py ---
def _setup_context(ctx, inputs, output):
    pass


def _no_backward(name):
    def backward(ctx, grad_out, grad_lse):
        raise NotImplementedError(
            f"{name} has no backward pass yet: the operator is forward-only (inference). Training or "
            "fine-tuning through it needs the Monarch backward (spec: treat cL as constant), which this "
            "version does not implement; run under torch.no_grad()/torch.inference_mode() or detach the inputs."
        )

    return backward


torch.library.register_autograd("vmonarch::dense_attention", _no_backward("vmonarch.dense_attention"),
                                setup_context=_setup_context)


# --- exact key groups (spec §3b) and joint text+video sequences (spec §3c) -----------------------------
@torch.library.register_fake("vmonarch::attention_exact_groups")
def _attention_exact_fake(q, k, v, grid, iterations=2, clamp=0.1, recompute_first_frame=True, scale=None,
                          layout="bshd", return_lse=False, sink_frames=0, window_radius=None, text_k=None,
                          text_v=None, text_lens=None):
    return _attention_fake(q, k, v, grid, iterations, clamp, recompute_first_frame, scale, layout, return_lse)


@torch.library.register_fake("vmonarch::joint_attention")
def _joint_attention_fake(q, k, v, grid, text_len, text_first=False, text_lens=None, text_mask=None, iterations=2,
                          clamp=0.1, recompute_first_frame=True, scale=None, layout="bshd", return_lse=False,
                          sink_frames=0, window_radius=None):
    _check_grid_entries("vmonarch.joint_attention", grid)
    tok, _ = _axes(layout)
    torch._check(grid[0] * grid[1] * grid[2] + text_len == q.shape[tok],
                 lambda: f"vmonarch.joint_attention: grid {tuple(grid)} plus {text_len} text tokens does not cover "
                         f"q's {q.shape[tok]} tokens")
    return _fake_outputs("vmonarch.joint_attention", q, k, v, layout, return_lse)


from . import _backward  # noqa: E402,F401  (fake kernels and autograd of the backward pass)
