"""`vmonarch backward --device cuda` (spec §7) against torch.autograd through the executable spec in float64 on the
same rounded .npy inputs: relative L2 of dq, dk, dv <= 5e-3 for float16 files, <= 2e-2 for bfloat16 compute
(--cast bf16 on float32 files holding bfloat16 values); --saved equal to lean mode with --deterministic; errors.
Needs a CUDA build of the CLI ($VMONARCH_CLI or build*/vmonarch) and a CUDA device; skipped otherwise."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

from conftest import make_qkv, rel_l2
from test_backward_cpu import reference_grads
from test_cli_cpu import CLI

pytestmark = pytest.mark.skipif(CLI is None or not torch.cuda.is_available(),
                                reason="needs a CUDA device and a vmonarch CLI binary (set VMONARCH_CLI)")


def run_backward(tmp_path, tensors, grid, layout, *flags, tag=""):
    args = [CLI, "backward", "--grid", ",".join(map(str, grid)), "--layout", layout, "--device", "cuda", *flags]
    for name, t in tensors.items():
        path = str(tmp_path / f"{name}.npy")
        np.save(path, t.numpy())
        args += [f"--{name}", path]
    outs = {n: str(tmp_path / f"{tag}{n}.npy") for n in ("dq", "dk", "dv")}
    for n, p in outs.items():
        args += [f"--{n}", p]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    grads = [torch.from_numpy(np.load(outs[n])) for n in ("dq", "dk", "dv")] if proc.returncode == 0 else None
    return proc, grads


@pytest.mark.parametrize("grid,d,layout", [((3, 4, 5), 64, "bshd"), ((1, 5, 7), 128, "bhsd"),
                                           ((5, 1, 13), 128, "bshd")])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_float16_files(tmp_path, grid, d, layout, entropy_grad, ref):
    q, k, v = make_qkv("video", 2, 2, grid, d, layout, dtype=torch.float16, seed=d + grid[0])
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).half()
    flags = ["--entropy-grad"] if entropy_grad else []
    proc, got = run_backward(tmp_path, dict(q=q, k=k, v=v, dout=dout), grid, layout, *flags)
    assert proc.returncode == 0, proc.stderr
    assert "on cuda in f16" in proc.stdout
    want = reference_grads(ref, *(x.double() for x in (q, k, v, dout)), grid, layout, entropy_grad=entropy_grad)
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        assert g.dtype == torch.float16 and g.shape == w.shape
        assert rel_l2(g, w) <= 5e-3, f"{name}: rel L2 {rel_l2(g, w):.3e}"


def test_bfloat16_compute_saved_and_deterministic(tmp_path, ref):
    grid, layout = (4, 6, 7), "bshd"
    q, k, v = make_qkv("random", 1, 3, grid, 128, layout, dtype=torch.bfloat16, seed=5)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).bfloat16()
    files = {name: t.float() for name, t in dict(q=q, k=k, v=v, dout=dout).items()}  # bf16 values, f32 files
    common = ("--cast", "bf16", "--deterministic", "--iterations", "3", "--clamp", "0.5")
    lean_proc, lean = run_backward(tmp_path, files, grid, layout, *common, tag="lean_")
    saved_proc, saved = run_backward(tmp_path, files, grid, layout, *common, "--saved", tag="saved_")
    assert lean_proc.returncode == 0, lean_proc.stderr
    assert saved_proc.returncode == 0, saved_proc.stderr
    assert "saved state (" in saved_proc.stdout and "on cuda in bf16" in saved_proc.stdout
    want = reference_grads(ref, *(x.double() for x in (q, k, v, dout)), grid, layout, iterations=3, clamp=0.5)
    for name, a, b, w in zip(("dq", "dk", "dv"), lean, saved, want):
        assert a.dtype == torch.float32  # written in the files' dtype
        assert torch.equal(a, b), f"{name}: --saved differs from lean mode"
        assert rel_l2(a, w) <= 2e-2, f"{name}: rel L2 {rel_l2(a, w):.3e}"


def test_float32_without_cast_is_refused(tmp_path):
    grid = (3, 4, 5)
    q, k, v = make_qkv("random", 1, 1, grid, 64, "bshd", dtype=torch.float32, seed=3)
    proc, _ = run_backward(tmp_path, dict(q=q, k=k, v=v, dout=v.clone()), grid, "bshd")
    assert proc.returncode == 1
    assert "--cast" in proc.stderr and "bf16" in proc.stderr
    assert not (tmp_path / "dq.npy").exists()  # nothing half-written


@pytest.mark.parametrize("flags,ref_kw", [(("--sink-frames", "1"), dict(sink_frames=1)),
                                          (("--sink-frames", "1", "--window-radius", "1"),
                                           dict(sink_frames=1, window_radius=1))])
def test_exact_key_groups_on_cuda(tmp_path, flags, ref_kw, ref):
    """--sink-frames / --window-radius: the exact groups' backward (spec §3b, §7) through the CLI on cuda."""
    grid, layout = (5, 4, 7), "bshd"
    q, k, v = make_qkv("video", 2, 2, grid, 64, layout, dtype=torch.float16, seed=11)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64).half()
    proc, got = run_backward(tmp_path, dict(q=q, k=k, v=v, dout=dout), grid, layout, *flags)
    assert proc.returncode == 0, proc.stderr
    qb, kb, vb = (x.double().transpose(1, 2).clone().requires_grad_(True) for x in (q, k, v))
    out = ref.vmonarch_reference(qb, kb, vb, frames=grid[0], t=2, clamp=0.1, recompute_first_frame=True,
                                 detach_entropy=True, **ref_kw)
    want = torch.autograd.grad((out * dout.double().transpose(1, 2)).sum(), (qb, kb, vb))
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        w = w.transpose(1, 2)
        assert g.dtype == torch.float16 and g.shape == w.shape
        assert rel_l2(g, w) <= 5e-3, f"{name}: rel L2 {rel_l2(g, w):.3e}"
