"""Exact key groups (spec §3b) and joint text+video attention (spec §3c) on the CPU against the executable spec
(vmonarch_reference(..., sink_frames=, window_radius=, extra_k=, extra_v=, extra_lens=) and joint_reference) at
float64, plus properties, argument errors, torch.compile and FLOPs."""
from __future__ import annotations

import pytest
import torch

import vmonarch
from conftest import from_bhsd, make_qkv, rel_l2, to_bhsd


def text_tensors(B, heads, L, d, layout, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    tk = 2.0 * torch.randn(B, heads, L, d, generator=g, dtype=torch.float64)
    tv = torch.randn(B, heads, L, d, generator=g, dtype=torch.float64)
    return (from_bhsd(x, layout).contiguous().to(dtype) for x in (tk, tv))


def reference(ref, q, k, v, grid, layout, t=2, recompute=True, S=0, r=None, tk=None, tv=None, lens=None):
    qb, kb, vb = (to_bhsd(x, layout).double() for x in (q, k, v))
    extra = {}
    if tk is not None:
        extra = dict(extra_k=to_bhsd(tk, layout).double(), extra_v=to_bhsd(tv, layout).double(), extra_lens=lens)
    out, lse = ref.vmonarch_reference(qb, kb, vb, frames=grid[0], t=t, recompute_first_frame=recompute,
                                      return_lse=True, sink_frames=S, window_radius=r, **extra)
    return from_bhsd(out, layout), lse


def dense_all_keys(q, k, v, layout, tk=None, tv=None, lens=None):
    """Exact attention over every video key and the valid text keys: (out, lse)."""
    qb, kb, vb = (to_bhsd(x, layout).double() for x in (q, k, v))
    B, N = qb.shape[0], kb.shape[2]
    valid = torch.ones(B, N, dtype=torch.bool)
    if tk is not None:
        kb = torch.cat([kb, to_bhsd(tk, layout).double()], 2)
        vb = torch.cat([vb, to_bhsd(tv, layout).double()], 2)
        L = tk.shape[1 if layout == "bshd" else 2]
        lv = torch.arange(L)[None] < torch.as_tensor(lens if lens is not None else [L] * B)[:, None]
        valid = torch.cat([valid, lv], 1)
    x = (qb @ kb.transpose(-1, -2)) * qb.shape[-1] ** -0.5
    x = x.masked_fill(~valid[:, None, None], float("-inf"))
    return from_bhsd(torch.softmax(x, -1) @ vb, layout), torch.logsumexp(x, -1)


# (B, heads, grid, d, S, r, L, lens): S = 0, 1, 2, >= T; r = 0, 1, >= T; text lens < L, = L, = 0.
CASES = [
    (2, 2, (5, 2, 3), 64, 0, None, 0, None),       # unchanged paper setting
    (2, 2, (5, 2, 3), 64, 1, None, 0, None),       # S = 1, odd T
    (1, 2, (4, 1, 7), 128, 2, None, 0, None),      # S = 2, prime HW, d = 128
    (1, 1, (3, 2, 2), 64, 3, None, 0, None),       # S = T: dense
    (1, 1, (3, 2, 2), 64, 7, None, 0, None),       # S > T: dense
    (2, 1, (5, 1, 5), 64, 0, 0, 0, None),          # r = 0
    (1, 2, (5, 2, 3), 64, 0, 1, 0, None),          # r = 1
    (1, 2, (5, 2, 3), 64, 1, 1, 0, None),          # S = 1 and r = 1
    (1, 1, (4, 2, 3), 64, 0, 4, 0, None),          # r >= T: dense
    (2, 2, (3, 1, 7), 64, 0, None, 5, [3, 5]),     # text only, lens < L and = L
    (2, 2, (3, 1, 7), 128, 1, None, 6, [0, 6]),    # text lens = 0 for one batch element
    (2, 1, (5, 2, 2), 64, 1, 1, 4, [4, 2]),        # everything
    (1, 2, (1, 3, 5), 64, 1, None, 3, [2]),        # T = 1
    (1, 1, (1, 2, 3), 64, 0, 0, 2, None),          # T = 1, r = 0
]


@pytest.mark.parametrize("B,heads,grid,d,S,r,L,lens", CASES)
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("t,recompute", [(2, True), (1, False)])
def test_matches_reference_f64(B, heads, grid, d, S, r, L, lens, layout, t, recompute, ref):
    q, k, v = make_qkv("video", B, heads, grid, d, layout, seed=S * 7 + (r or 0) + L)
    tk, tv = text_tensors(B, heads, L, d, layout, seed=L) if L else (None, None)
    out, lse = vmonarch.attention(q, k, v, grid, layout=layout, iterations=t, recompute_first_frame=recompute,
                                  return_lse=True, sink_frames=S, window_radius=r, text_k=tk, text_v=tv,
                                  text_lens=lens)
    want, want_lse = reference(ref, q, k, v, grid, layout, t, recompute, S, r, tk, tv, lens)
    assert out.shape == q.shape and torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert rel_l2(out, want) < 1e-10
    torch.testing.assert_close(lse, want_lse, rtol=1e-10, atol=1e-10)


def test_default_options_are_the_unchanged_op():
    grid = (4, 2, 3)
    q, k, v = make_qkv("video", 2, 2, grid, 64, "bshd", seed=1)
    plain, plain_lse = vmonarch.attention(q, k, v, grid, return_lse=True)
    out, lse = torch.ops.vmonarch.attention_exact_groups(q, k, v, list(grid), return_lse=True)
    assert torch.equal(out, plain) and torch.equal(lse, plain_lse)
    empty = q.new_empty(2, 0, 2, 64)
    out0 = vmonarch.attention(q, k, v, grid, text_k=empty, text_v=empty, text_lens=[0, 0])
    assert torch.equal(out0, plain)


@pytest.mark.parametrize("S,r", [(5, None), (0, 5), (2, 3)])
def test_all_frames_exact_is_dense_attention(S, r):
    grid = (5, 2, 3)
    q, k, v = make_qkv("random", 2, 2, grid, 64, "bhsd", seed=3)
    tk, tv = text_tensors(2, 2, 4, 64, "bhsd", seed=4)
    out, lse = vmonarch.attention(q, k, v, grid, layout="bhsd", return_lse=True, sink_frames=S, window_radius=r,
                                  text_k=tk, text_v=tv, text_lens=torch.tensor([4, 1]))
    want, want_lse = dense_all_keys(q, k, v, "bhsd", tk, tv, [4, 1])
    assert rel_l2(out, want) < 1e-12
    torch.testing.assert_close(lse, want_lse, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("S,r", [(1, None), (0, 1), (1, 1), (2, 0)])
def test_lse_bounds_and_unit_values(S, r):
    grid = (6, 2, 3)
    HW = 6
    q, k, v = make_qkv("video", 2, 2, grid, 64, "bshd", seed=5)
    tk, tv = text_tensors(2, 2, 3, 64, "bshd", seed=6)
    lens = [3, 0]
    out, lse = vmonarch.attention(q, k, torch.ones_like(v), grid, return_lse=True, sink_frames=S, window_radius=r,
                                  text_k=tk, text_v=torch.ones_like(tv), text_lens=lens)
    torch.testing.assert_close(out, torch.ones_like(out), rtol=0, atol=1e-12)  # rows sum to 1
    _, dense_lse = dense_all_keys(q, k, v, "bshd", tk, tv, lens)
    assert (lse <= dense_lse + 1e-12).all()                          # Monarch rows: a lower bound
    torch.testing.assert_close(lse[..., :HW], dense_lse[..., :HW])   # recomputed frame 0: exact
    assert (lse[..., HW:] < dense_lse[..., HW:] - 1e-6).any()


def test_no_nan_without_monarch_or_text_keys():
    # T = 2, r = 1: no row has a Monarch key frame; lens = 0: no valid text key.
    grid = (2, 1, 3)
    q, k, v = make_qkv("random", 1, 1, grid, 64, "bshd", seed=8)
    tk, tv = text_tensors(1, 1, 2, 64, "bshd", seed=9)
    out, lse = vmonarch.attention(q, k, v, grid, return_lse=True, recompute_first_frame=False, window_radius=1,
                                  text_k=tk, text_v=tv, text_lens=[0])
    want, want_lse = dense_all_keys(q, k, v, "bshd")
    assert torch.isfinite(out).all() and rel_l2(out, want) < 1e-12
    torch.testing.assert_close(lse, want_lse)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 2e-2)])
