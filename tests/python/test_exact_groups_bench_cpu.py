"""bench/exact_groups_bench.py --tiny on the CPU: every row runs, the JSON holds what the table prints (FLOPs
from vmonarch.flops, the ratios of the targets from the rows' times), bad arguments are named.

No timing assertions: the times only have to be positive.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import vmonarch
from conftest import REPO_ROOT

SCRIPT = str(REPO_ROOT / "bench" / "exact_groups_bench.py")


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=str(REPO_ROOT))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tiny.json"
    proc = _run("--tiny", "--out", str(out), "--reps", "2", "--rounds", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()), proc.stdout


def test_every_row_runs(tiny):
    data, _ = tiny
    rows = data["rows"]
    assert data["tiny"] is True and data["environment"]["device"] == "cpu"
    assert {r["case"] for r in rows} == {"video", "hunyuan", "cogvideox"}
    for r in rows:
        assert r["status"] == "ok", r
        assert r["ms"] > 0 and r["finite"] is True
    whats = [r["what"] for r in rows if r["case"] == "video"]
    assert whats == ["sdpa", "vmonarch t=2 S=0", "vmonarch t=1 S=1", "vmonarch t=2 S=1", "vmonarch t=2 S=1 r=1"]
    # The masked joint case has the masked SDPA row and the unmasked one; CogVideoX masks nothing.
    assert [r["what"] for r in rows if r["case"] == "hunyuan"][:2] == ["sdpa (key-padding mask)", "sdpa (no mask)"]
    assert [r["what"] for r in rows if r["case"] == "cogvideox"][0] == "sdpa"


def test_rows_are_timed_in_rounds(tiny):
    # Every timed row has one median per round; the row's time, the median of all its calls, lies between
    # the rounds' medians.
    data, stdout = tiny
    assert data["rounds"] == 2 and data["reps"] == 2
    for r in data["rows"]:
        assert len(r["round_ms"]) == 2 and all(t > 0 for t in r["round_ms"])
        assert min(r["round_ms"]) * (1 - 1e-9) <= r["ms"] <= max(r["round_ms"]) * (1 + 1e-9)
    assert "rounds: " in stdout


def test_flops_come_from_vmonarch_flops(tiny):
    data, _ = tiny
    for r in data["rows"]:
        T, H, W = map(int, r["shape"].split("x"))
        joint = r["text_len"] > 0
        if r["what"].startswith("sdpa"):
            expected = vmonarch.flops((T, H, W), r["d"], r["heads"], text_len=r["text_len"], joint=joint).dense
            assert expected == 4 * (T * H * W + r["text_len"]) ** 2 * r["d"] * r["heads"]
        else:
            expected = vmonarch.flops((T, H, W), r["d"], r["heads"], iterations=r["iterations"],
                                      sink_frames=r["sink_frames"], window_radius=r["window_radius"],
                                      text_len=r["text_len"], joint=joint).vmonarch
        assert r["flops"] == pytest.approx(expected, rel=1e-12)


def test_outputs_agree_with_sdpa(tiny):
    # Every output is finite and nearer to SDPA than the trivial bound. In the tiny video case (T = 3) the
    # setting S = 1, r = 1 makes every key frame exact for every query frame (frame 0 through the sink,
    # frames 1 and 2 through the window), so that row is dense attention up to bf16 rounding.
    data, _ = tiny
    by = {(r["case"], r["what"]): r for r in data["rows"]}
    for r in data["rows"]:
        if not r["what"].startswith("sdpa"):
            assert 0 <= r["rel_l2_vs_sdpa"] < 1
    assert by[("video", "vmonarch t=2 S=1 r=1")]["rel_l2_vs_sdpa"] < 0.02
    assert by[("video", "vmonarch t=2 S=0")]["rel_l2_vs_sdpa"] > 0.05


def test_targets_are_ratios_of_the_rows(tiny):
    data, stdout = tiny
    by = {(r["case"], r["what"]): r for r in data["rows"]}
    goals = {g["target"]: g for g in data["targets"]}
    assert len(goals) == 5
    base = by[("video", "vmonarch t=2 S=0")]["ms"]
    g = goals["t=2,S=1,r=1 time / t=2,S=0 time"]
    assert g["value"] == pytest.approx(by[("video", "vmonarch t=2 S=1 r=1")]["ms"] / base)
    assert g["limit"] == 2.2 and g["met"] == (g["value"] <= 2.2)
    # No cuDNN on the CPU: the speedup targets are reported as not measured, not as met or missed.
    for name in ("HunyuanVideo joint speedup vs cuDNN (t=2,S=0)", "CogVideoX joint speedup vs cuDNN (t=2,S=0)"):
        assert goals[name]["value"] is None and goals[name]["met"] is None
    assert "not measured" in stdout and "tiny shapes" in stdout


@pytest.mark.parametrize("args,needle", [
    (["--reps", "0"], "--reps is 0, expected an int >= 1"),
    (["--rounds", "0"], "--rounds is 0, expected an int >= 1"),
    (["--warmup", "x"], "--warmup is 'x', expected an int >= 0"),
    (["--cases", "video,wan"], "--cases is 'video,wan'"),
    (["--device", "tpu"], "--device is 'tpu'"),
])
def test_bad_arguments_are_named(tmp_path, args, needle):
    out = tmp_path / "x.json"
    proc = _run("--tiny", "--out", str(out), *args, timeout=120)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert not out.exists()


def test_out_must_be_a_file_in_an_existing_folder(tmp_path):
    proc = _run("--tiny", "--out", str(tmp_path / "missing" / "x.json"), timeout=120)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = _run("--tiny", "--out", str(tmp_path), timeout=120)
    assert proc.returncode == 2 and "a directory" in proc.stderr
