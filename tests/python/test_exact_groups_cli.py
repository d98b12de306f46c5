"""`vmonarch run` / `compare` with --sink-frames, --window-radius and joint sequences (--text-tokens,
--text-position, --text-lens) give what the Python operators give on the same .npy inputs (spec §3b-3c)."""
from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pytest
import torch

import vmonarch
from conftest import make_qkv, rel_l2
from test_cli_cpu import CLI

pytestmark = pytest.mark.skipif(CLI is None, reason="no vmonarch CLI binary built (set VMONARCH_CLI)")


def _save(tmp_path, q, k, v):
    paths = []
    for name, t in (("q", q), ("k", k), ("v", v)):
        paths += [f"--{name}", str(tmp_path / f"{name}.npy")]
        np.save(paths[-1], t.numpy())
    return paths


def _cli(*args):
    proc = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300)
    return proc


@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("text_first,lens", [(True, [5, 2]), (False, None), (False, [0, 5])])
def test_joint_run_matches_operator(tmp_path, layout, text_first, lens):
    grid, L = (3, 2, 3), 5
    tok = 1 if layout == "bshd" else 2
    q, k, v = (torch.cat([a, b], tok) for a, b in zip(make_qkv("video", 2, 2, grid, 64, layout, seed=1),
                                                       make_qkv("random", 2, 2, (1, 1, L), 64, layout, seed=2)))
    out, lse = str(tmp_path / "out.npy"), str(tmp_path / "lse.npy")
    args = ["run", *_save(tmp_path, q, k, v), "--grid", "3,2,3", "--layout", layout, "--device", "cpu", "--out", out,
            "--lse", lse, "--text-tokens", str(L), "--text-position", "first" if text_first else "last",
            "--sink-frames", "1", "--window-radius", "1"]
    if lens is not None:
        args += ["--text-lens", ",".join(map(str, lens))]
    proc = _cli(*args)
    assert proc.returncode == 0, proc.stderr
    want, want_lse = vmonarch.joint_attention(q, k, v, grid, L, text_first=text_first, text_lens=lens, layout=layout,
                                              return_lse=True, sink_frames=1, window_radius=1)
    got = torch.from_numpy(np.load(out))
    assert got.shape == q.shape and rel_l2(got, want) < 1e-12
    torch.testing.assert_close(torch.from_numpy(np.load(lse)).double(), want_lse, rtol=1e-6, atol=1e-6)


def test_compare_dense_reference_and_all_exact_frames(tmp_path):
    grid = (3, 2, 3)
    q, k, v = make_qkv("video", 1, 2, (3, 2, 3), 64, "bhsd", seed=3)
    text = make_qkv("random", 1, 2, (1, 1, 4), 64, "bhsd", seed=4)
    q, k, v = (torch.cat([a, b], 2) for a, b in zip((q, k, v), text))
    common = [*_save(tmp_path, q, k, v), "--grid", "3,2,3", "--device", "cpu", "--text-tokens", "4", "--text-lens",
              "2", "--json"]
    proc = _cli("compare", *common, "--sink-frames", "3")  # S = T: exactly the (masked) dense reference
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["overall"]["rel_l2"] < 1e-12 and report["sink_frames"] == 3 and report["text_tokens"] == 4
    proc = _cli("compare", *common, "--iterations", "1")
    assert proc.returncode == 0, proc.stderr
    assert 1e-6 < json.loads(proc.stdout)["overall"]["rel_l2"] < 1


@pytest.mark.parametrize("args,message", [
    (["--sink-frames", "-1"], "--sink-frames -1: must be >= 0"),
    (["--window-radius", "-2"], "--window-radius -2: must be >= 0"),
    (["--text-tokens", "4", "--text-lens", "1,9"], "entry '9' is not an integer in 0..4"),
    (["--text-tokens", "4", "--text-lens", "1"], "1 entries, expected one per batch element \\(2\\)"),
    (["--text-tokens", "4", "--text-position", "middle"], "--text-position 'middle': expected first or last"),
    (["--text-lens", "1,1"], "--text-lens needs --text-tokens"),
    (["--text-tokens", "3"], "\\+ --text-tokens 3 = 21"),
])
def test_cli_argument_errors(tmp_path, args, message):
    grid = (3, 2, 3)
    q, k, v = make_qkv("random", 2, 1, (1, 1, 22), 16, "bhsd", seed=5)
    proc = _cli("run", *_save(tmp_path, q, k, v), "--grid", "3,2,3", "--device", "cpu", "--out",
                str(tmp_path / "o.npy"), *args)
    assert proc.returncode != 0
    assert re.search(message, proc.stderr), proc.stderr
    assert not (tmp_path / "o.npy").exists()


def test_flops_joint_presets():
    for model, text in (("hunyuanvideo", 256), ("cogvideox-5b", 226)):
        base = json.loads(_cli("flops", "--model", model, "--json").stdout)
        sink = json.loads(_cli("flops", "--model", model, "--json", "--sink-frames", "1").stdout)
        window = json.loads(_cli("flops", "--model", model, "--json", "--sink-frames", "1", "--window-radius", "1").stdout)
        assert base["text_tokens"] == text and sink["sink_frames"] == 1 and window["window_radius"] == 1
        assert base["attention_vmonarch_tflops"] < sink["attention_vmonarch_tflops"] < window["attention_vmonarch_tflops"]
        assert window["attention_vmonarch_tflops"] < base["attention_dense_tflops"]
        everything = json.loads(_cli("flops", "--model", model, "--json", "--sink-frames", "1000").stdout)
        assert everything["attention_vmonarch_tflops"] == pytest.approx(everything["attention_dense_tflops"], rel=1e-12)