def test_low_precision_close_to_reference(dtype, tol, ref):
    grid = (4, 3, 5)
    q, k, v = make_qkv("video", 1, 2, grid, 64, "bshd", seed=11)
    tk, tv = text_tensors(1, 2, 7, 64, "bshd", seed=12)
    args = [x.to(dtype) for x in (q, k, v, tk, tv)]
    out = vmonarch.attention(*args[:3], grid, sink_frames=1, window_radius=1, text_k=args[3], text_v=args[4],
                             text_lens=[5])
    want, _ = reference(ref, *(x.double() for x in args[:3]), grid, "bshd", S=1, r=1, tk=args[3].double(),
                        tv=args[4].double(), lens=[5])
    assert out.dtype == dtype and rel_l2(out, want) < tol


# ---- joint sequences ------------------------------------------------------------------------------------

def joint_inputs(B, heads, grid, L, d, layout, seed):
    T, H, W = grid
    q, k, v = make_qkv("video", B, heads, (T, H, W), d, layout, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    tok = 1 if layout == "bshd" else 2
    shape = list(q.shape)
    shape[tok] = L
    text = [2.0 * torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(3)]
    return q, k, v, text


@pytest.mark.parametrize("text_first", [True, False])
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("grid,d,L,lens,S,r", [
    ((3, 2, 3), 64, 5, [5, 2], 0, None),
    ((5, 1, 7), 128, 4, [0, 4], 1, None),
    ((4, 2, 2), 64, 3, None, 1, 1),
    ((1, 3, 5), 64, 6, [3, 6], 0, None),   # T = 1
])
def test_joint_matches_joint_reference(text_first, layout, grid, d, L, lens, S, r, ref):
    q, k, v, text = joint_inputs(2, 2, grid, L, d, layout, seed=L + S)
    tok = 1 if layout == "bshd" else 2
    order = (lambda video, txt: torch.cat([txt, video], tok)) if text_first else (lambda video, txt: torch.cat([video, txt], tok))
    jq, jk, jv = (order(x, t) for x, t in zip((q, k, v), text))
    out, lse = vmonarch.joint_attention(jq, jk, jv, grid, L, text_first=text_first, text_lens=lens, layout=layout,
                                        return_lse=True, sink_frames=S, window_radius=r)
    want, want_lse = ref.joint_reference(*(to_bhsd(x, layout) for x in (jq, jk, jv)), frames=grid[0], text_len=L,
                                         text_first=text_first, text_lens=lens, return_lse=True, sink_frames=S,
                                         window_radius=r)
    assert out.shape == jq.shape and torch.isfinite(out).all()
    assert rel_l2(out, from_bhsd(want, layout)) < 1e-10
    torch.testing.assert_close(lse, want_lse, rtol=1e-10, atol=1e-10)
    if lens is not None:  # the same with a key-padding mask
        mask = torch.arange(L)[None] < torch.tensor(lens)[:, None]
        out_m = vmonarch.joint_attention(jq, jk, jv, grid, L, text_first=text_first, text_mask=mask, layout=layout,
                                         sink_frames=S, window_radius=r)
        assert torch.equal(out_m, out)


def test_joint_without_text_is_attention():
    grid = (3, 2, 3)
    q, k, v = make_qkv("video", 1, 2, grid, 64, "bshd", seed=2)
    torch.testing.assert_close(vmonarch.joint_attention(q, k, v, grid, 0), vmonarch.attention(q, k, v, grid),
                               rtol=0, atol=0)


# ---- argument errors ------------------------------------------------------------------------------------

def test_argument_errors():
    grid = (2, 2, 3)
    q, k, v = make_qkv("random", 2, 1, grid, 64, "bshd", seed=1)
    tk, tv = text_tensors(2, 1, 4, 64, "bshd", seed=2)
    with pytest.raises(ValueError, match="argument .sink_frames. is -1"):
        vmonarch.attention(q, k, v, grid, sink_frames=-1)
    with pytest.raises(TypeError, match="argument .sink_frames. is 1.0"):
        vmonarch.attention(q, k, v, grid, sink_frames=1.0)
    with pytest.raises(ValueError, match="argument .window_radius. is -1"):
        vmonarch.attention(q, k, v, grid, window_radius=-1)
    with pytest.raises(ValueError, match="text_k is given without text_v"):
        vmonarch.attention(q, k, v, grid, text_k=tk)
    with pytest.raises(ValueError, match="text_lens is given without"):
        vmonarch.attention(q, k, v, grid, text_lens=[1, 1])
    with pytest.raises(ValueError, match=r"extra_keys.lens\[1\]' is 5, expected 0..4"):
        vmonarch.attention(q, k, v, grid, text_k=tk, text_v=tv, text_lens=[4, 5])
    with pytest.raises(ValueError, match=r"text_lens has shape \[3\], expected \[2\]"):
        vmonarch.attention(q, k, v, grid, text_k=tk, text_v=tv, text_lens=[1, 2, 3])
    with pytest.raises(TypeError, match="text_lens has dtype"):
        vmonarch.attention(q, k, v, grid, text_k=tk, text_v=tv, text_lens=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"extra_keys.v.shape\[1\]' \(tokens\) is 3, expected 4"):
        vmonarch.attention(q, k, v, grid, text_k=tk, text_v=tv[:, :3])
    with pytest.raises(TypeError, match="text_v has dtype Float, expected Double like q"):
        vmonarch.attention(q, k, v, grid, text_k=tk, text_v=tv.float())
    with pytest.raises(ValueError, match=r"extra_keys.k.shape\[3\]' \(head_dim\) is 32, expected 64"):
        vmonarch.attention(q, k, v, grid, text_k=tk[..., :32], text_v=tv)
    with pytest.raises(ValueError, match="text_k has 3 dimensions"):
        vmonarch.attention(q, k, v, grid, text_k=tk[0], text_v=tv)

    jq, jk, jv = (torch.cat([x, t], 1) for x, t in zip((q, k, v), (tk, tv, tv)))
    with pytest.raises(ValueError, match="text_mask\\[1\\] is not a key-padding prefix"):
        vmonarch.joint_attention(jq, jk, jv, grid, 4, text_mask=torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]]).bool())
    with pytest.raises(ValueError, match=r"text_mask has shape \[2, 3\], expected \[2, 4\]"):
        vmonarch.joint_attention(jq, jk, jv, grid, 4, text_mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="text_mask has dtype"):
        vmonarch.joint_attention(jq, jk, jv, grid, 4, text_mask=torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="text_lens and text_mask are both given"):
        vmonarch.joint_attention(jq, jk, jv, grid, 4, text_lens=[1, 1], text_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"text_lens\[0\]' is 9, expected 0..4"):
        vmonarch.joint_attention(jq, jk, jv, grid, 4, text_lens=[9, 1])
    with pytest.raises(ValueError, match="argument .text_len. is -1"):
        vmonarch.joint_attention(jq, jk, jv, grid, -1)
    with pytest.raises(ValueError, match=r"q.shape\[1\]' \(tokens\) is 16, expected N \+ L = 12 \+ 3"):
        vmonarch.joint_attention(jq, jk, jv, grid, 3)
    with pytest.raises(ValueError, match="argument .sink_frames. is -2"):
        vmonarch.joint_attention(jq, jk, jv, grid, 4, sink_frames=-2)


