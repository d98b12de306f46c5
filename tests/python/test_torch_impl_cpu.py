"""vmonarch.torch_impl.attention (the differentiable torch composition) against the executable spec.

Forward and gradients (torch.autograd through shared/reference/vmonarch_ref.py at float64, with
detach_entropy=True for the paper's gradient and False for the exact one) at awkward shapes; the forward
against the compiled operator; finite differences; chunking and checkpointing; half inputs; memory bound;
errors."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch.autograd.gradcheck import GradcheckError
from torch.utils._python_dispatch import TorchDispatchMode

import vmonarch
import vmonarch.torch_impl as ti
from conftest import make_qkv, rel_l2, to_bhsd, from_bhsd

FN = "vmonarch.torch_impl.attention"

# (batch, heads, (T, H, W), d): odd T, T = 1, prime H*W, batch and heads > 1, T > HW, one token per frame.
SHAPES = [
    (1, 1, (1, 3, 5), 16),     # T = 1: dense attention
    (2, 3, (3, 2, 5), 16),     # odd T, batch and heads > 1
    (1, 2, (5, 1, 7), 64),     # HW = 7 prime, odd T
    (2, 2, (4, 1, 13), 16),    # HW = 13 prime, even T
    (1, 1, (7, 3, 3), 32),     # T > HW
    (1, 2, (2, 1, 1), 8),      # one token per frame
]


def reference_with_grads(ref, q, k, v, grid, layout, dout, dlse, iterations=2, clamp=0.1, recompute=True,
                         scale=None, entropy_grad=False):
    """(out, lse, dq, dk, dv) of the spec's reference at float64 under torch.autograd."""
    leaves = [x.detach().double().requires_grad_(True) for x in (q, k, v)]
    qb, kb, vb = (to_bhsd(x, layout) for x in leaves)
    if scale is not None:  # the spec's scale enters only through q·k products: fold it into q
        qb = qb * (scale / qb.shape[-1] ** -0.5)
    out, lse = ref.vmonarch_reference(qb, kb, vb, frames=grid[0], t=iterations, clamp=clamp,
                                      recompute_first_frame=recompute, return_lse=True,
                                      detach_entropy=not entropy_grad)
    out = from_bhsd(out, layout)
    grads = torch.autograd.grad((out * dout).sum() + (lse * dlse).sum(), leaves)
    return (out, lse, *grads)


def impl_with_grads(q, k, v, grid, layout, dout=None, dlse=None, seed=0, **opts):
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    out, lse = ti.attention(*leaves, grid, layout=layout, return_lse=True, **opts)
    g = torch.Generator().manual_seed(seed)
    if dout is None:
        dout = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
        dlse = torch.randn(lse.shape, generator=g, dtype=torch.float64).to(lse.dtype)
    grads = torch.autograd.grad((out.to(dout.dtype) * dout).sum() + (lse.to(dlse.dtype) * dlse).sum(), leaves)
    return (out, lse, *grads), dout, dlse


def assert_matches_reference(ref, q, k, v, grid, layout, tol=1e-10, seed=0, **opts):
    got, dout, dlse = impl_with_grads(q, k, v, grid, layout, seed=seed, **opts)
    ref_opts = dict(iterations=opts.get("iterations", 2), clamp=opts.get("clamp", 0.1),
                    recompute=opts.get("recompute_first_frame", True), scale=opts.get("scale"),
                    entropy_grad=opts.get("entropy_grad", False))
    want = reference_with_grads(ref, q, k, v, grid, layout, dout, dlse, **ref_opts)
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), got, want):
        assert a.shape == b.shape, name
        err = rel_l2(a, b)
        assert err < tol, f"{name}: relative L2 {err:.3g} >= {tol:g} ({opts})"
    return got


@pytest.mark.parametrize("B,heads,grid,d", SHAPES)
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_forward_and_gradients_match_reference(B, heads, grid, d, layout, entropy_grad, ref):
    for kind in ("random", "video"):
        q, k, v = make_qkv(kind, B, heads, grid, d, layout, seed=sum(grid) + d + B)
        assert_matches_reference(ref, q, k, v, grid, layout, entropy_grad=entropy_grad)


