"""Gradients of vmonarch.attention on a CUDA device (spec §7) against torch.autograd through the executable spec
in float64 on the CPU (vmonarch_reference with detach_entropy=True: the paper's gradient, the default; False: the
exact gradient, entropy_grad=True), on the same rounded inputs.

Bounds on the relative L2 of dq, dk, dv: 2e-2 for bfloat16, 5e-3 for float16, and at most twice the error of the
all-bfloat16 PyTorch composition of the same algorithm (vmonarch.torch_impl with compute_dtype=bfloat16). Properties:
saved and lean mode bitwise equal, deterministic mode bitwise repeatable, dv the same bits in both variants, the
forward rerun at most once per step; torch.compile, torch.utils.checkpoint and CUDA graphs. Run on the GPU machine
by scripts/gpu_python_suite.sh (--all) or directly with pytest (skipped without CUDA).
"""
from __future__ import annotations

import collections

import pytest
import torch
import torch.utils.checkpoint

import vmonarch
import vmonarch.torch_impl as ti
from conftest import make_qkv, rel_l2
from test_backward_cpu import reference_grads

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

BOUND = {torch.bfloat16: 2e-2, torch.float16: 5e-3}
DEV = "cuda"


def needs_kernels():
    if not vmonarch.cuda_built():
        pytest.skip("this vmonarch build has no CUDA kernels")


def grads(q, k, v, dout, grid, layout, dlse=None, **opts):
    """dq, dk, dv of <out, dout> + <lse, dlse> through vmonarch.attention (autograd)."""
    q, k, v = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    out, lse = vmonarch.attention(q, k, v, grid=grid, layout=layout, return_lse=True, **opts)
    loss = (out.double() * dout.double()).sum()
    if dlse is not None:
        loss = loss + (lse.double() * dlse.double()).sum()
    return torch.autograd.grad(loss, (q, k, v))


def want_grads(ref, q, k, v, dout, grid, layout, dlse=None, entropy_grad=False, iterations=2, clamp=0.1,
               recompute=True):
    """The float64 CPU autograd of the spec's reference on the same rounded inputs."""
    cpu = [x.detach().double().cpu() for x in (q, k, v, dout)]
    return reference_grads(ref, *cpu, grid, layout, iterations=iterations, clamp=clamp, recompute=recompute,
                           entropy_grad=entropy_grad, dlse=None if dlse is None else dlse.double().cpu())


def inputs(B, heads, grid, d, layout, dtype, kind, seed):
    q, k, v = make_qkv(kind, B, heads, grid, d, layout, dtype=dtype, device=DEV, seed=seed)
    gen = torch.Generator().manual_seed(seed + 5)
    dout = torch.randn(q.shape, generator=gen, dtype=torch.float64).to(dtype).to(DEV)
    N = grid[0] * grid[1] * grid[2]
    dlse = (0.5 * torch.randn((B, heads, N), generator=gen, dtype=torch.float64)).float().to(DEV)
    return q, k, v, dout, dlse


def assert_close_to(got, want, bound, what=""):
    for name, g, w in zip("qkv", got, want):
        assert g.device.type == "cuda" and g.shape == w.shape, f"d{name} {what}"
        assert torch.isfinite(g).all(), f"d{name} {what}: non-finite values"
        err = rel_l2(g, w)
        assert err < bound, f"d{name} {what}: rel L2 {err:.3e} >= {bound:.1e}"


def assert_bitwise(a, b, what):
    for name, x, y in zip("qkv", a, b):
        assert torch.equal(x, y), f"d{name}: {what} (max difference {float((x.float() - y.float()).abs().max()):.3e})"


# (batch, heads, (T, H, W), d): T = 1, odd T, prime HW (13, 97), HW off the tile sizes, batch and heads > 1.
SHAPES = [
    (1, 2, (3, 4, 5), 64),
    (2, 1, (1, 5, 7), 128),
    (1, 2, (5, 1, 13), 64),
    (2, 2, (4, 9, 15), 128),
    (1, 3, (2, 1, 97), 128),
]


