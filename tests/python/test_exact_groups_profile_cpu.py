"""bench/exact_groups_profile.py without a GPU: bad arguments are named (exit 2), and a valid call says that it
needs a CUDA device (exit 1) and writes no output file. The profile itself runs on the GPU machine only."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT

SCRIPT = str(REPO_ROOT / "bench" / "exact_groups_profile.py")


def _run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=120,
                          cwd=str(REPO_ROOT))


@pytest.mark.parametrize("args, named", [(["--grid", "13,30"], "--grid"), (["--grid", "13,0,45"], "--grid"),
                                         (["--reps", "0"], "--reps"), (["--d", "96"], "--d")])
def test_bad_arguments_are_named(tmp_path, args, named):
    proc = _run("--out", str(tmp_path / "p.json"), *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert named in proc.stderr
    assert not (tmp_path / "p.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the profile would run")
def test_without_cuda_it_says_so_and_writes_nothing(tmp_path):
    proc = _run("--out", str(tmp_path / "p.json"), "--reps", "1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "needs a CUDA device" in proc.stderr
    assert not (tmp_path / "p.json").exists()