@pytest.mark.parametrize("iterations,recompute", list(itertools.product([1, 2, 3], [True, False])))
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_iterations_and_recompute(iterations, recompute, entropy_grad, ref):
    grid = (5, 2, 3)
    for layout in ("bshd", "bhsd"):
        q, k, v = make_qkv("video", 2, 2, grid, 16, layout, seed=iterations)
        assert_matches_reference(ref, q, k, v, grid, layout, iterations=iterations,
                                 recompute_first_frame=recompute, entropy_grad=entropy_grad)


def first_column_mass(q, k, grid, layout):
    """cR after the first L-step (spec §3), computed directly: Σ_i L[j][i][k], [B, h, T, HW]."""
    T, HW = grid[0], grid[1] * grid[2]
    Q, K = (to_bhsd(x, layout).reshape(x.shape[0], -1, T, HW, x.shape[-1]) for x in (q, k))
    s = Q.shape[-1] ** -0.5
    R = torch.softmax(torch.einsum("bhkjd,bhkld->bhkjl", Q, K) * s, -1)
    aL = torch.einsum("bhkjl,bhkld->bhkjd", R, K) * s
    cL = torch.sum(torch.special.xlogy(R, R), -1)
    z = torch.einsum("bhijd,bhkjd->bhjik", Q, aL) - cL.transpose(-1, -2)[:, :, :, None, :]
    return torch.softmax(z, -1).sum(3).transpose(-1, -2)


@pytest.mark.parametrize("clamp", [0.1, 0.5, 0.0])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_clamp_active_on_some_rows(clamp, entropy_grad, ref):
    grid, layout = (5, 2, 2), "bhsd"
    q, k, v = make_qkv("random", 1, 2, grid, 16, layout, seed=11)
    q, k = 2 * q, 2 * k  # sharper rows: some key frames get little mass (cR down to ~0.03)
    cR = first_column_mass(q, k, grid, layout)
    if clamp > 0:  # the clamp must bind on some rows and not on others, or the test proves nothing
        assert (cR < clamp).any() and (cR > clamp).any(), cR
    assert_matches_reference(ref, q, k, v, grid, layout, iterations=3, clamp=clamp, entropy_grad=entropy_grad)


def test_scale_and_value_dim(ref):
    grid = (3, 1, 5)
    q, k, _ = make_qkv("random", 1, 2, grid, 16, "bshd", seed=3)
    v = make_qkv("random", 1, 2, grid, 16, "bshd", dv=24, seed=4)[2]
    for entropy_grad in (False, True):
        got = assert_matches_reference(ref, q, k, v, grid, "bshd", scale=0.4, entropy_grad=entropy_grad)
        assert got[0].shape == (1, 15, 2, 24)


@pytest.mark.parametrize("max_logits,checkpoint", [(1, True), (40, True), (1 << 24, False), (1, False)])
def test_chunking_and_checkpointing_change_nothing(max_logits, checkpoint, ref):
    # max_logits = 1: one key-frame block per R-step chunk and one frame-0 query row per recompute chunk.
    grid = (3, 2, 3)
    q, k, v = make_qkv("video", 2, 3, grid, 16, "bshd", seed=5)
    for entropy_grad in (False, True):
        assert_matches_reference(ref, q, k, v, grid, "bshd", max_logits=max_logits, checkpoint=checkpoint,
                                 entropy_grad=entropy_grad, iterations=3)


def test_gradient_variants_differ_where_they_should(ref):
    # dv does not depend on cL's gradient (spec §7: P and dY are the same), dq and dk do.
    grid = (4, 2, 3)
    q, k, v = make_qkv("video", 1, 2, grid, 16, "bhsd", seed=8)
    paper, dout, dlse = impl_with_grads(q, k, v, grid, "bhsd")
    exact, _, _ = impl_with_grads(q, k, v, grid, "bhsd", dout=dout, dlse=dlse, entropy_grad=True)
    torch.testing.assert_close(paper[0], exact[0], rtol=0, atol=0)
    torch.testing.assert_close(paper[4], exact[4], rtol=1e-13, atol=1e-13)
    assert rel_l2(paper[2], exact[2]) > 1e-3 and rel_l2(paper[3], exact[3]) > 1e-3


