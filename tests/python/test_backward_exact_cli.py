"""`vmonarch backward` with --sink-frames / --window-radius and joint sequences (--text-tokens, --text-position,
--text-lens) writes the gradients torch.autograd gives through the Python operators on the same .npy inputs
(spec §3b-3c, §7)."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

import vmonarch
from conftest import make_qkv
from test_cli_cpu import CLI

pytestmark = pytest.mark.skipif(CLI is None, reason="no vmonarch CLI binary built (set VMONARCH_CLI)")


def _save(tmp_path, **tensors):
    args = []
    for name, t in tensors.items():
        path = str(tmp_path / f"{name}.npy")
        np.save(path, t.detach().numpy())
        args += [f"--{name}", path]
    return args


def _grads(tmp_path):
    paths = {n: str(tmp_path / f"g_{n}.npy") for n in ("dq", "dk", "dv")}
    return paths, [x for n, p in paths.items() for x in (f"--{n}", p)]


@pytest.mark.parametrize("joint,text_first", [(False, False), (True, True), (True, False)])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_backward_matches_autograd(tmp_path, joint, text_first, entropy_grad):
    grid, L, lens = (3, 2, 3), 4, [4, 1]
    q, k, v = make_qkv("video", 2, 2, grid, 8, "bshd", seed=1)
    if joint:
        text = make_qkv("random", 2, 2, (1, 1, L), 8, "bshd", seed=2)
        q, k, v = (torch.cat([b, a] if text_first else [a, b], 1) for a, b in zip((q, k, v), text))
    dout = torch.randn(v.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    paths, grad_args = _grads(tmp_path)
    args = ["backward", *_save(tmp_path, q=q, k=k, v=v, dout=dout), "--grid", "3,2,3", "--layout", "bshd",
            "--device", "cpu", "--sink-frames", "1", "--window-radius", "0", *grad_args]
    if joint:
        args += ["--text-tokens", str(L), "--text-position", "first" if text_first else "last",
                 "--text-lens", ",".join(map(str, lens))]
    if entropy_grad:
        args.append("--entropy-grad")
    proc = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "sink frames 1, window radius 0" in proc.stdout
    qq, kk, vv = (x.clone().requires_grad_(True) for x in (q, k, v))
    opts = dict(sink_frames=1, window_radius=0, entropy_grad=entropy_grad)
    if joint:
        out = vmonarch.joint_attention(qq, kk, vv, grid, L, text_first=text_first, text_lens=lens, **opts)
    else:
        out = vmonarch.attention(qq, kk, vv, grid, **opts)
    want = torch.autograd.grad((out * dout).sum(), (qq, kk, vv))
    for name, w in zip(("dq", "dk", "dv"), want):
        got = torch.from_numpy(np.load(paths[name]))
        assert got.shape == w.shape
        assert float((got - w).abs().max()) <= 1e-12 * float(w.abs().max()), name


def test_joint_backward_refuses_saved(tmp_path):
    grid = (2, 1, 2)
    q, k, v = make_qkv("random", 1, 1, (1, 1, 6), 4, "bshd", seed=4)
    _, grad_args = _grads(tmp_path)
    proc = subprocess.run([CLI, "backward", *_save(tmp_path, q=q, k=k, v=v, dout=v), "--grid", "2,1,2", "--layout",
                           "bshd", "--device", "cpu", "--text-tokens", "2", "--saved", *grad_args],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "--saved: a joint sequence (--text-tokens 2) runs in lean mode only" in proc.stderr
    assert not (tmp_path / "g_dq.npy").exists()
    del grid
