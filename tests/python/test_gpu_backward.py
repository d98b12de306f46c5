"""Gradients of vmonarch.attention on a CUDA device (spec §7) against the CPU autograd of the same operator
in float64 on the same rounded inputs (torch.autograd.gradcheck is CPU-only: test_backward_cpu.py).

Bounds on the relative L2 of dq, dk, dv: 2e-2 for bfloat16, 5e-3 for float16. Run on the GPU machine by
scripts/gpu_python_suite.sh.
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


def grads(q, k, v, dout, grid, layout, dlse=None, **opts):
    q, k, v = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    out, lse = vmonarch.attention(q, k, v, grid=grid, layout=layout, return_lse=True, **opts)
    loss = (out.double() * dout.double()).sum()
    if dlse is not None:
        loss = loss + (lse.double() * dlse.double()).sum()
    return torch.autograd.grad(loss, (q, k, v))


def inputs(B, heads, grid, d, layout, dtype, kind, seed):
    q, k, v = make_qkv(kind, B, heads, grid, d, layout, dtype=dtype, device=DEV, seed=seed)
    gen = torch.Generator().manual_seed(seed + 5)
    dout = torch.randn(q.shape, generator=gen, dtype=torch.float64).to(dtype).to(DEV)
    N = grid[0] * grid[1] * grid[2]
    dlse = (0.5 * torch.randn((B, heads, N), generator=gen, dtype=torch.float64)).float().to(DEV)
    return q, k, v, dout, dlse


# (batch, heads, (T, H, W), d): T = 1, odd T, prime HW, HW off the tile sizes, batch and heads > 1.
SHAPES = [
    (1, 2, (3, 4, 5), 64),
    (2, 1, (1, 5, 7), 128),
    (1, 2, (5, 1, 13), 64),
    (2, 2, (4, 9, 15), 128),
]


@pytest.mark.parametrize("B,heads,grid,d", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
def test_grads_match_cpu_float64(B, heads, grid, d, dtype, layout):
    needs_kernels()
    q, k, v, dout, dlse = inputs(B, heads, grid, d, layout, dtype, "random", seed=B * 100 + d + grid[0])
    opts = dict(iterations=2, clamp=0.5)
    want = grads(*(x.double().cpu() for x in (q, k, v, dout)), grid, layout, dlse.double().cpu(), **opts)
    got = grads(q, k, v, dout, grid, layout, dlse, **opts)
    for name, g, w in zip("qkv", got, want):
        assert g.dtype == dtype and g.device.type == "cuda" and g.shape == w.shape
        assert torch.isfinite(g).all(), f"d{name}"
        err = rel_l2(g.double().cpu(), w)
        assert err < BOUND[dtype], f"d{name}: rel L2 {err:.3e}"


@pytest.mark.parametrize("option", ["entropy_grad", "deterministic", "save_state"])
def test_cuda_training_options_not_wired_raise(option):
    # The C++ API has them on CUDA (tests/gpu/test_backward_gpu.cpp); this package does not pass them yet, and
    # must refuse rather than silently return the paper's lean gradient.
    needs_kernels()
    q, k, v, _, _ = inputs(1, 1, (3, 4, 5), 64, "bshd", torch.bfloat16, "random", seed=3)
    q.requires_grad_(True)
    with pytest.raises(NotImplementedError, match=option):
        vmonarch.attention(q, k, v, grid=(3, 4, 5), **{option: True})


@pytest.mark.parametrize("iterations,recompute", [(1, True), (2, False), (3, True)])
def test_iterations_and_recompute(iterations, recompute):
    needs_kernels()
    grid = (3, 6, 7)
    q, k, v, dout, _ = inputs(1, 2, grid, 128, "bshd", torch.bfloat16, "video", seed=iterations)
    opts = dict(iterations=iterations, recompute_first_frame=recompute)
    want = grads(*(x.double().cpu() for x in (q, k, v, dout)), grid, "bshd", **opts)
    got = grads(q, k, v, dout, grid, "bshd", **opts)
    for name, g, w in zip("qkv", got, want):
        assert rel_l2(g.double().cpu(), w) < BOUND[torch.bfloat16], f"d{name}"


def test_plain_op_and_compile_and_checkpoint():
    needs_kernels()
    grid = (3, 4, 5)
    q0, k0, v0, dout, _ = inputs(1, 2, grid, 64, "bshd", torch.bfloat16, "random", seed=11)

    def attend(q, k, v):
        return vmonarch.attention(q, k, v, grid=grid)

    want = grads(q0, k0, v0, dout, grid, "bshd")
    compiled = torch.compile(attend, fullgraph=True)
    q, k, v = (x.clone().requires_grad_(True) for x in (q0, k0, v0))
    got = torch.autograd.grad((compiled(q, k, v).double() * dout.double()).sum(), (q, k, v))
    for g, w in zip(got, want):
        assert rel_l2(g.double(), w.double()) < 1e-2
    q, k, v = (x.clone().requires_grad_(True) for x in (q0, k0, v0))
    out = torch.utils.checkpoint.checkpoint(attend, q, k, v, use_reentrant=False)
    got = torch.autograd.grad((out.double() * dout.double()).sum(), (q, k, v))
    for g, w in zip(got, want):
        assert rel_l2(g.double(), w.double()) < 1e-2


def test_cuda_graph_capture_of_forward_and_backward():
    needs_kernels()
    grid = (3, 4, 5)
    q0, k0, v0, dout, _ = inputs(1, 2, grid, 64, "bshd", torch.float16, "random", seed=13)
    static = [x.clone().requires_grad_(True) for x in (q0, k0, v0)]

    def step():
        for x in static:
            x.grad = None
        out = vmonarch.attention(*static, grid=grid)
        (out.float() * dout.float()).sum().backward()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    eager = [x.grad.clone() for x in static]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    graph.replay()
    torch.cuda.synchronize()
    for x, e in zip(static, eager):
        assert torch.equal(x.grad, e)


def test_exact_groups_have_no_backward():
    needs_kernels()
    grid = (3, 4, 5)
    q, k, v, _, _ = inputs(1, 1, grid, 64, "bshd", torch.bfloat16, "random", seed=3)
    q.requires_grad_(True)
    with pytest.raises(NotImplementedError):
        vmonarch.attention(q, k, v, grid=grid, sink_frames=1).float().sum().backward()
