"""Gradients of exact key groups (spec §3b) and joint sequences (spec §3c) on a CUDA device: torch.autograd through
vmonarch.attention(sink_frames=, window_radius=, text_k=, text_v=, text_lens=) and vmonarch.joint_attention on
CUDA tensors against the same calls' CPU autograd in float64 on the same rounded inputs (the CPU backward agrees
with fp64 autograd of the reference to 1e-10: test_backward_exact_cpu.py).

Bounds on the relative L2 of every gradient: 2e-2 for bfloat16, 5e-3 for float16. Run on the GPU machine by
scripts/gpu_python_suite.sh (--all), or directly with pytest.
"""
from __future__ import annotations

import pytest
import torch

import vmonarch
from conftest import make_qkv, rel_l2

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

BOUND = {torch.bfloat16: 2e-2, torch.float16: 5e-3}
DEV = "cuda"


def needs_kernels():
    if not vmonarch.cuda_built():
        pytest.skip("this vmonarch build has no CUDA kernels")


def rounded(x, dtype):
    """x rounded to dtype on the device, and its float64 CPU copy (the same values)."""
    y = x.to(dtype).to(DEV)
    return y, y.double().cpu()


def seq_axis(layout):
    return 1 if layout == "bshd" else 2


def check(got, want, dtype, names):
    for name, g, w in zip(names, got, want):
        assert g.device.type == "cuda" and g.dtype == dtype and g.shape == w.shape, name
        assert torch.isfinite(g).all(), name
        if w.abs().max() == 0:
            assert g.abs().max() == 0, f"{name}: expected exactly 0"
            continue
        err = rel_l2(g, w)
        assert err < BOUND[dtype], f"{name}: rel L2 {err:.3e}"


def attention_grads(q, k, v, tk, tv, dout, dlse, grid, layout, **opts):
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v, tk, tv)]
    out, lse = vmonarch.attention(*leaves[:3], grid=grid, layout=layout, return_lse=True, text_k=leaves[3],
                                  text_v=leaves[4], **opts)
    loss = (out.double() * dout.double()).sum() + (lse.double() * dlse.double()).sum()
    return torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("entropy_grad", [False, True])
@pytest.mark.parametrize("grid,d,S,r,L,lens,save_state", [
    ((3, 4, 5), 64, 1, None, 4, [4, 2], False),   # sink frame, lens = L and < L
    ((5, 1, 13), 128, 1, 1, 3, [0, 3], True),     # window, lens 0, odd T, prime HW, saved mode
    ((1, 5, 7), 64, 1, None, 5, None, False),      # T = 1
])
def test_attention_exact_groups_grads_match_cpu_float64(dtype, layout, entropy_grad, grid, d, S, r, L, lens,
                                                        save_state):
    needs_kernels()
    B, heads = 2, 2
    q, k, v = make_qkv("video", B, heads, grid, d, layout, seed=d + S + grid[0])
    shape = list(q.shape)
    shape[seq_axis(layout)] = L
    g = torch.Generator().manual_seed(L + 3)
    tk, tv = (torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(2))
    dout = torch.randn(q.shape, generator=g, dtype=torch.float64)
    N = grid[0] * grid[1] * grid[2]
    dlse = 0.5 * torch.randn((B, heads, N), generator=g, dtype=torch.float64)
    cuda_in, cpu_in = zip(*(rounded(x, dtype) for x in (q, k, v, tk, tv, dout)))
    dlse_f = dlse.float()
    opts = dict(iterations=2, sink_frames=S, window_radius=r, entropy_grad=entropy_grad)
    want = attention_grads(*cpu_in, dlse_f.double(), grid, layout,
                           text_lens=None if lens is None else torch.tensor(lens), **opts)
    got = attention_grads(*cuda_in, dlse_f.to(DEV), grid, layout,
                          text_lens=None if lens is None else torch.tensor(lens), save_state=save_state, **opts)
    check(got, want, dtype, ["dq", "dk", "dv", "dtext_k", "dtext_v"])


def joint_grads(q, k, v, dout, dlse, grid, L, **opts):
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    out, lse = vmonarch.joint_attention(*leaves, grid, L, return_lse=True, **opts)
    loss = (out.double() * dout.double()).sum() + (lse.double() * dlse.double()).sum()
    return torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("text_first", [True, False])
@pytest.mark.parametrize("entropy_grad", [False, True])
@pytest.mark.parametrize("grid,d,L,lens,S,r,layout", [
    ((3, 4, 5), 64, 6, [6, 2], 0, None, "bshd"),
    ((4, 2, 7), 128, 4, [0, 4], 1, 1, "bhsd"),
    ((1, 3, 5), 64, 5, None, 1, None, "bshd"),   # T = 1
])
def test_joint_attention_grads_match_cpu_float64(dtype, text_first, entropy_grad, grid, d, L, lens, S, r, layout):
    needs_kernels()
    B, heads = 2, 2
    q, k, v = make_qkv("video", B, heads, grid, d, layout, seed=L + d)
    axis = seq_axis(layout)
    shape = list(q.shape)
    shape[axis] = L
    g = torch.Generator().manual_seed(L + 11)
    text = [1.5 * torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(3)]
    jq, jk, jv = (torch.cat([t, x] if text_first else [x, t], axis) for x, t in zip((q, k, v), text))
    dout = torch.randn(jq.shape, generator=g, dtype=torch.float64)
    M = grid[0] * grid[1] * grid[2] + L
    dlse = (0.5 * torch.randn((B, heads, M), generator=g, dtype=torch.float64)).float()
    cuda_in, cpu_in = zip(*(rounded(x, dtype) for x in (jq, jk, jv, dout)))
    opts = dict(text_first=text_first, text_lens=lens, layout=layout, iterations=2, sink_frames=S, window_radius=r,
                entropy_grad=entropy_grad)
    want = joint_grads(*cpu_in, dlse.double(), grid, L, **opts)
    got = joint_grads(*cuda_in, dlse.to(DEV), grid, L, **opts)
    check(got, want, dtype, ["dq", "dk", "dv"])


def test_exact_groups_dv_does_not_depend_on_the_entropy_term():
    needs_kernels()
    grid, layout = (4, 3, 5), "bshd"
    q, k, v = make_qkv("random", 1, 2, grid, 64, layout, seed=5)
    g = torch.Generator().manual_seed(9)
    tk, tv = (torch.randn(1, 3, 2, 64, generator=g, dtype=torch.float64) for _ in range(2))
    dout = torch.randn(q.shape, generator=g, dtype=torch.float64)
    cuda_in, _ = zip(*(rounded(x, torch.bfloat16) for x in (q, k, v, tk, tv, dout)))
    dlse = torch.zeros(1, 2, 60, device=DEV)
    paper = attention_grads(*cuda_in, dlse, grid, layout, sink_frames=1, window_radius=1, deterministic=True)
    exact = attention_grads(*cuda_in, dlse, grid, layout, sink_frames=1, window_radius=1, deterministic=True,
                            entropy_grad=True)
    assert torch.equal(paper[2], exact[2]) and torch.equal(paper[4], exact[4])
    again = attention_grads(*cuda_in, dlse, grid, layout, sink_frames=1, window_radius=1, deterministic=True)
    assert all(torch.equal(a, b) for a, b in zip(paper, again))
