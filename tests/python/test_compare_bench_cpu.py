"""bench/compare_bench.py (the A/B table of scripts/gpu_ab.sh) on hand-written JSON files in the three C++
benches' format (bench/bench_json.hpp): medians per row over several runs, the change in percent, the
tolerance mark, rows keyed by "shape" (vmonarch_bench, backward_plan_bench) or "case"
(exact_groups_cuda_bench) and told apart by "schedule"."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO_ROOT

SCRIPT = str(REPO_ROOT / "bench" / "compare_bench.py")


def _write(path, rows, card="NVIDIA H200"):
    path.write_text(json.dumps({"card": card, "date": "2026-12-01 00:00 UTC", "reps": 5, "rows": rows}))
    return str(path)


def _table(stdout):
    """{(shape, row): change in percent} from the markdown table."""
    out = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[4].endswith(("%", "**over**")) and cells[0] != "shape":
            out[(cells[0], cells[1])] = float(cells[4].split("%")[0])
    return out


def _run(before, after, *extra):
    proc = subprocess.run([sys.executable, SCRIPT, "--before", *before, "--after", *after, *extra],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_medians_changes_and_marks(tmp_path):
    rows = lambda ms: [{"shape": "24x44x80x40h", "what": "vmonarch", "ms": ms[0]},  # noqa: E731
                       {"shape": "24x44x80x40h", "what": "device copy", "ms": 1.0},
                       {"shape": "16x28x52x12h", "what": "vmonarch", "ms": ms[1]}]
    before = [_write(tmp_path / f"b{i}.json", rows(ms)) for i, ms in enumerate([(10.0, 2.0), (12.0, 2.0), (11.0, 2.0)])]
    after = [_write(tmp_path / f"a{i}.json", rows(ms)) for i, ms in enumerate([(9.9, 2.1), (9.0, 2.2), (99.0, 2.1)])]
    out = _run(before, after)
    table = _table(out)
    # medians: before 11.0 / 2.0, after 9.9 / 2.1 (the outlier 99.0 does not move the median)
    assert abs(table[("24x44x80x40h", "vmonarch")] - (-10.0)) < 0.06
    assert abs(table[("16x28x52x12h", "vmonarch")] - 5.0) < 0.06
    assert ("24x44x80x40h", "device copy") not in table
    assert "NVIDIA H200" in out and "median of 3 run(s) before, 3 after" in out
    marked = [line for line in out.splitlines() if "**over**" in line]
    assert len(marked) == 1 and "16x28x52x12h" in marked[0]
    assert "slowest change: +5.0%" in out
    assert "**over**" not in _run(before, after, "--tolerance", "6")


def test_case_and_schedule_keys(tmp_path):
    def rows(a, b):
        return [{"case": "cogvideox", "what": "forward", "schedule": "beside", "ms": a},
                {"case": "cogvideox", "what": "forward", "schedule": "serial", "ms": b}]

    out = _run([_write(tmp_path / "b.json", rows(3.5, 3.8))], [_write(tmp_path / "a.json", rows(3.15, 3.8))])
    table = _table(out)
    assert abs(table[("cogvideox", "forward [beside]")] - (-10.0)) < 0.06
    assert table[("cogvideox", "forward [serial]")] == 0.0
