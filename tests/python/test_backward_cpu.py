"""Gradients of vmonarch.attention on the CPU (spec §7) against torch.autograd through the executable
spec in float64: detach_entropy=True (the paper's gradient, the default) and detach_entropy=False
(entropy_grad=True, the exact gradient)."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.utils.checkpoint

import vmonarch
from conftest import from_bhsd, make_qkv, to_bhsd

# (batch, heads, (T, H, W), d): T = 1, odd T, prime H*W, batch and heads > 1, T > HW.
SHAPES = [
    (1, 1, (1, 3, 5), 8),
    (2, 3, (3, 2, 5), 16),
    (1, 2, (5, 1, 7), 8),
    (2, 2, (4, 1, 13), 8),
    (1, 1, (7, 3, 1), 4),
    (1, 2, (2, 1, 1), 8),
]


def reference_grads(ref, q, k, v, dout, grid, layout, iterations=2, clamp=0.1, recompute=True, scale=None,
                    entropy_grad=False, dlse=None):
    """dq, dk, dv of <out, dout> + <lse, dlse> through vmonarch_reference, in `layout`."""
    qb, kb, vb = (to_bhsd(x, layout).detach().double().clone().requires_grad_(True) for x in (q, k, v))
    d = qb.shape[-1]
    qs = qb if scale is None else qb * (scale / d ** -0.5)  # the spec's scale enters only through q·k
    out, lse = ref.vmonarch_reference(qs, kb, vb, frames=grid[0], t=iterations, clamp=clamp,
                                      recompute_first_frame=recompute, return_lse=True,
                                      detach_entropy=not entropy_grad)
    loss = (out * to_bhsd(dout, layout).double()).sum()
    if dlse is not None:
        loss = loss + (lse * dlse.double()).sum()
    grads = torch.autograd.grad(loss, (qb, kb, vb))
    return tuple(from_bhsd(g, layout) for g in grads)


def vmonarch_grads(q, k, v, dout, grid, layout, dlse=None, **opts):
    q, k, v = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    out, lse = vmonarch.attention(q, k, v, grid=grid, layout=layout, return_lse=True, **opts)
    loss = (out * dout).sum()
    if dlse is not None:
        loss = loss + (lse * dlse).sum()
    return torch.autograd.grad(loss, (q, k, v))


def assert_grads_close(got, want, tol=1e-10):
    for name, g, w in zip("qkv", got, want):
        assert g.shape == w.shape and g.dtype == torch.float64, name
        err = float((g - w).abs().max())
        bound = tol * max(1.0, float(w.abs().max()))
        assert err <= bound, f"d{name}: max error {err:.3e} > {bound:.3e}"


def carried_cr(q, k, grid, scale=None):
    """cR after the first iteration of the fit (spec §3), [B, heads, T, HW], from bhsd float64 q, k."""
    B, h, N, d = q.shape
    T = grid[0]
    HW = N // T
    s = d ** -0.5 if scale is None else scale
    Q, K = q.reshape(B, h, T, HW, d), k.reshape(B, h, T, HW, d)
    R = torch.softmax(torch.einsum("bhkjd,bhkld->bhkjl", Q, K) * s, -1)
    cL = torch.sum(torch.special.xlogy(R, R), -1)
    aL = torch.einsum("bhkjl,bhkld->bhkjd", R, K) * s
    z = torch.einsum("bhijd,bhkjd->bhjik", Q, aL) - cL.transpose(-1, -2)[:, :, :, None, :]
    return torch.softmax(z, -1).sum(3).transpose(-1, -2)


@pytest.mark.parametrize("B,heads,grid,d", SHAPES)
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_grads_match_reference(B, heads, grid, d, layout, entropy_grad, ref):
    q, k, v = make_qkv("random", B, heads, grid, d, layout, seed=hash((B, heads, grid, d)) % 1000)
    dout = make_qkv("random", B, heads, grid, d, layout, seed=7)[2]
    got = vmonarch_grads(q, k, v, dout, grid, layout, entropy_grad=entropy_grad)
    want = reference_grads(ref, q, k, v, dout, grid, layout, entropy_grad=entropy_grad)
    assert_grads_close(got, want)


@pytest.mark.parametrize("iterations,recompute,entropy_grad",
                         list(itertools.product([1, 2, 3], [True, False], [False, True])))
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
def test_iterations_and_recompute(iterations, recompute, entropy_grad, layout, ref):
    grid = (5, 2, 3)
    q, k, v = make_qkv("video", 2, 2, grid, 8, layout, seed=iterations)
    dout = make_qkv("random", 2, 2, grid, 8, layout, seed=11)[2]
    opts = dict(iterations=iterations, recompute_first_frame=recompute)
    got = vmonarch_grads(q, k, v, dout, grid, layout, entropy_grad=entropy_grad, **opts)
    want = reference_grads(ref, q, k, v, dout, grid, layout, iterations=iterations, recompute=recompute,
                           entropy_grad=entropy_grad)
    assert_grads_close(got, want)


@pytest.mark.parametrize("iterations", [4, 8])
def test_many_iterations(iterations, ref):
    grid = (3, 2, 2)
    q, k, v = make_qkv("random", 1, 2, grid, 8, "bhsd", seed=iterations)
    dout = make_qkv("random", 1, 2, grid, 8, "bhsd", seed=5)[0]
    for entropy_grad in (False, True):
        got = vmonarch_grads(q, k, v, dout, grid, "bhsd", iterations=iterations, entropy_grad=entropy_grad)
        want = reference_grads(ref, q, k, v, dout, grid, "bhsd", iterations=iterations, entropy_grad=entropy_grad)
        assert_grads_close(got, want)


@pytest.mark.parametrize("clamp", [0.1, 0.6])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_clamp_active_on_some_rows(clamp, entropy_grad, ref):
    # Peaky queries make L nearly one-hot, so some key frames get little mass: cR < clamp there.
    grid = (4, 2, 3)
    q, k, v = make_qkv("random", 2, 2, grid, 8, "bhsd", seed=3)
    q = 5.0 * q
    cr = carried_cr(q, k, grid)
    clamped = float((cr < clamp).double().mean())
    assert 0.05 < clamped < 0.95, f"clamp {clamp} active on a fraction {clamped} of the rows"
    dout = make_qkv("random", 2, 2, grid, 8, "bhsd", seed=4)[1]
    for iterations in (2, 3):
        got = vmonarch_grads(q, k, v, dout, grid, "bhsd", iterations=iterations, clamp=clamp,
                             entropy_grad=entropy_grad)
        want = reference_grads(ref, q, k, v, dout, grid, "bhsd", iterations=iterations, clamp=clamp,
                               entropy_grad=entropy_grad)
        assert_grads_close(got, want)


def test_clamp_off_and_scale(ref):
    grid = (3, 3, 2)
    q, k, v = make_qkv("video", 1, 2, grid, 8, "bshd", seed=9)
    dout = make_qkv("random", 1, 2, grid, 8, "bshd", seed=10)[2]
    for clamp, scale in ((0.0, None), (0.1, 0.2), (0.3, 0.5)):
        for entropy_grad in (False, True):
            got = vmonarch_grads(q, k, v, dout, grid, "bshd", clamp=clamp, scale=scale, entropy_grad=entropy_grad)
            want = reference_grads(ref, q, k, v, dout, grid, "bshd", clamp=clamp, scale=scale,
                                   entropy_grad=entropy_grad)
            assert_grads_close(got, want)


@pytest.mark.parametrize("recompute", [True, False])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_lse_output_gradient(recompute, entropy_grad, ref):
    grid = (3, 1, 5)
    q, k, v = make_qkv("random", 2, 2, grid, 8, "bshd", seed=21)
    dout = make_qkv("random", 2, 2, grid, 8, "bshd", seed=22)[0]
    dlse = torch.randn(2, 2, 15, dtype=torch.float64, generator=torch.Generator().manual_seed(23))
    got = vmonarch_grads(q, k, v, dout, grid, "bshd", dlse=dlse, recompute_first_frame=recompute,
                         entropy_grad=entropy_grad)
    want = reference_grads(ref, q, k, v, dout, grid, "bshd", recompute=recompute, entropy_grad=entropy_grad,
                           dlse=dlse)
    assert_grads_close(got, want)
    # lse alone (no gradient reaches out)
    qq, kk, vv = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    _, lse = vmonarch.attention(qq, kk, vv, grid=grid, return_lse=True, recompute_first_frame=recompute,
                                entropy_grad=entropy_grad)
    got = torch.autograd.grad((lse * dlse).sum(), (qq, kk, vv))
    want = reference_grads(ref, q, k, v, torch.zeros_like(dout), grid, "bshd", recompute=recompute,
                           entropy_grad=entropy_grad, dlse=dlse)
    assert_grads_close(got, want)


def test_strided_views(ref):
    # q, k, v as views into larger tensors (no copies): every stride differs from the contiguous one.
    grid = (3, 2, 3)
    big = torch.randn(2, 2 * 18, 3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(31))
    q, k, v = big[:, ::2, :2, :8], big[:, 1::2, 1:, 2:10], big[:, ::2, 1:, 4:12]
    assert not q.is_contiguous()
    dout = torch.randn(2, 18, 2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(32))
    got = vmonarch_grads(q, k, v, dout, grid, "bshd")
    want = reference_grads(ref, q, k, v, dout, grid, "bshd")
    assert_grads_close(got, want)


def test_value_dim_differs(ref):
    grid = (3, 2, 2)
    q, k, _ = make_qkv("random", 1, 2, grid, 8, "bhsd", seed=41)
    v = make_qkv("random", 1, 2, grid, 8, "bhsd", dv=5, seed=42)[2]
    dout = make_qkv("random", 1, 2, grid, 8, "bhsd", dv=5, seed=43)[2]
    for entropy_grad in (False, True):
        got = vmonarch_grads(q, k, v, dout, grid, "bhsd", entropy_grad=entropy_grad)
        want = reference_grads(ref, q, k, v, dout, grid, "bhsd", entropy_grad=entropy_grad)
        assert_grads_close(got, want)


def test_dv_identical_between_variants_and_lean_matches_saved():
    grid = (4, 2, 3)
    q, k, v = make_qkv("video", 2, 2, grid, 8, "bshd", seed=51)
    dout = make_qkv("random", 2, 2, grid, 8, "bshd", seed=52)[1]
    paper = vmonarch_grads(q, k, v, dout, grid, "bshd")
    exact = vmonarch_grads(q, k, v, dout, grid, "bshd", entropy_grad=True)
    assert torch.equal(paper[2], exact[2])
    assert not torch.equal(paper[0], exact[0])
    for entropy_grad in (False, True):
        lean = vmonarch_grads(q, k, v, dout, grid, "bshd", entropy_grad=entropy_grad)
        saved = vmonarch_grads(q, k, v, dout, grid, "bshd", entropy_grad=entropy_grad, save_state=True)
        # Lean mode reruns the training forward inside the backward but takes out and lse from the plain
        # forward (src/cpu/monarch_cpu.cpp), whose sums run in another order: equal to fp64 round-off.
        for a, b in zip(lean, saved):
            assert float((a - b).abs().max()) <= 1e-13 * float(b.abs().max())
    again = vmonarch_grads(q, k, v, dout, grid, "bshd", deterministic=True)
    for a, b in zip(paper, again):
        assert torch.equal(a, b)


def test_float32_close_to_float64():
    grid = (3, 2, 5)
    q, k, v = make_qkv("video", 1, 2, grid, 16, "bshd", seed=61)
    dout = make_qkv("random", 1, 2, grid, 16, "bshd", seed=62)[0]
    g64 = vmonarch_grads(q, k, v, dout, grid, "bshd")
    g32 = vmonarch_grads(q.float(), k.float(), v.float(), dout.float(), grid, "bshd")
    for a, b in zip(g32, g64):
        assert a.dtype == torch.float32
        assert float((a.double() - b).norm() / b.norm()) < 1e-4


def test_gradcheck_tiny():
    # The exact gradient (entropy_grad=True) is the derivative of the forward: finite differences agree.
    # The paper's gradient treats cL as a constant, so it is checked against the reference above instead.
    grid = (3, 1, 2)
    for recompute, iterations in ((True, 2), (False, 2), (True, 3)):
        q, k, v = (x.requires_grad_(True) for x in make_qkv("random", 1, 1, grid, 3, "bhsd", seed=71))

        def f(q, k, v, recompute=recompute, iterations=iterations):
            return vmonarch.attention(q, k, v, grid=grid, layout="bhsd", return_lse=True, clamp=0.3,
                                      iterations=iterations, recompute_first_frame=recompute, entropy_grad=True)

        assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_plain_op_is_differentiable(ref):
    grid = (3, 2, 2)
    q, k, v = (x.requires_grad_(True) for x in make_qkv("random", 1, 2, grid, 8, "bshd", seed=81))
    dout = make_qkv("random", 1, 2, grid, 8, "bshd", seed=82)[0]
    for return_lse in (False, True):
        out, _ = torch.ops.vmonarch.attention(q, k, v, list(grid), 2, 0.1, True, None, "bshd", return_lse)
        got = torch.autograd.grad((out * dout).sum(), (q, k, v))
        assert_grads_close(got, reference_grads(ref, q, k, v, dout, grid, "bshd"))


def test_checkpoint_and_compile(ref):
    grid = (3, 2, 3)
    q0, k0, v0 = make_qkv("video", 1, 2, grid, 8, "bshd", seed=91)
    dout = make_qkv("random", 1, 2, grid, 8, "bshd", seed=92)[0]
    want = reference_grads(ref, q0, k0, v0, dout, grid, "bshd")

    def attend(q, k, v):
        return vmonarch.attention(q, k, v, grid=grid)

    q, k, v = (x.clone().requires_grad_(True) for x in (q0, k0, v0))
    out = torch.utils.checkpoint.checkpoint(attend, q, k, v, use_reentrant=False)
    assert_grads_close(torch.autograd.grad((out * dout).sum(), (q, k, v)), want)

    compiled = torch.compile(attend, fullgraph=True)
    q, k, v = (x.clone().requires_grad_(True) for x in (q0, k0, v0))
    out = compiled(q, k, v)
    assert_grads_close(torch.autograd.grad((out * dout).sum(), (q, k, v)), want)

    # saved mode and the exact gradient through the compiled graph as well
    want = reference_grads(ref, q0, k0, v0, dout, grid, "bshd", entropy_grad=True)
    compiled = torch.compile(lambda q, k, v: vmonarch.attention(q, k, v, grid=grid, entropy_grad=True,
                                                                save_state=True), fullgraph=True)
    q, k, v = (x.clone().requires_grad_(True) for x in (q0, k0, v0))
    out = compiled(q, k, v)
    assert_grads_close(torch.autograd.grad((out * dout).sum(), (q, k, v)), want)


def test_backward_argument_errors():
    grid = (2, 2, 2)
    q, k, v = make_qkv("random", 1, 1, grid, 4, "bshd", seed=1)
    out, lse = vmonarch.attention(q, k, v, grid=grid, return_lse=True)
    op = torch.ops.vmonarch.attention_backward
    with pytest.raises(ValueError, match="dout.shape\\[1\\].*is 4, expected 8"):
        op(q, k, v, out, lse, out[:, :4], None, list(grid))
    with pytest.raises(ValueError, match="lse.shape\\[2\\]"):
        op(q, k, v, out, lse[:, :, :3], out, None, list(grid))
    with pytest.raises(ValueError, match="argument 'iterations' is 9, expected 1..8"):
        op(q, k, v, out, lse, out, None, list(grid), 9)
    with pytest.raises(ValueError, match="dlse.shape\\[2\\]"):
        op(q, k, v, out, lse, out, lse[:, :, :2], list(grid))
    _, _, saved = torch.ops.vmonarch.attention_train(q, k, v, list(grid), 2, 0.1, True, None, "bshd", False,
                                                     False, True)
    with pytest.raises(ValueError, match="iterations 2, expected 3"):
        op(q, k, v, out, lse, out, None, list(grid), 3, saved=saved)
    with pytest.raises(ValueError, match="cr_clamp"):
        op(q, k, v, out, lse, out, None, list(grid), 2, 0.2, saved=saved)


def test_opcheck_backward_ops():
    """Schema, fake kernels and autograd registration of attention_train / attention_backward."""
    grid = [2, 1, 3]
    q, k, v = make_qkv("random", 1, 2, tuple(grid), 4, "bshd", seed=101)
    for save_state in (False, True):
        torch.library.opcheck(torch.ops.vmonarch.attention_train.default,
                              (q, k, v, grid, 2, 0.1, True, None, "bshd", False, False, save_state),
                              test_utils=("test_schema", "test_faketensor"))
    out, lse, saved = torch.ops.vmonarch.attention_train(q, k, v, grid, 2, 0.1, True, None, "bshd", True, False,
                                                         True)
    assert saved.numel() == vmonarch._ops._backward.saved_state_bytes(q, v, 2, "bshd")
    dout = torch.randn_like(out)
    for s in (None, saved):
        torch.library.opcheck(torch.ops.vmonarch.attention_backward.default,
                              (q, k, v, out, lse, dout, None, grid, 2, 0.1, True, None, "bshd", True, False, s),
                              test_utils=("test_schema", "test_faketensor"))