@pytest.mark.parametrize("recompute", [True, False])
def test_exact_gradient_matches_finite_differences(recompute):
    # Only the exact variant is the derivative of the forward; the paper's (cL constant) is not.
    grid = (3, 1, 2)
    q, k, v = (x.requires_grad_(True) for x in make_qkv("random", 1, 1, grid, 3, "bhsd", seed=2))

    def f(q, k, v):
        return ti.attention(q, k, v, grid, layout="bhsd", clamp=0.5, recompute_first_frame=recompute,
                            return_lse=True, entropy_grad=True, max_logits=2)

    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-7, rtol=1e-6, fast_mode=True)
    paper = lambda q, k, v: ti.attention(q, k, v, grid, layout="bhsd", clamp=0.5, recompute_first_frame=recompute)
    with pytest.raises(GradcheckError):
        torch.autograd.gradcheck(paper, (q, k, v), eps=1e-6, atol=1e-7, rtol=1e-6, fast_mode=True)


@pytest.mark.parametrize("B,heads,grid,d", SHAPES)
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
def test_forward_equals_operator_f64(B, heads, grid, d, layout):
    for kind, (iterations, recompute, clamp) in itertools.product(("random", "video"),
                                                                  ((2, True, 0.1), (3, False, 0.5), (1, True, 0.0))):
        q, k, v = make_qkv(kind, B, heads, grid, d, layout, seed=B + heads + d)
        opts = dict(layout=layout, iterations=iterations, recompute_first_frame=recompute, clamp=clamp, return_lse=True)
        out, lse = ti.attention(q, k, v, grid, **opts)
        want, want_lse = vmonarch.attention(q, k, v, grid, **opts)
        assert out.dtype == want.dtype == torch.float64 and lse.dtype == want_lse.dtype
        assert rel_l2(out, want) < 1e-12
        torch.testing.assert_close(lse, want_lse, rtol=1e-12, atol=1e-12)


def test_forward_equals_operator_lower_precision():
    grid = (4, 2, 3)
    q, k, v = make_qkv("video", 1, 2, grid, 64, "bshd", seed=9)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float16, 2e-3)):
        args = [x.to(dtype) for x in (q, k, v)]
        out, lse = ti.attention(*args, grid, return_lse=True)
        want, want_lse = vmonarch.attention(*args, grid, return_lse=True)
        assert out.dtype == dtype and lse.dtype == torch.float32
        assert rel_l2(out, want) < tol
        assert rel_l2(lse, want_lse) < 1e-5


def test_half_inputs_compute_in_float32(ref):
    # A bf16 input is computed in float32 (spec §5): the same bits as the float32 computation on the
    # rounded values; gradients come back in bf16. compute_dtype=bfloat16 gives an all-bf16 composition.
    grid = (3, 2, 3)
    q, k, v = (x.to(torch.bfloat16) for x in make_qkv("video", 1, 2, grid, 16, "bshd", seed=6))
    half, dout, dlse = impl_with_grads(q, k, v, grid, "bshd")
    f32, _, _ = impl_with_grads(*(x.float() for x in (q, k, v)), grid, "bshd", dout=dout, dlse=dlse)
    assert half[0].dtype == torch.bfloat16 and half[1].dtype == torch.float32
    torch.testing.assert_close(half[0], f32[0].to(torch.bfloat16), rtol=0, atol=0)
    torch.testing.assert_close(half[1], f32[1], rtol=0, atol=0)
    for a, b in zip(half[2:], f32[2:]):
        assert a.dtype == torch.bfloat16 and rel_l2(a, b) < 1e-2
    want = reference_with_grads(ref, q, k, v, grid, "bshd", dout, dlse)
    all_bf16, _, _ = impl_with_grads(q, k, v, grid, "bshd", dout=dout, dlse=dlse, compute_dtype=torch.bfloat16)
    assert all_bf16[1].dtype == torch.bfloat16
    for name, a, b, w in zip(("out", "lse", "dq", "dk", "dv"), all_bf16, half, want):
        assert rel_l2(b, w) < 1e-2, name
        assert rel_l2(a, w) < 1e-1, name
    assert rel_l2(all_bf16[2], want[2]) > rel_l2(half[2], want[2])


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operation produces."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for r in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(r, torch.Tensor):
                self.numel = max(self.numel, r.numel())
        return result


