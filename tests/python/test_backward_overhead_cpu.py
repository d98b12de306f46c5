"""bench/backward_overhead.py --cpu: the host's part of the backward on a tiny CPU problem runs without a GPU and
writes its row whole; bad arguments and output paths end the run with status 2 before any work."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO_ROOT

SCRIPT = str(REPO_ROOT / "bench" / "backward_overhead.py")


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=300,
                          cwd=str(REPO_ROOT))


def test_cpu_row_is_written(tmp_path):
    path = tmp_path / "overhead.json"
    proc = run("--cpu", "--reps", "30", "--json", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(path.read_text())
    assert data["device"] == "cpu" and data["reps"] == 30
    (row,) = data["rows"]
    for key in ("op_us", "autograd_us", "trivial_function_us"):
        assert row[key] > 0.0, row
    assert "autograd" in proc.stdout and "op" in proc.stdout


def test_bad_reps_and_paths_are_refused(tmp_path):
    proc = run("--cpu", "--reps", "0")
    assert proc.returncode == 2 and "--reps is 0, expected >= 1" in proc.stderr
    missing = tmp_path / "no-such-folder" / "rows.json"
    proc = run("--cpu", "--json", str(missing))
    assert proc.returncode == 2 and "--json" in proc.stderr and proc.stdout == ""
    assert not missing.parent.exists()
