"""bench/exact_groups_quality.py --tiny on the CPU: every row runs, the errors are the pooled relative L2
errors of the op against dense attention recomputed here, the markdown holds the JSON's numbers.

Skipped unless a `vmonarch` CLI binary is found (it generates the inputs): $VMONARCH_CLI, then build*/vmonarch.
"""
from __future__ import annotations

import glob
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import vmonarch
from conftest import REPO_ROOT

SCRIPT = str(REPO_ROOT / "bench" / "exact_groups_quality.py")


def _find_cli():
    candidates = [os.environ.get("VMONARCH_CLI")]
    candidates += sorted(glob.glob(str(REPO_ROOT / "build*" / "vmonarch")), key=os.path.getmtime, reverse=True)
    return next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


CLI = _find_cli()
pytestmark = pytest.mark.skipif(CLI is None, reason="no vmonarch CLI binary built (set VMONARCH_CLI)")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quality")
    out, md = folder / "q.json", folder / "q.md"
    proc = subprocess.run([sys.executable, SCRIPT, "--tiny", "--json", str(out), "--md", str(md), "--cli", CLI],
                          capture_output=True, text=True, timeout=900, cwd=str(REPO_ROOT))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()), md.read_text()


def test_rows_and_settings(tiny):
    data, _ = tiny
    assert data["kinds"] == ["positional", "semantic", "sink", "mixed"]
    video = [r for r in data["rows"] if r["part"] == "video" and r["what"] == "vmonarch"]
    assert [(r["iterations"], r["sink_frames"], r["window_radius"]) for r in video] == [
        (t, s, r) for t in (1, 2) for s in (0, 1) for r in (None, 1)]
    joint = [r for r in data["rows"] if r["part"] == "joint" and r["what"] == "vmonarch"]
    assert [(r["iterations"], r["sink_frames"]) for r in joint] == [(2, 0), (1, 1)]
    for r in data["rows"]:
        assert r["status"] == "ok", r
        assert r["ms"] > 0
        assert r["flops"] > 0
    # The text tokens get a real share of the video rows' attention, not a negligible one.
    assert 0.05 < data["text_mass_share"] < 0.5


def test_errors_match_a_recomputation(tiny, tmp_path):
    # Regenerate the inputs, run the op at S = 1, r = 1, t = 1 and dense attention here, and compare.
    data, _ = tiny
    T, H, W = data["grid"]
    paths = [str(tmp_path / f"{n}.npy") for n in "qkv"]
    subprocess.run([CLI, "make-inputs", "--q", paths[0], "--k", paths[1], "--v", paths[2], "--grid", f"{T},{H},{W}",
                    "--heads", str(data["heads"]), "--head-dim", str(data["head_dim"]), "--seed", "0"],
                   check=True, capture_output=True)
    q, k, v = (torch.from_numpy(np.load(p)) for p in paths)
    out = vmonarch.attention(q, k, v, (T, H, W), layout="bhsd", iterations=1, sink_frames=1, window_radius=1)
    qd, kd, vd = (x.double() for x in (q, k, v))
    ref = torch.softmax(qd @ kd.transpose(-1, -2) * qd.shape[-1] ** -0.5, -1) @ vd
    err = ((out.double() - ref).pow(2).sum(dim=(2, 3)) / ref.pow(2).sum(dim=(2, 3))).sqrt()[0]
    row = next(r for r in data["rows"] if r["part"] == "video" and r["what"] == "vmonarch"
               and (r["iterations"], r["sink_frames"], r["window_radius"]) == (1, 1, 1))
    assert row["per_head"] == pytest.approx(err.tolist(), rel=1e-6)
    assert row["errors"]["sink"] == pytest.approx(float(err[2]), rel=1e-6)
    all_pooled = math.sqrt(float((out.double() - ref).pow(2).sum() / ref.pow(2).sum()))
    assert row["errors"]["all"] == pytest.approx(all_pooled, rel=1e-6)
    # Exact groups only remove error on these inputs: each setting with a window beats the same without.
    by = {(r["iterations"], r["sink_frames"], r["window_radius"]): r for r in data["rows"]
          if r["part"] == "video" and r["what"] == "vmonarch"}
    for t in (1, 2):
        for s in (0, 1):
            assert by[(t, s, 1)]["errors"]["all"] < by[(t, s, None)]["errors"]["all"]
    dense = next(r for r in data["rows"] if r["part"] == "video" and r["what"] == "dense")
    assert dense["errors"]["all"] < 1e-5    # float32 SDPA against the float64 reference


def test_markdown_holds_the_numbers(tiny):
    data, md = tiny
    assert "| t | S | r | positional | semantic | sink | mixed | all | FLOPs | vs dense | time (ms) |" in md
    paper = next(r for r in data["rows"] if r["part"] == "video" and r["what"] == "vmonarch"
                 and (r["iterations"], r["sink_frames"], r["window_radius"]) == (2, 0, None))
    line = next(x for x in md.splitlines() if "(paper, default)" in x)
    assert f"{paper['errors']['sink']:.3f}" in line and f"{paper['flops']:.3g}" in line
    assert "Joint sequence" in md and "Lowest overall error" in md


def test_missing_cli_is_reported(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, "--tiny", "--json", str(tmp_path / "q.json"), "--cli",
                           str(tmp_path / "nope")], capture_output=True, text=True, timeout=300, cwd=str(REPO_ROOT))
    assert proc.returncode == 1 and "no executable vmonarch CLI binary" in proc.stderr
    assert not (tmp_path / "q.json").exists()


def test_sink_head_study(tmp_path):
    # The study's claims at a small shape: our op equals the reference (float64) on every head kind, the
    # sink head holds more of frame 0's mass than the others, and lifting its frame-0 keys reaches each
    # share asked for while S = 1 gains more the stronger the sink.
    out = tmp_path / "study.json"
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "sink_head_study.py"), "--cli", CLI, "--grid",
                           "4,6,8", "--heads", "4", "--head-dim", "64", "--shares", "0.5,0.9,0.99", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=str(REPO_ROOT))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    heads = {h["kind"]: h for h in data["heads"]}
    for h in data["heads"]:
        for s in ("s0", "s1"):
            assert h[s]["ours"] == pytest.approx(h[s]["reference"], rel=1e-10)
            assert h[s]["ours_vs_reference"] < 1e-10
    assert heads["sink"]["frame0_share"] > max(heads[k]["frame0_share"] for k in ("positional", "semantic", "mixed"))
    sweep = data["sweep"]
    assert [x["share"] for x in sweep] == pytest.approx([0.5, 0.9, 0.99], abs=1e-6)
    gains = [x["s0"] / x["s1"] for x in sweep]
    assert gains == sorted(gains) and gains[-1] > 10
