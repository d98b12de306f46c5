"""The training benches (bench/backward_bench.py, bench/wan_block_train.py, bench/backward_memory.py) and
bench/ulysses_head_split.py check their --json / --md output paths before any work, as the other benches do: a
folder that does not exist, a folder given as the file, or one file named by both options ends the run at once
with status 2 and a message naming the option, and nothing is written."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO_ROOT

BENCHES = ["backward_bench.py", "wan_block_train.py", "backward_memory.py", "ulysses_head_split.py"]
# Arguments that would otherwise start the real (CUDA) run: the path checks come before any device work.
RUN = {"backward_bench.py": ["--quick"], "wan_block_train.py": ["--device", "cpu", "--quick", "--tiny-block"],
       "backward_memory.py": ["--device", "cpu", "--quick"],
       "ulysses_head_split.py": ["--device", "cpu", "--reps", "2"]}


def run(script, *args):
    return subprocess.run([sys.executable, str(REPO_ROOT / "bench" / script), *RUN[script], *args],
                          capture_output=True, text=True, timeout=300, cwd=str(REPO_ROOT))


@pytest.mark.parametrize("script", BENCHES)
def test_missing_folder_is_refused_up_front(script, tmp_path):
    path = tmp_path / "no-such-folder" / "rows.json"
    proc = run(script, "--json", str(path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"--json is '{path}', whose folder" in proc.stderr and "does not exist" in proc.stderr
    assert proc.stdout == ""  # not a single measurement started


@pytest.mark.parametrize("script", BENCHES)
def test_folder_as_output_is_refused(script, tmp_path):
    proc = run(script, "--json", str(tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "a directory; expected a file path" in proc.stderr


@pytest.mark.parametrize("script", ["wan_block_train.py", "backward_memory.py"])
def test_json_and_md_naming_one_file_is_refused(script, tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("kept\n")
    proc = run(script, "--json", str(path), "--md", str(tmp_path / "." / "out.txt"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--md is" in proc.stderr and "the file --json also names" in proc.stderr
    assert path.read_text() == "kept\n"


@pytest.mark.parametrize("cases", ["", "plain,joint", "exact,"])
def test_backward_bench_unknown_case_is_refused(cases, tmp_path):
    if cases == "exact,":  # a trailing comma is allowed; a bad output path then stops it before CUDA work
        proc = run("backward_bench.py", "--cases", cases, "--json", str(tmp_path))
        assert proc.returncode == 2 and "a directory; expected a file path" in proc.stderr, proc.stderr
        return
    proc = run("backward_bench.py", "--cases", cases)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"--cases is {cases!r}, expected a comma-separated list of plain, exact" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("variants", ["", "saved,fast", "lean;saved"])
def test_backward_bench_unknown_variant_is_refused(variants):
    proc = run("backward_bench.py", "--variants", variants)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (f"--variants is {variants!r}, expected a comma-separated list of lean, lean-exact, saved, saved-exact, "
            "deterministic") in proc.stderr
    assert proc.stdout == ""


def test_head_split_bench_rows_on_cpu(tmp_path):
    """The head-split bench's tiny CPU run: one row per world size, the ideal efficiency the head-count model's,
    the measured one a positive ratio of timings."""
    import json

    path = tmp_path / "split.json"
    proc = run("ulysses_head_split.py", "--json", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(path.read_text())["rows"]
    assert [r["world"] for r in rows] == [4, 5]
    for r in rows:
        assert r["most_heads"] == -(-r["heads"] // r["world"])
        assert r["ideal"] == r["heads"] / (r["world"] * r["most_heads"])
        assert 0 < r["measured"] <= 2 and r["t_rank_ms"] > 0
