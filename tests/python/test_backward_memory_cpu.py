"""What the VMonarch forward keeps for its backward (spec §7), counted by bench/backward_memory.py on the CPU:
the lean mode keeps no more than FlashAttention (q, k, v, O and a float32 LSE per row) plus O(N) floats, the
saved mode exactly that plus the library's saved state, and the count sees every saved tensor (torch's own
SDPA backward keeps at least the FlashAttention set).

Properties of sizes only; no timing.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "bench" / "backward_memory.py"
# Slack of the lean-mode claim: c floats per row (per token per head) beyond FlashAttention's set.
C_FLOATS_PER_ROW = 2


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("backward_memory", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Awkward shapes: T = 1, odd T, prime HW (7 = 7x1), HW not a multiple of a tile, d 64 and 128, several heads.
SHAPES = [((1, 5, 7), 2, 64), ((3, 7, 1), 3, 128), ((5, 4, 3), 1, 128), ((2, 3, 11), 4, 64)]


@pytest.mark.parametrize("grid,heads,d", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_saved_bytes_lean_within_flash_set_plus_o_n(bench, grid, heads, d, dtype):
    rows = {r["name"]: r for r in bench.measure_shape(grid, heads, d, dtype, torch.device("cpu"))}
    assert not [r for r in rows.values() if "skipped" in r], rows
    tokens = grid[0] * grid[1] * grid[2]
    per_row = heads * tokens
    elem = torch.empty((), dtype=dtype).element_size()
    fa_set = per_row * 4 * d * elem + per_row * 4
    assert rows["vmonarch lean"]["fa_set_bytes"] == fa_set
    for name in ("vmonarch lean", "vmonarch lean exact-grad"):
        saved = rows[name]["saved_bytes"]
        assert saved >= 4 * per_row * d * elem, (name, saved)          # q, k, v and O at least
        assert saved <= fa_set + C_FLOATS_PER_ROW * 4 * per_row, (name, saved, fa_set)
    # torch's CPU flash backward keeps at least q, k, v, O and its LSE: the hooks see every saved tensor.
    assert rows["sdpa flash"]["saved_bytes"] >= fa_set


@pytest.mark.parametrize("grid,heads,d", SHAPES)
def test_saved_mode_keeps_exactly_the_library_state(bench, grid, heads, d):
    rows = {r["name"]: r for r in bench.measure_shape(grid, heads, d, torch.bfloat16, torch.device("cpu"))}
    lean, saved = rows["vmonarch lean"], rows["vmonarch saved"]
    state = saved["formula_saved_state_bytes"]
    # CPU layout (include/vmonarch/backward.hpp): t·(d + 2) + (t − 1)·(d + 1) + dv floats per token per head
    # at t = 2, float32, plus a 128-byte header; the op's storage is rounded up to 8 bytes.
    want = 128 + heads * grid[0] * grid[1] * grid[2] * (2 * (d + 2) + (d + 1) + d) * 4
    assert state == want
    assert saved["saved_bytes"] - lean["saved_bytes"] == (state + 7) // 8 * 8
    lse = heads * grid[0] * grid[1] * grid[2] * 4
    assert lean["saved_extra_bytes"] == lse                       # beyond q, k, v and O: the LSE only
    assert saved["saved_extra_bytes"] == (state + 7) // 8 * 8 + lse


def test_cuda_formulas_match_the_documented_sizes(bench):
    # backward.hpp: 1044 bytes per token per head at d = dv = 128, t = 2, bf16 (+ 256-byte padding per region
    # and the 128-byte header); 16x28x52x12h has rows divisible by 64, so the regions need no padding.
    rows = 16 * 28 * 52 * 12
    assert bench.saved_state_formula((1, 16 * 28 * 52, 12, 128), torch.bfloat16, "cuda") == 128 + 1044 * rows
    lean = bench.cuda_workspace_formula(rows, 128, 128, lean=True)
    saved = bench.cuda_workspace_formula(rows, 128, 128, lean=False)
    assert lean - saved == 1044 * rows   # lean mode: the rerun forward's state lives in the workspace
    exact = bench.cuda_workspace_formula(rows, 128, 128, lean=True, entropy_grad=True)
    assert exact - lean == 4 * rows      # dcL, one float per row
    # The concurrent schedule: the frame-0 recompute's own f32 dq (frame 0's rows), dk and dv.
    concurrent = bench.cuda_workspace_formula(rows, 128, 128, lean=True, frames=16, concurrent=True)
    serial = bench.cuda_workspace_formula(rows, 128, 128, lean=True, frames=16)
    assert concurrent - serial == (rows // 16) * 128 * 4 + 2 * rows * 128 * 4
    assert bench.cuda_workspace_formula(rows, 128, 128, lean=True, recompute=False, frames=16, concurrent=True) == \
        bench.cuda_workspace_formula(rows, 128, 128, lean=True, recompute=False, frames=16)


def test_script_cpu_quick_writes_every_row(tmp_path):
    out = tmp_path / "memory.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=str(REPO_ROOT))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    names = {r["name"] for r in data["rows"]}
    assert names == {"vmonarch lean", "vmonarch saved", "vmonarch lean exact-grad", "sdpa flash"}
    assert all("skipped" not in r and r["saved_bytes"] > 0 for r in data["rows"])
    assert "vmonarch saved" in proc.stdout


@pytest.mark.parametrize("exact", [False, True])
def test_backward_makes_no_zero_gradient_of_the_saved_state(exact):
    # The saved state is a non-differentiable uint8 output of the training op; autograd must not materialize a
    # zero-filled "gradient" of it (its whole size) for the backward. Every uint8 tensor an aten op creates
    # during the backward is recorded.
    from torch.utils._python_dispatch import TorchDispatchMode

    import vmonarch

    class ByteTensors(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.made = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for o in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(o, torch.Tensor) and o.dtype == torch.uint8:
                    self.made.append((str(func), o.numel()))
            return out

    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 3 * 4 * 5, 2, 64, generator=gen).requires_grad_(True) for _ in range(3))
    extra = {"sink_frames": 1} if exact else {}
    out, lse = vmonarch.attention(q, k, v, grid=(3, 4, 5), layout="bshd", save_state=True, return_lse=True, **extra)
    with ByteTensors() as seen:
        (out.sum() + 0.1 * lse.sum()).backward()
    assert seen.made == []
    assert all(torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0 for t in (q, k, v))