@pytest.mark.parametrize("B,heads,grid,d", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_grads_match_reference(B, heads, grid, d, dtype, layout, entropy_grad, ref):
    needs_kernels()
    q, k, v, dout, dlse = inputs(B, heads, grid, d, layout, dtype, "random", seed=B * 100 + d + grid[0])
    opts = dict(iterations=2, clamp=0.5)
    want = want_grads(ref, q, k, v, dout, grid, layout, dlse, entropy_grad, **opts)
    got = grads(q, k, v, dout, grid, layout, dlse, entropy_grad=entropy_grad, **opts)
    for g in got:
        assert g.dtype == dtype
    assert_close_to(got, want, BOUND[dtype], f"{dtype} {layout} entropy_grad={entropy_grad}")


@pytest.mark.parametrize("iterations,recompute", [(1, True), (2, False), (3, True)])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_video_like_iterations_and_recompute(iterations, recompute, entropy_grad, ref):
    needs_kernels()
    grid = (3, 6, 7)
    q, k, v, dout, dlse = inputs(1, 2, grid, 128, "bshd", torch.bfloat16, "video", seed=iterations)
    opts = dict(iterations=iterations, recompute=recompute)
    want = want_grads(ref, q, k, v, dout, grid, "bshd", dlse, entropy_grad, **opts)
    got = grads(q, k, v, dout, grid, "bshd", dlse, entropy_grad=entropy_grad, iterations=iterations,
                recompute_first_frame=recompute)
    assert_close_to(got, want, BOUND[torch.bfloat16], f"t={iterations} recompute={recompute}")


@pytest.mark.parametrize("entropy_grad", [False, True])
def test_within_twice_the_bf16_composition_error(entropy_grad, ref):
    # The same algorithm as a composition of PyTorch operations in bfloat16 (every intermediate rounded to bf16),
    # differentiated by torch.autograd: the operator's gradient error against float64 is at most twice its error.
    needs_kernels()
    grid = (4, 8, 12)
    q, k, v, dout, _ = inputs(1, 2, grid, 128, "bshd", torch.bfloat16, "video", seed=21)
    want = want_grads(ref, q, k, v, dout, grid, "bshd", entropy_grad=entropy_grad)
    got = grads(q, k, v, dout, grid, "bshd", entropy_grad=entropy_grad)
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    out = ti.attention(*leaves, grid, entropy_grad=entropy_grad, compute_dtype=torch.bfloat16)
    composed = torch.autograd.grad((out.double() * dout.double()).sum(), leaves)
    for name, g, c, w in zip("qkv", got, composed, want):
        ours, theirs = rel_l2(g, w), rel_l2(c, w)
        assert ours <= 2 * theirs, f"d{name}: rel L2 {ours:.3e} > 2 x the bf16 composition's {theirs:.3e}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_saved_state_equals_lean_bitwise(dtype, entropy_grad):
    needs_kernels()
    grid = (4, 9, 15)
    q, k, v, dout, dlse = inputs(2, 2, grid, 128, "bhsd", dtype, "video", seed=5)
    # The lean backward reruns the training forward's kernels into its workspace: the same state, so the same
    # gradients; bit for bit with deterministic=True (atomic accumulation may order the sums differently otherwise).
    opts = dict(entropy_grad=entropy_grad, deterministic=True)
    lean = grads(q, k, v, dout, grid, "bhsd", dlse, **opts)
    saved = grads(q, k, v, dout, grid, "bhsd", dlse, save_state=True, **opts)
    assert_bitwise(lean, saved, "saved state differs from lean mode")
    lean = grads(q, k, v, dout, grid, "bhsd", dlse, entropy_grad=entropy_grad)
    saved = grads(q, k, v, dout, grid, "bhsd", dlse, entropy_grad=entropy_grad, save_state=True)
    assert_close_to(saved, lean, 1e-3, "saved vs lean, default mode")


@pytest.mark.parametrize("entropy_grad", [False, True])
@pytest.mark.parametrize("save_state", [False, True])
def test_deterministic_is_bitwise_repeatable(entropy_grad, save_state, ref):
    needs_kernels()
    grid = (5, 11, 13)  # HW 143: more than one tile of keys per frame, so several blocks add into dk / dv
    q, k, v, dout, dlse = inputs(1, 3, grid, 64, "bshd", torch.bfloat16, "random", seed=8)
    opts = dict(entropy_grad=entropy_grad, deterministic=True, save_state=save_state)
    first = grads(q, k, v, dout, grid, "bshd", dlse, **opts)
    for _ in range(3):
        assert_bitwise(first, grads(q, k, v, dout, grid, "bshd", dlse, **opts), "deterministic runs differ")
    assert_close_to(first, want_grads(ref, q, k, v, dout, grid, "bshd", dlse, entropy_grad), BOUND[torch.bfloat16])


@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
def test_dv_does_not_depend_on_the_entropy_term(layout):
    # cL depends on q and k only: dv is the same computation in both variants, bit for bit.
    needs_kernels()
    grid = (3, 8, 9)
    q, k, v, dout, dlse = inputs(2, 2, grid, 64, layout, torch.float16, "video", seed=2)
    for deterministic in (False, True):
        paper = grads(q, k, v, dout, grid, layout, dlse, deterministic=deterministic)
        exact = grads(q, k, v, dout, grid, layout, dlse, entropy_grad=True, deterministic=deterministic)
        assert torch.equal(paper[2], exact[2]), f"deterministic={deterministic}"
        assert not torch.equal(paper[0], exact[0])  # the entropy term does change dq


def test_lse_gradient_alone(ref):
    # A loss of the LSE output only: dout is None in the autograd rule (zeros), dlse carries everything.
    needs_kernels()
    grid = (3, 5, 7)
    q, k, v, _, dlse = inputs(1, 2, grid, 128, "bhsd", torch.float16, "random", seed=17)
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    _, lse = vmonarch.attention(*leaves, grid=grid, layout="bhsd", return_lse=True)
    got = torch.autograd.grad((lse.double() * dlse.double()).sum(), leaves, allow_unused=True)
    zeros = torch.zeros_like(q)
    want = want_grads(ref, q, k, v, zeros, grid, "bhsd", dlse)
    assert_close_to(got[:2], want[:2], BOUND[torch.float16], "lse only")
    assert got[2] is None or float(got[2].abs().max()) == 0.0  # the LSE does not depend on v


def test_strided_inputs_and_grad_accumulation(ref):
    # q, k, v as views of one fused projection (not contiguous); gradients accumulate into .grad over two steps.
    needs_kernels()
    grid, heads, d = (3, 5, 7), 2, 64
    N = grid[0] * grid[1] * grid[2]
    g = torch.Generator(device=DEV).manual_seed(4)
    qkv = torch.randn(1, N, 3 * heads * d, device=DEV, dtype=torch.bfloat16, generator=g).requires_grad_(True)
    dout = torch.randn(1, N, heads, d, device=DEV, dtype=torch.bfloat16, generator=g)
    for _ in range(2):
        q, k, v = qkv.view(1, N, 3, heads, d).unbind(2)
        out = vmonarch.attention(q, k, v, grid=grid)
        (out.double() * dout.double()).sum().backward()
    q, k, v = (x.detach() for x in qkv.view(1, N, 3, heads, d).unbind(2))
    want = want_grads(ref, q, k, v, dout, grid, "bshd")
    got = qkv.grad.view(1, N, 3, heads, d).unbind(2)
    assert_close_to(got, [2 * w for w in want], BOUND[torch.bfloat16], "fused qkv")


def _forward_launches(fn):
    """Counter of the CUDA kernels fn launches (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return collections.Counter(e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                               and not e.name.startswith(("Memcpy", "Memset")))


@pytest.mark.parametrize("mode", ["lean", "saved", "plain op without lse"])
def test_backward_reruns_the_forward_at_most_once(mode):
    # The forward's kernels (those of one training forward that the saved-state backward does not launch) run at
    # most once more inside a backward: once in lean mode, never with the saved state, once for the plain op
    # whose forward did not return the LSE.
    needs_kernels()
    grid = (4, 8, 8)
    q, k, v, dout, _ = inputs(1, 2, grid, 128, "bshd", torch.bfloat16, "random", seed=1)
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]

    def backward_of(forward):
        out = forward()
        return _forward_launches(lambda: torch.autograd.grad(out, leaves, dout))

    with torch.no_grad():
        forward_kernels = _forward_launches(
            lambda: torch.ops.vmonarch.attention_train(*leaves, list(grid), 2, 0.1, True, None, "bshd", False,
                                                       False, True))
    saved_bwd = backward_of(lambda: vmonarch.attention(*leaves, grid=grid, save_state=True))
    rerun_kernels = {name for name in forward_kernels if name not in saved_bwd}
    assert rerun_kernels, f"no kernel of the forward is absent from the backward: {sorted(forward_kernels)}"
    one_forward = sum(forward_kernels[name] for name in rerun_kernels)
    if mode == "lean":
        bwd = backward_of(lambda: vmonarch.attention(*leaves, grid=grid))
    elif mode == "saved":
        bwd = saved_bwd
    else:
        bwd = backward_of(lambda: torch.ops.vmonarch.attention(*leaves, list(grid), 2, 0.1, True, None, "bshd",
                                                               False)[0])
    reruns = sum(bwd[name] for name in rerun_kernels)
    assert reruns <= one_forward, f"{mode}: {reruns} forward kernel launches in the backward, one forward has " \
                                  f"{one_forward} ({sorted(bwd.items())})"
    if mode == "saved":
        assert reruns == 0
    else:
        assert reruns > 0


def test_fake_kernel_matches_the_cuda_op():
    # The fake (meta) kernel of the training forward gives the shapes, dtypes and saved-state size of the CUDA op.
    needs_kernels()
    from torch._subclasses.fake_tensor import FakeTensorMode

    grid = (3, 9, 15)
    for layout, iterations in (("bshd", 2), ("bhsd", 3)):
        q, k, v, _, _ = inputs(2, 3, grid, 128, layout, torch.float16, "random", seed=iterations)
        real = torch.ops.vmonarch.attention_train(q, k, v, list(grid), iterations, 0.1, True, None, layout, False,
                                                  False, True)
        with FakeTensorMode() as mode:
            fq, fk, fv = (mode.from_tensor(x) for x in (q, k, v))
            fake = torch.ops.vmonarch.attention_train(fq, fk, fv, list(grid), iterations, 0.1, True, None, layout,
                                                      False, False, True)
            fake_grads = torch.ops.vmonarch.attention_backward(fq, fk, fv, fake[0], fake[1], fake[0], None,
                                                               list(grid), iterations, 0.1, True, None, layout,
                                                               False, False, fake[2])
        for r, f in zip(real, fake):
            assert r.shape == f.shape and r.dtype == f.dtype and f.device.type == "cuda"
        for x, f in zip((q, k, v), fake_grads):
            assert x.shape == f.shape and x.dtype == f.dtype


@pytest.mark.parametrize("options", [dict(), dict(entropy_grad=True, save_state=True, deterministic=True)])
def test_compile_fullgraph_with_backward(options, ref):
    needs_kernels()
    grid = (3, 4, 5)
    q0, k0, v0, dout, _ = inputs(1, 2, grid, 64, "bshd", torch.bfloat16, "random", seed=11)

    def step(q, k, v):
        out = vmonarch.attention(q, k, v, grid=grid, **options)
        return (out.double() * dout.double()).sum()

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    leaves = [x.clone().requires_grad_(True) for x in (q0, k0, v0)]
    got = torch.autograd.grad(compiled(*leaves), leaves)
    want = want_grads(ref, q0, k0, v0, dout, grid, "bshd", entropy_grad=options.get("entropy_grad", False))
    assert_close_to(got, want, BOUND[torch.bfloat16], f"compiled {options}")
    if options.get("deterministic"):
        eager = grads(q0, k0, v0, dout, grid, "bshd", **options)
        assert_bitwise(got, eager, "compiled and eager deterministic gradients differ")


@pytest.mark.parametrize("save_state", [False, True])
def test_checkpoint_gives_the_same_gradients(save_state, ref):
    needs_kernels()
    grid = (4, 5, 7)
    q0, k0, v0, dout, _ = inputs(2, 2, grid, 128, "bhsd", torch.float16, "video", seed=12)
    opts = dict(layout="bhsd", deterministic=True, save_state=save_state)

    def attend(q, k, v):
        return vmonarch.attention(q, k, v, grid=grid, **opts)

    leaves = [x.clone().requires_grad_(True) for x in (q0, k0, v0)]
    out = torch.utils.checkpoint.checkpoint(attend, *leaves, use_reentrant=False)
    got = torch.autograd.grad((out.double() * dout.double()).sum(), leaves)
    plain = grads(q0, k0, v0, dout, grid, "bhsd", deterministic=True, save_state=save_state)
    assert_bitwise(got, plain, "checkpointed and plain gradients differ")
    assert_close_to(got, want_grads(ref, q0, k0, v0, dout, grid, "bhsd"), BOUND[torch.float16], "checkpoint")


@pytest.mark.parametrize("options", [dict(), dict(save_state=True, entropy_grad=True)])
def test_cuda_graph_capture_of_forward_and_backward(options):
    needs_kernels()
    grid = (3, 4, 5)
    q0, k0, v0, dout, _ = inputs(1, 2, grid, 64, "bshd", torch.float16, "random", seed=13)
    static = [x.clone().requires_grad_(True) for x in (q0, k0, v0)]

    def step():
        for x in static:
            x.grad = None
        out = vmonarch.attention(*static, grid=grid, deterministic=True, **options)
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
    # New values in the static inputs: the replay computes their gradients.
    with torch.no_grad():
        for x, y in zip(static, (k0, v0, q0)):
            x.copy_(y)
    graph.replay()
    torch.cuda.synchronize()
    replayed = [x.grad.clone() for x in static]
    want = grads(k0, v0, q0, dout, grid, "bshd", deterministic=True, **options)
    assert_bitwise(replayed, want, "graph replay differs from eager on the same inputs")
    assert not torch.equal(replayed[0], eager[0])


def test_float32_cuda_tensors_with_grad_raise_type_error():
    needs_kernels()
    q, k, v, _, _ = inputs(1, 1, (3, 4, 5), 64, "bshd", torch.bfloat16, "random", seed=3)
    q, k, v = (x.float().requires_grad_(True) for x in (q, k, v))
    with pytest.raises(TypeError, match="bfloat16 or float16"):
        vmonarch.attention(q, k, v, grid=(3, 4, 5))