@pytest.mark.parametrize("checkpoint", [True, False])
def test_no_tensor_grows_with_n_squared(checkpoint):
    # Forward and backward never form a tensor larger than one chunk of logits or the O(N·max(d, T))
    # state; an N×N attention matrix (per head) would be 6× larger here than any allowed tensor.
    B, heads, grid, d = 2, 2, (6, 3, 4), 4
    T, HW = grid[0], grid[1] * grid[2]
    N = T * HW
    q, k, v = (x.requires_grad_(True) for x in make_qkv("random", B, heads, grid, d, "bhsd", seed=1))
    mode = LargestTensor()
    with mode:
        out, lse = ti.attention(q, k, v, grid, layout="bhsd", return_lse=True, max_logits=HW * HW,
                                checkpoint=checkpoint, entropy_grad=True)
        (out.square().sum() + lse.sum()).backward()
    bound = max(HW * HW, N, B * heads * N * max(d, T))
    assert mode.numel <= bound, (mode.numel, bound)
    assert B * heads * N * N >= 6 * bound


def test_no_grad_and_inference_mode():
    grid = (3, 1, 4)
    q, k, v = make_qkv("random", 1, 2, grid, 8, "bshd", seed=4)
    want = ti.attention(q, k, v, grid)
    with torch.no_grad():
        torch.testing.assert_close(ti.attention(*(x.requires_grad_(True) for x in (q, k, v)), grid), want,
                                   rtol=0, atol=0)
    with torch.inference_mode():
        torch.testing.assert_close(ti.attention(q.detach(), k.detach(), v.detach(), grid), want, rtol=0, atol=0)


def test_errors():
    grid = (2, 2, 3)
    q, k, v = make_qkv("random", 1, 2, grid, 8, "bshd", seed=1)
    with pytest.raises(ValueError, match=f"{FN}: layout is 'bsdh'"):
        ti.attention(q, k, v, grid, layout="bsdh")
    with pytest.raises(TypeError, match=f"{FN}: k is a list"):
        ti.attention(q, [1.0], v, grid)
    with pytest.raises(ValueError, match="q has 3 dimensions"):
        ti.attention(q[0], k, v, grid)
    with pytest.raises(TypeError, match="v has dtype torch.float32, expected torch.float64 like q"):
        ti.attention(q, k, v.float(), grid)
    with pytest.raises(TypeError, match="dtype torch.int64 is not supported"):
        ti.attention(*(x.long() for x in (q, k, v)), grid)
    with pytest.raises(ValueError, match=r"k has shape \(1, 12, 2, 4\), expected \(1, 12, 2, 8\)"):
        ti.attention(q, k[..., :4], v, grid)
    with pytest.raises(ValueError, match=r"v has shape \(1, 11, 2, 8\)"):
        ti.attention(q, k, v[:, :11], grid)
    with pytest.raises(ValueError, match=r"argument 'grid' is \(2, 2, 2\) \(8 tokens\), expected T\*H\*W == 12"):
        ti.attention(q, k, v, (2, 2, 2))
    with pytest.raises(ValueError, match=r"argument 'grid' is \(2, 3\)"):
        ti.attention(q, k, v, (2, 3))
    with pytest.raises(ValueError, match="argument 'iterations' is 9, expected an int in 1..8"):
        ti.attention(q, k, v, grid, iterations=9)
    with pytest.raises(TypeError, match="argument 'iterations' is 2.0"):
        ti.attention(q, k, v, grid, iterations=2.0)
    with pytest.raises(ValueError, match="argument 'clamp' is -0.1"):
        ti.attention(q, k, v, grid, clamp=-0.1)
    with pytest.raises(ValueError, match="argument 'scale' is 0.0"):
        ti.attention(q, k, v, grid, scale=0.0)
    with pytest.raises(TypeError, match="argument 'entropy_grad' is 'yes'"):
        ti.attention(q, k, v, grid, entropy_grad="yes")
    with pytest.raises(TypeError, match="argument 'recompute_first_frame' is 1"):
        ti.attention(q, k, v, grid, recompute_first_frame=1)
    with pytest.raises(ValueError, match="argument 'max_logits' is 0, expected an int >= 1"):
        ti.attention(q, k, v, grid, max_logits=0)
    with pytest.raises(TypeError, match="argument 'compute_dtype' is torch.int32"):
        ti.attention(q, k, v, grid, compute_dtype=torch.int32)
    with pytest.raises(ValueError, match="k is on meta, expected cpu like q"):
        ti.attention(q, k.to("meta"), v, grid)


def test_autocast_does_not_lower_the_compute_dtype():
    grid = (3, 2, 2)
    q, k, v = (x.float() for x in make_qkv("video", 1, 2, grid, 16, "bshd", seed=2))
    want = ti.attention(q, k, v, grid)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ti.attention(q, k, v, grid)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)
