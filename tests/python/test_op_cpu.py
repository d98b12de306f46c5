"""vmonarch.attention / dense_attention / flops on the CPU against the executable spec at float64."""
from __future__ import annotations

import itertools

import pytest
import torch

import vmonarch
from conftest import TOLERANCE, dense_reference, make_qkv, reference_attention, rel_l2

# (batch, heads, (T, H, W), d): odd T, T = 1, prime H*W, d = 64 / 128, batch and heads > 1.
SHAPES = [
    (1, 1, (1, 3, 5), 64),     # T = 1: VMonarch is exact dense attention
    (2, 3, (3, 2, 5), 64),     # odd T, batch and heads > 1
    (1, 2, (5, 1, 7), 128),    # HW = 7 prime, odd T
    (2, 2, (4, 1, 13), 64),    # HW = 13 prime, even T
    (1, 1, (7, 3, 3), 128),    # T > HW
    (1, 2, (2, 1, 1), 64),     # one token per frame
]


@pytest.mark.parametrize("B,heads,grid,d", SHAPES)
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("kind", ["random", "video"])
def test_attention_matches_reference_f64(B, heads, grid, d, layout, kind, ref):
    q, k, v = make_qkv(kind, B, heads, grid, d, layout, seed=hash((B, heads, grid, d, kind)) % 1000)
    out, lse = vmonarch.attention(q, k, v, grid=grid, layout=layout, return_lse=True)
    want, want_lse = reference_attention(ref, q, k, v, grid, layout)
    assert out.shape == q.shape and out.dtype == torch.float64
    assert lse.shape == (B, heads, grid[0] * grid[1] * grid[2]) and lse.dtype == torch.float64
    assert rel_l2(out, want) < 1e-10
    torch.testing.assert_close(lse, want_lse, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("iterations,recompute", list(itertools.product([1, 2, 3], [True, False])))
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
def test_iterations_and_recompute(iterations, recompute, layout, ref):
    grid = (5, 2, 3)
    q, k, v = make_qkv("video", 2, 2, grid, 64, layout, seed=iterations)
    out, lse = vmonarch.attention(q, k, v, grid, layout=layout, iterations=iterations,
                                  recompute_first_frame=recompute, return_lse=True)
    want, want_lse = reference_attention(ref, q, k, v, grid, layout, iterations=iterations, recompute=recompute)
    assert rel_l2(out, want) < 1e-10
    torch.testing.assert_close(lse, want_lse, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("clamp", [0.1, 0.5, 0.0])
def test_clamp(clamp, ref):
    grid = (3, 2, 2)
    q, k, v = make_qkv("random", 1, 2, grid, 64, "bshd", seed=7)
    out = vmonarch.attention(q, k, v, grid, clamp=clamp)
    want = reference_attention(ref, q, k, v, grid, "bshd", clamp=clamp, return_lse=False)
    assert rel_l2(out, want) < 1e-10


def test_scale(ref):
    grid = (3, 1, 5)
    q, k, v = make_qkv("random", 1, 2, grid, 64, "bhsd", seed=3)
    out = vmonarch.attention(q, k, v, grid, layout="bhsd", scale=0.3)
    want = reference_attention(ref, q, k, v, grid, "bhsd", scale=0.3, return_lse=False)
    assert rel_l2(out, want) < 1e-10
    assert rel_l2(out, vmonarch.attention(q, k, v, grid, layout="bhsd")) > 1e-3


def test_value_dim_differs(ref):
    grid = (3, 2, 2)
    q, k, v = make_qkv("random", 1, 2, grid, 64, "bshd", dv=32, seed=5)
    out = vmonarch.attention(q, k, v, grid)
    assert out.shape == (1, 12, 2, 32)
    assert rel_l2(out, reference_attention(ref, q, k, v, grid, "bshd", return_lse=False)) < 1e-10


def test_return_lse_false_returns_tensor():
    q, k, v = make_qkv("random", 1, 1, (2, 1, 3), 64, "bshd")
    out = vmonarch.attention(q, k, v, (2, 1, 3))
    assert isinstance(out, torch.Tensor)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["random", "video"])
def test_lower_precision_on_cpu(dtype, kind, ref):
    grid = (3, 2, 5)
    q, k, v = make_qkv(kind, 2, 2, grid, 64, "bshd", seed=11)
    want, want_lse = reference_attention(ref, q, k, v, grid, "bshd")
    qc, kc, vc = (x.to(dtype) for x in (q, k, v))
    out, lse = vmonarch.attention(qc, kc, vc, grid, return_lse=True)
    assert out.dtype == dtype and lse.dtype == torch.float32
    # the rounding of the inputs alone moves the answer by about the dtype's epsilon
    want_rounded = reference_attention(ref, qc, kc, vc, grid, "bshd", return_lse=False)
    assert rel_l2(out, want_rounded) < TOLERANCE[dtype]
    assert rel_l2(out, want) < 4 * TOLERANCE[dtype]
    assert float((lse.double() - want_lse).abs().max()) < 200 * TOLERANCE[dtype]


# --- strides ---------------------------------------------------------------------------------------------
def test_strided_views_without_copies(ref):
    """Slices of a fused qkv projection (token stride 3·heads·d) are taken as they are."""
    B, heads, grid, d = 2, 2, (3, 1, 5), 64
    N = 15
    qkv = torch.randn(B, N, 3 * heads * d, dtype=torch.float64)
    q, k, v = (x.unflatten(-1, (heads, d)) for x in qkv.chunk(3, dim=-1))
    assert not q.is_contiguous()
    out = vmonarch.attention(q, k, v, grid)
    want = reference_attention(ref, q, k, v, grid, "bshd", return_lse=False)
    assert rel_l2(out, want) < 1e-10


def test_unsupported_strides_are_made_contiguous(ref):
    B, heads, grid, d = 1, 2, (2, 2, 2), 64
    q, k, v = make_qkv("random", B, heads, grid, d, "bshd", seed=1)
    q_t = q.transpose(-1, -2).contiguous().transpose(-1, -2)          # head dim stride != 1
    k_b = k[:, :, :1].expand(B, 8, heads, d)                          # zero head stride (broadcast)
    assert q_t.stride(-1) != 1 and k_b.stride(2) == 0
    out = vmonarch.attention(q_t, k_b, v, grid)
    want = reference_attention(ref, q_t, k_b.contiguous(), v, grid, "bshd", return_lse=False)
    assert rel_l2(out, want) < 1e-10


def test_bhsd_and_bshd_agree():
    grid = (3, 2, 3)
    q, k, v = make_qkv("video", 2, 3, grid, 64, "bshd")
    a = vmonarch.attention(q, k, v, grid, layout="bshd")
    b = vmonarch.attention(*(x.transpose(1, 2) for x in (q, k, v)), grid, layout="bhsd")
    assert b.shape == (2, 3, 18, 64)
    torch.testing.assert_close(a, b.transpose(1, 2), rtol=1e-12, atol=1e-12)


# --- dense ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("kv_tokens", [7, 30])
def test_dense_attention(layout, kv_tokens):
    g = torch.Generator().manual_seed(0)
    B, heads, d = 2, 3, 64
    shape_q = (B, 11, heads, d) if layout == "bshd" else (B, heads, 11, d)
    shape_k = (B, kv_tokens, heads, d) if layout == "bshd" else (B, heads, kv_tokens, d)
    q = torch.randn(*shape_q, generator=g, dtype=torch.float64)
    k = torch.randn(*shape_k, generator=g, dtype=torch.float64)
    v = torch.randn(*shape_k, generator=g, dtype=torch.float64)
    out, lse = vmonarch.dense_attention(q, k, v, layout=layout, return_lse=True)
    want, want_lse = dense_reference(q, k, v, layout)
    assert rel_l2(out, want) < 1e-12
    torch.testing.assert_close(lse, want_lse, rtol=1e-12, atol=1e-12)
    out2 = vmonarch.dense_attention(q, k, v, layout=layout, scale=0.2)
    assert rel_l2(out2, dense_reference(q, k, v, layout, scale=0.2)[0]) < 1e-12


def test_t1_equals_dense():
    grid = (1, 3, 4)
    q, k, v = make_qkv("random", 1, 2, grid, 64, "bshd")
    for recompute in (True, False):
        a = vmonarch.attention(q, k, v, grid, recompute_first_frame=recompute)
        torch.testing.assert_close(a, vmonarch.dense_attention(q, k, v), rtol=1e-12, atol=1e-12)


# --- flops ----------------------------------------------------------------------------------------------
def test_flops_match_spec(ref):
    for grid, d, heads, t, rec in [((16, 28, 52), 128, 12, 2, True), ((21, 45, 80), 128, 40, 3, False)]:
        f = vmonarch.flops(grid, d, heads, batch=2, iterations=t, recompute_first_frame=rec)
        vm, dense = ref.flops(*grid, d=d, heads=heads, t=t, recompute_first_frame=rec)
        assert f.vmonarch == pytest.approx(2 * vm, rel=1e-12)
        assert f.dense == pytest.approx(2 * dense, rel=1e-12)
        assert f.r_steps + f.l_steps + f.recompute == pytest.approx(f.vmonarch, rel=1e-12)


# --- errors ---------------------------------------------------------------------------------------------
def _qkv(dtype=torch.float32, grid=(2, 2, 2)):
    return make_qkv("random", 1, 2, grid, 64, "bshd", dtype=dtype)


@pytest.mark.parametrize("call,exc,match", [
    (lambda q, k, v: vmonarch.attention(q, k, v, (3, 2, 2)), ValueError, "grid|tokens"),
    (lambda q, k, v: vmonarch.attention(q, k, v, (2, 4)), ValueError, "grid"),
    (lambda q, k, v: vmonarch.attention(q, k, v, (2, 2, 2), layout="bsdh"), ValueError, "layout"),
    (lambda q, k, v: vmonarch.attention(q, k, v, (2, 2, 2), iterations=0), ValueError, "iterations"),
    (lambda q, k, v: vmonarch.attention(q, k, v, (2, 2, 2), iterations=9), ValueError, "iterations"),
    (lambda q, k, v: vmonarch.attention(q, k, v, (2, 2, 2), scale=-1.0), ValueError, "scale"),
    (lambda q, k, v: vmonarch.attention(q, k, v, (2, 2, 2), clamp=-0.5), ValueError, "clamp"),
    (lambda q, k, v: vmonarch.attention(q[0], k[0], v[0], (2, 2, 2)), ValueError, "dimensions"),
    (lambda q, k, v: vmonarch.attention(q, k[:, :4], v[:, :4], (2, 2, 2)), ValueError, "tokens"),
    (lambda q, k, v: vmonarch.attention(q, k[:, :, :1], v, (2, 2, 2)), ValueError, "heads"),
    (lambda q, k, v: vmonarch.attention(q, k.double(), v, (2, 2, 2)), TypeError, "dtype"),
    (lambda q, k, v: vmonarch.attention(q.int(), k.int(), v.int(), (2, 2, 2)), TypeError, "dtype"),
    (lambda q, k, v: vmonarch.attention(q.numpy(), k, v, (2, 2, 2)), TypeError, "Tensor"),
    (lambda q, k, v: vmonarch.dense_attention(q, k, v[..., :1, :], layout="bshd"), ValueError, "heads"),
    (lambda q, k, v: vmonarch.flops((2, 2), 64, 1), ValueError, "grid"),
])
def test_argument_errors(call, exc, match):
    q, k, v = _qkv()
    with pytest.raises(exc, match=match):
        call(q, k, v)


def test_error_message_is_the_libraries():
    q, k, v = _qkv()
    with pytest.raises(ValueError) as info:
        vmonarch.attention(q, k, v, (3, 2, 2))
    assert "vmonarch::attention" in str(info.value) or "vmonarch.attention" in str(info.value)


def test_dense_backward_raises_a_clear_error():
    # vmonarch.attention is differentiable (tests/python/test_backward_cpu.py); dense_attention is not.
    q, k, v = (x.requires_grad_() for x in _qkv())
    out = vmonarch.dense_attention(q, k, v)
    with pytest.raises(NotImplementedError, match="vmonarch.dense_attention has no backward pass yet"):
        out.sum().backward()


def test_no_grad_and_inference_mode():
    q, k, v = (x.requires_grad_() for x in _qkv())
    with torch.no_grad():
        assert not vmonarch.attention(q, k, v, (2, 2, 2)).requires_grad
    with torch.inference_mode():
        vmonarch.attention(*(x.detach() for x in (q, k, v)), (2, 2, 2))


def test_cuda_tensor_in_a_cpu_only_build():
    if vmonarch.cuda_built() or not torch.cuda.is_available():
        pytest.skip("only meaningful for a CPU-only build on a CUDA machine")
    q, k, v = _qkv(torch.bfloat16)
    with pytest.raises(NotImplementedError, match="no CUDA kernels"):
        vmonarch.attention(q.cuda(), k.cuda(), v.cuda(), (2, 2, 2))


def test_opcheck():
    """Schema, fake kernel and autograd registration agree with the real kernel (torch.library.opcheck)."""
    q, k, v = _qkv(grid=(2, 1, 3))
    for return_lse in (False, True):
        torch.library.opcheck(torch.ops.vmonarch.attention.default,
                              (q, k, v, [2, 1, 3], 2, 0.1, True, None, "bshd", return_lse))
    torch.library.opcheck(torch.ops.vmonarch.dense_attention.default, (q, k, v, None, "bshd", True))
    qb, kb, vb = (x.transpose(1, 2) for x in (q, k, v))
    torch.library.opcheck(torch.ops.vmonarch.attention.default,
                          (qb, kb, vb, [2, 1, 3], 1, 0.1, False, 0.2, "bhsd", True))