# ---- torch.compile and FLOPs ----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph(backend):
    torch._dynamo.reset()
    grid, L = (3, 2, 3), 4
    q, k, v = (x.float() for x in make_qkv("video", 2, 2, grid, 64, "bshd", seed=3))
    tk, tv = (x.float() for x in text_tensors(2, 2, L, 64, "bshd", seed=4))
    mask = torch.tensor([[True] * 4, [True, True, False, False]])

    def f(q, k, v, tk, tv, mask):
        a = vmonarch.attention(q, k, v, grid, sink_frames=1, window_radius=1, text_k=tk, text_v=tv,
                               text_lens=mask.sum(1))
        jq, jk, jv = (torch.cat([x, t], 1) for x, t in zip((q, k, v), (tk, tk, tv)))
        o, lse = vmonarch.joint_attention(jq, jk, jv, grid, L, text_mask=mask, return_lse=True, sink_frames=1)
        return a * 2, o + 1, lse

    eager = f(q, k, v, tk, tv, mask)
    compiled = torch.compile(f, fullgraph=True, backend=backend)(q, k, v, tk, tv, mask)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("grid,heads,d,t,S,r,L", [
    ((24, 44, 80), 40, 128, 2, 0, None, 0), ((24, 44, 80), 40, 128, 1, 1, None, 0),
    ((24, 44, 80), 40, 128, 2, 1, 1, 0), ((16, 28, 52), 12, 128, 2, 30, None, 0),
    ((13, 30, 45), 48, 64, 2, 1, 0, 226), ((33, 45, 80), 24, 128, 2, 0, None, 256),
])
def test_flops_match_reference(grid, heads, d, t, S, r, L, ref):
    got = vmonarch.flops(grid, d, heads, iterations=t, sink_frames=S, window_radius=r, text_len=L)
    vm, dense = ref.flops(*grid, d=d, heads=heads, t=t, sink_frames=S, window_radius=r, extra_len=L)
    assert got.vmonarch == pytest.approx(vm, rel=1e-12) and got.dense == pytest.approx(dense, rel=1e-12)
    assert got.vmonarch == pytest.approx(got.r_steps + got.l_steps + got.recompute + got.exact, rel=1e-12)
    joint = vmonarch.flops(grid, d, heads, iterations=t, sink_frames=S, window_radius=r, text_len=L, joint=True)
    N = grid[0] * grid[1] * grid[2]
    assert joint.text_queries == pytest.approx(4 * L * (N + L) * d * heads)
    assert joint.vmonarch == pytest.approx(vm + joint.text_queries) and joint.dense == pytest.approx(4 * (N + L) ** 2 * d * heads)
