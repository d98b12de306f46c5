"""Shared fixtures of the Python tests: the executable reference, input generators, tolerances.

The reference (shared/reference/vmonarch_ref.py) is looked up at ../shared/reference relative to the
repository root (where CI places shared/), then at shared/reference inside the checkout, or at
$VMONARCH_REFERENCE_DIR.
"""
from __future__ import annotations

import importlib.util
import math
import os
import pathlib

import pytest
import torch

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _reference_dir() -> pathlib.Path:
    candidates = []
    if os.environ.get("VMONARCH_REFERENCE_DIR"):
        candidates.append(pathlib.Path(os.environ["VMONARCH_REFERENCE_DIR"]))
    candidates += [REPO_ROOT.parent / "shared" / "reference", REPO_ROOT / "shared" / "reference"]
    for c in candidates:
        if (c / "vmonarch_ref.py").is_file():
            return c
    raise FileNotFoundError("vmonarch_ref.py not found in any of: " + ", ".join(map(str, candidates)))


def load_reference():
    path = _reference_dir() / "vmonarch_ref.py"
    spec = importlib.util.spec_from_file_location("vmonarch_ref", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def ref():
    return load_reference()


def to_bhsd(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x if layout == "bhsd" else x.transpose(1, 2)


def from_bhsd(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x if layout == "bhsd" else x.transpose(1, 2)


def make_qkv(kind: str, B: int, heads: int, grid, d: int, layout: str, dtype=torch.float64, device="cpu",
             dv: int | None = None, seed: int = 0):
    """q, k, v in `layout`. kind: 'random' (i.i.d. normal) or 'video' (smooth in time and space, like a
    real latent: a static scene plus slow motion and noise, with peaky attention)."""
    T, H, W = grid
    N = T * H * W
    dv = d if dv is None else dv
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        q, k = (torch.randn(B, heads, N, d, generator=g, dtype=torch.float64) for _ in range(2))
        v = torch.randn(B, heads, N, dv, generator=g, dtype=torch.float64)
    elif kind == "video":
        def field(width):
            scene = torch.randn(B, heads, 1, H, W, width, generator=g, dtype=torch.float64)
            # spatial smoothing: average with the right and lower neighbours
            scene = (scene + scene.roll(1, 3) + scene.roll(1, 4)) / 3
            drift = torch.randn(B, heads, 1, 1, 1, width, generator=g, dtype=torch.float64)
            t = torch.arange(T, dtype=torch.float64).view(1, 1, T, 1, 1, 1)
            noise = 0.2 * torch.randn(B, heads, T, H, W, width, generator=g, dtype=torch.float64)
            return (scene + 0.3 * t * drift / max(T, 1) + noise).reshape(B, heads, N, width)
        q, k = 2.5 * field(d), 2.5 * field(d)
        v = field(dv)
    else:
        raise ValueError(kind)
    q, k, v = (from_bhsd(x, layout).contiguous().to(dtype=dtype, device=device) for x in (q, k, v))
    return q, k, v


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def reference_attention(ref, q, k, v, grid, layout, iterations=2, clamp=0.1, recompute=True, scale=None,
                        return_lse=True):
    """The executable spec on float64 copies of q, k, v; outputs in `layout` (lse [B, heads, N])."""
    qb, kb, vb = (to_bhsd(x, layout).detach().double().cpu() for x in (q, k, v))
    d = qb.shape[-1]
    if scale is not None:  # the spec's scale enters only through q·k products: fold it into q
        qb = qb * (scale / d ** -0.5)
    out, lse = ref.vmonarch_reference(qb, kb, vb, frames=grid[0], t=iterations, clamp=clamp,
                                      recompute_first_frame=recompute, return_lse=True)
    out = from_bhsd(out, layout)
    return (out, lse) if return_lse else out


def dense_reference(q, k, v, layout, scale=None):
    qb, kb, vb = (to_bhsd(x, layout).detach().double().cpu() for x in (q, k, v))
    s = qb.shape[-1] ** -0.5 if scale is None else scale
    logits = qb @ kb.transpose(-1, -2) * s
    return from_bhsd(torch.softmax(logits, -1) @ vb, layout), torch.logsumexp(logits, -1)


# Relative L2 bounds against the float64 reference, per dtype.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 1e-2}


def has_cuda_kernels() -> bool:
    import vmonarch
    return torch.cuda.is_available() and vmonarch.cuda_built()


requires_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (run scripts/gpu_python_suite.sh on a GPU machine)")

__all__ = ["make_qkv", "rel_l2", "reference_attention", "dense_reference", "TOLERANCE", "requires_cuda",
           "load_reference", "math"]
