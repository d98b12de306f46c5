"""The Python operator and the C++ CLI (`vmonarch run`) give the same answer on the same .npy inputs.

Skipped unless a `vmonarch` binary is found: $VMONARCH_CLI, then build*/vmonarch under the repository
root (the CMake build puts the CLI at the top of its build directory), then `vmonarch` on the PATH.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

import vmonarch
from conftest import REPO_ROOT, make_qkv, rel_l2


def _find_cli():
    candidates = []
    if os.environ.get("VMONARCH_CLI"):
        candidates.append(os.environ["VMONARCH_CLI"])
    candidates += sorted(glob.glob(str(REPO_ROOT / "build*" / "vmonarch")), key=os.path.getmtime, reverse=True)
    on_path = shutil.which("vmonarch")
    if on_path:
        candidates.append(on_path)
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


CLI = _find_cli()
pytestmark = pytest.mark.skipif(CLI is None, reason="no vmonarch CLI binary built (set VMONARCH_CLI)")


def _run(tmp_path, q, k, v, grid, layout, extra=()):
    paths = {}
    for name, t in (("q", q), ("k", k), ("v", v)):
        paths[name] = str(tmp_path / f"{name}.npy")
        np.save(paths[name], t.numpy())
    out, lse = str(tmp_path / "out.npy"), str(tmp_path / "lse.npy")
    cmd = [CLI, "run", "--q", paths["q"], "--k", paths["k"], "--v", paths["v"], "--grid",
           ",".join(map(str, grid)), "--layout", layout, "--device", "cpu", "--out", out, "--lse", lse, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    return torch.from_numpy(np.load(out)), torch.from_numpy(np.load(lse))


@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("grid,iterations,recompute", [((3, 2, 5), 2, True), ((1, 3, 5), 2, True),
                                                      ((4, 1, 7), 1, False), ((5, 2, 3), 3, True)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_operator_matches_cli(tmp_path, layout, grid, iterations, recompute, dtype):
    q, k, v = make_qkv("video", 2, 2, grid, 64, layout, dtype=dtype, seed=sum(grid))
    extra = ["--iterations", str(iterations)] + ([] if recompute else ["--no-recompute"])
    cli_out, cli_lse = _run(tmp_path, q, k, v, grid, layout, extra)
    out, lse = vmonarch.attention(q, k, v, grid, layout=layout, iterations=iterations,
                                  recompute_first_frame=recompute, return_lse=True)
    assert cli_out.shape == out.shape and cli_out.dtype == out.dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert rel_l2(out, cli_out) < tol
    torch.testing.assert_close(lse.double(), cli_lse.double(), rtol=1e-5, atol=1e-5)


def test_dense_matches_cli(tmp_path):
    grid = (2, 2, 3)
    q, k, v = make_qkv("random", 1, 3, grid, 64, "bshd", dtype=torch.float32)
    cli_out, _ = _run(tmp_path, q, k, v, grid, "bshd", ["--dense"])
    assert rel_l2(vmonarch.dense_attention(q, k, v), cli_out) < 1e-6
