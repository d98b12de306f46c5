"""bench/wan_block_train.py on the CPU (tiny grid, --tiny-block): every mode runs, and the activations a Wan
block keeps for its backward differ between vmonarch's lean and saved modes by exactly one saved state of the
library (the block's self-attention), while the lean mode keeps no more than the stock block does plus O(N).

Sizes only; the times only have to be positive (no timing assertions)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("diffusers")

from conftest import REPO_ROOT  # noqa: E402

SCRIPT = str(REPO_ROOT / "bench" / "wan_block_train.py")


def test_wan_block_train_cpu_quick(tmp_path):
    out = tmp_path / "block.json"
    args = ["--device", "cpu", "--quick", "--tiny-block", "--reps", "1", "--warmup", "0", "--json", str(out)]
    proc = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=600,
                          cwd=str(REPO_ROOT))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    rows = {r["mode"]: r for r in data["rows"]}
    assert set(rows) == {"stock (SDPA default)", "vmonarch lean", "vmonarch saved", "vmonarch lean exact-grad"}
    for r in rows.values():
        assert "skipped" not in r, r
        assert r["step_ms"] > 0 and r["fwd_ms"] > 0 and r["self_attention_ms"] > 0
    T, H, W = data["rows"][0]["grid"]
    heads, d = data["config"]["num_heads"], data["config"]["dim"] // data["config"]["num_heads"]
    rows_bh = heads * T * H * W
    # CPU saved state at t = 2 (include/vmonarch/backward.hpp): 2(d + 2) + (d + 1) + d floats per row + header,
    # in a storage rounded up to 8 bytes.
    state = 128 + rows_bh * (2 * (d + 2) + (d + 1) + d) * 4
    lean, saved = rows["vmonarch lean"]["saved_activations_bytes"], rows["vmonarch saved"]["saved_activations_bytes"]
    assert saved - lean == (state + 7) // 8 * 8
    stock = rows["stock (SDPA default)"]["saved_activations_bytes"]
    assert lean <= stock + 4 * 4 * rows_bh, (lean, stock)
