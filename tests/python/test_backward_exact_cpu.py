"""Gradients of vmonarch.attention with exact key groups (sink_frames, window_radius, text keys; spec §3b) and of
vmonarch.joint_attention (spec §3c) on the CPU, against torch.autograd through the executable spec in float64
(vmonarch_reference / joint_reference; detach_entropy=True is the paper's gradient, False the exact one)."""
from __future__ import annotations

import pytest
import torch

import vmonarch
from conftest import from_bhsd, make_qkv, to_bhsd


def text_tensors(B, heads, L, d, layout, seed):
    g = torch.Generator().manual_seed(seed)
    tk = 2.0 * torch.randn(B, heads, L, d, generator=g, dtype=torch.float64)
    tv = torch.randn(B, heads, L, d, generator=g, dtype=torch.float64)
    return tuple(from_bhsd(x, layout).contiguous() for x in (tk, tv))


def leaves(*xs):
    return tuple(None if x is None else x.detach().clone().requires_grad_(True) for x in xs)


def loss_of(out, lse, dout, dlse):
    loss = (out * dout).sum()
    return loss + (lse * dlse).sum() if dlse is not None else loss


def reference_grads(ref, q, k, v, tk, tv, lens, dout, dlse, grid, layout, entropy_grad, **opts):
    """Gradients of <out, dout> + <lse, dlse> through vmonarch_reference, in `layout` (text ones None without text)."""
    qb, kb, vb = leaves(*(to_bhsd(x, layout) for x in (q, k, v)))
    tkb, tvb = leaves(*(None if x is None else to_bhsd(x, layout) for x in (tk, tv)))
    extra = {} if tk is None else dict(extra_k=tkb, extra_v=tvb, extra_lens=lens)
    out, lse = ref.vmonarch_reference(qb, kb, vb, frames=grid[0], return_lse=True, detach_entropy=not entropy_grad,
                                      **extra, **opts)
    inputs = (qb, kb, vb) + (() if tk is None else (tkb, tvb))
    grads = torch.autograd.grad(loss_of(out, lse, to_bhsd(dout, layout), dlse), inputs)
    return tuple(from_bhsd(g, layout) for g in grads)


def vmonarch_grads(q, k, v, tk, tv, lens, dout, dlse, grid, layout, entropy_grad, t=2, recompute=True, S=0, r=None,
                   **extra_opts):
    q, k, v, tk, tv = leaves(q, k, v, tk, tv)
    out, lse = vmonarch.attention(q, k, v, grid=grid, layout=layout, return_lse=True, iterations=t,
                                  recompute_first_frame=recompute, sink_frames=S, window_radius=r, text_k=tk,
                                  text_v=tv, text_lens=lens, entropy_grad=entropy_grad, **extra_opts)
    inputs = (q, k, v) + (() if tk is None else (tk, tv))
    return torch.autograd.grad(loss_of(out, lse, dout, dlse), inputs)


def assert_grads_close(got, want, tol=1e-10):
    assert len(got) == len(want)
    for name, g, w in zip(["q", "k", "v", "text_k", "text_v"], got, want):
        assert g.shape == w.shape and g.dtype == torch.float64, name
        err = float((g - w).abs().max())
        bound = tol * max(1.0, float(w.abs().max()))
        assert err <= bound, f"d{name}: max error {err:.3e} > {bound:.3e}"


# (B, heads, grid, d, S, r, L, lens, t, recompute): S = 1, 2, >= T; r = 0, 1, >= T; text lens < L, = L, = 0;
# T = 1, odd T, prime HW; batch > 1 with different lens.
CASES = [
    (2, 2, (3, 2, 3), 8, 1, None, 0, None, 2, True),
    (1, 2, (5, 1, 7), 8, 2, None, 0, None, 2, False),
    (2, 1, (3, 1, 5), 8, 4, None, 3, [1, 3], 2, True),       # S >= T: dense attention
    (2, 2, (4, 2, 2), 8, 0, 0, 0, None, 2, True),
    (1, 2, (5, 1, 3), 8, 1, 1, 2, [2], 3, False),
    (2, 1, (3, 2, 2), 4, 0, 3, 2, None, 2, True),            # r >= T: dense attention
    (2, 2, (4, 1, 5), 8, 0, None, 3, [3, 0], 2, True),       # text only, lens = L and 0
    (2, 1, (1, 3, 5), 8, 1, None, 2, [1, 2], 1, False),      # T = 1
    (2, 2, (5, 1, 7), 8, 1, 0, 4, [2, 4], 1, True),          # t = 1, odd T, prime HW
    (1, 2, (3, 2, 3), 64, 1, 1, 5, [3], 2, True),            # d = 64
]


@pytest.mark.parametrize("B,heads,grid,d,S,r,L,lens,t,recompute", CASES)
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_grads_match_reference(B, heads, grid, d, S, r, L, lens, t, recompute, layout, entropy_grad, ref):
    seed = hash((B, heads, grid, S, r, L)) % 1000
    q, k, v = make_qkv("video", B, heads, grid, d, layout, seed=seed)
    tk, tv = text_tensors(B, heads, L, d, layout, seed + 1) if L > 0 else (None, None)
    dout = make_qkv("random", B, heads, grid, d, layout, seed=seed + 2)[2]
    dlse = torch.randn(B, heads, q.shape[1 if layout == "bshd" else 2], dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed + 3))
    opts = dict(t=t, recompute=recompute, S=S, r=r)
    got = vmonarch_grads(q, k, v, tk, tv, lens, dout, dlse, grid, layout, entropy_grad, **opts)
    want = reference_grads(ref, q, k, v, tk, tv, lens, dout, dlse, grid, layout, entropy_grad, t=t,
                           recompute_first_frame=recompute, sink_frames=S, window_radius=r)
    assert_grads_close(got, want)


def test_float32_close_to_float64():
    grid = (4, 2, 3)
    q, k, v = make_qkv("video", 2, 2, grid, 16, "bshd", seed=61)
    tk, tv = text_tensors(2, 2, 5, 16, "bshd", 62)
    dout = make_qkv("random", 2, 2, grid, 16, "bshd", seed=63)[0]
    opts = dict(S=1, r=1)
    g64 = vmonarch_grads(q, k, v, tk, tv, [5, 2], dout, None, grid, "bshd", False, **opts)
    g32 = vmonarch_grads(*(x.float() for x in (q, k, v, tk, tv)), [5, 2], dout.float(), None, grid, "bshd", False,
                         **opts)
    for a, b in zip(g32, g64):
        assert a.dtype == torch.float32
        assert float((a.double() - b).norm() / b.norm()) < 1e-4


@pytest.mark.parametrize("entropy_grad", [False, True])
def test_lse_output_gradient_alone_and_saved_mode(entropy_grad, ref):
    grid = (4, 1, 3)
    q, k, v = make_qkv("random", 2, 2, grid, 8, "bshd", seed=5)
    tk, tv = text_tensors(2, 2, 3, 8, "bshd", 6)
    lens = [2, 3]
    dlse = torch.randn(2, 2, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    zero = torch.zeros_like(v)
    opts = dict(S=1, r=0)
    want = reference_grads(ref, q, k, v, tk, tv, lens, zero, dlse, grid, "bshd", entropy_grad, sink_frames=1,
                           window_radius=0)
    for save_state in (False, True):
        qq, kk, vv, tkk, tvv = leaves(q, k, v, tk, tv)
        _, lse = vmonarch.attention(qq, kk, vv, grid, return_lse=True, sink_frames=1, window_radius=0, text_k=tkk,
                                    text_v=tvv, text_lens=lens, entropy_grad=entropy_grad, save_state=save_state)
        got = torch.autograd.grad((lse * dlse).sum(), (qq, kk, vv, tkk, tvv))
        assert_grads_close(got, want)
    dout = make_qkv("random", 2, 2, grid, 8, "bshd", seed=8)[0]
    lean = vmonarch_grads(q, k, v, tk, tv, lens, dout, dlse, grid, "bshd", entropy_grad, **opts)
    saved = vmonarch_grads(q, k, v, tk, tv, lens, dout, dlse, grid, "bshd", entropy_grad, save_state=True, **opts)
    for a, b in zip(lean, saved):
        assert float((a - b).abs().max()) <= 1e-13 * float(b.abs().max())


def test_plain_op_is_differentiable(ref):
    """torch.ops.vmonarch.attention_exact_groups (the inference op) has the paper's gradient, lean mode."""
    grid = (3, 2, 2)
    q, k, v = make_qkv("random", 1, 2, grid, 8, "bshd", seed=81)
    tk, tv = text_tensors(1, 2, 2, 8, "bshd", 82)
    dout = make_qkv("random", 1, 2, grid, 8, "bshd", seed=83)[0]
    want = reference_grads(ref, q, k, v, tk, tv, None, dout, None, grid, "bshd", False, sink_frames=1)
    for return_lse in (False, True):
        qq, kk, vv, tkk, tvv = leaves(q, k, v, tk, tv)
        out, _ = torch.ops.vmonarch.attention_exact_groups(qq, kk, vv, list(grid), 2, 0.1, True, None, "bshd",
                                                           return_lse, 1, None, tkk, tvv, None)
        assert_grads_close(torch.autograd.grad((out * dout).sum(), (qq, kk, vv, tkk, tvv)), want)


def test_text_keys_without_grad_and_checkpoint_and_compile(ref):
    grid = (3, 1, 4)
    q, k, v = make_qkv("video", 1, 2, grid, 8, "bhsd", seed=91)
    tk, tv = text_tensors(1, 2, 3, 8, "bhsd", 92)
    dout = make_qkv("random", 1, 2, grid, 8, "bhsd", seed=93)[1]
    want = reference_grads(ref, q, k, v, tk, tv, [2], dout, None, grid, "bhsd", False, sink_frames=1,
                           window_radius=1)[:3]

    def attend(q, k, v):  # text keys that need no gradient
        return vmonarch.attention(q, k, v, grid, layout="bhsd", sink_frames=1, window_radius=1, text_k=tk, text_v=tv,
                                  text_lens=[2])

    qq, kk, vv = leaves(q, k, v)
    out = torch.utils.checkpoint.checkpoint(attend, qq, kk, vv, use_reentrant=False)
    assert_grads_close(torch.autograd.grad((out * dout).sum(), (qq, kk, vv)), want)
    compiled = torch.compile(attend, fullgraph=True)
    qq, kk, vv = leaves(q, k, v)
    assert_grads_close(torch.autograd.grad((compiled(qq, kk, vv) * dout).sum(), (qq, kk, vv)), want)


def test_gradcheck_tiny():
    # The exact gradient is the derivative of the forward: finite differences agree (all five inputs).
    grid = (3, 1, 2)
    q, k, v = make_qkv("random", 1, 1, grid, 3, "bhsd", seed=71)
    tk, tv = text_tensors(1, 1, 2, 3, "bhsd", 72)
    for S, r, lens in ((1, None, [1]), (0, 0, [2]), (1, 1, [0])):
        def f(q, k, v, tk, tv, S=S, r=r, lens=lens):
            return vmonarch.attention(q, k, v, grid, layout="bhsd", return_lse=True, clamp=0.3, sink_frames=S,
                                      window_radius=r, text_k=tk, text_v=tv, text_lens=lens, entropy_grad=True)

        assert torch.autograd.gradcheck(f, leaves(q, k, v, tk, tv), eps=1e-6, atol=1e-7, rtol=1e-5)


# ---- joint sequences ------------------------------------------------------------------------------------
def joint_sequence(B, heads, grid, L, d, layout, text_first, seed):
    q, k, v = make_qkv("video", B, heads, grid, d, layout, seed=seed)
    tok = 1 if layout == "bshd" else 2
    shape = list(q.shape)
    shape[tok] = L
    g = torch.Generator().manual_seed(seed + 1)
    text = [2.0 * torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(3)]
    return tuple(torch.cat([t, x] if text_first else [x, t], tok) for x, t in zip((q, k, v), text))


@pytest.mark.parametrize("text_first", [True, False])
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("entropy_grad", [False, True])
@pytest.mark.parametrize("grid,L,lens,S,r,t,recompute", [
    ((3, 2, 3), 4, [4, 2], 0, None, 2, True),
    ((5, 1, 7), 3, [0, 3], 1, None, 2, False),
    ((4, 2, 2), 2, None, 1, 1, 1, True),
    ((1, 3, 5), 5, [3, 5], 0, None, 2, True),   # T = 1
    ((3, 1, 3), 0, None, 1, None, 2, True),     # no text: attention()
])
def test_joint_grads_match_joint_reference(text_first, layout, entropy_grad, grid, L, lens, S, r, t, recompute, ref):
    jq, jk, jv = joint_sequence(2, 2, grid, L, 8, layout, text_first, seed=L + 10 * S)
    tok = 1 if layout == "bshd" else 2
    g = torch.Generator().manual_seed(3)
    dout = torch.randn(jv.shape, generator=g, dtype=torch.float64)
    dlse = torch.randn(2, 2, jq.shape[tok], generator=g, dtype=torch.float64)
    opts = dict(sink_frames=S, window_radius=r)
    qb, kb, vb = leaves(*(to_bhsd(x, layout) for x in (jq, jk, jv)))
    out, lse = ref.joint_reference(qb, kb, vb, frames=grid[0], text_len=L, text_first=text_first, text_lens=lens,
                                   return_lse=True, t=t, recompute_first_frame=recompute,
                                   detach_entropy=not entropy_grad, **opts)
    want = [from_bhsd(x, layout) for x in torch.autograd.grad(loss_of(out, lse, to_bhsd(dout, layout), dlse),
                                                              (qb, kb, vb))]
    masks = [None] if lens is None else [None, torch.arange(L)[None] < torch.tensor(lens)[:, None]]
    for mask in masks:
        q, k, v = leaves(jq, jk, jv)
        out, lse = vmonarch.joint_attention(q, k, v, grid, L, text_first=text_first, layout=layout, return_lse=True,
                                            text_lens=lens if mask is None else None, text_mask=mask, iterations=t,
                                            recompute_first_frame=recompute, entropy_grad=entropy_grad, **opts)
        assert_grads_close(torch.autograd.grad(loss_of(out, lse, dout, dlse), (q, k, v)), want)


def test_joint_plain_op_and_gradcheck(ref):
    grid = (3, 1, 2)
    jq, jk, jv = joint_sequence(1, 1, grid, 2, 3, "bhsd", False, seed=5)
    mask = torch.tensor([[True, False]])
    dout = torch.randn(jv.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    qb, kb, vb = leaves(jq, jk, jv)
    want = torch.autograd.grad((ref.joint_reference(qb, kb, vb, frames=3, text_len=2, text_lens=[1], sink_frames=1,
                                                    detach_entropy=True) * dout).sum(), (qb, kb, vb))
    for return_lse in (False, True):  # the inference op: paper gradient, the mask's lengths
        q, k, v = leaves(jq, jk, jv)
        out, _ = torch.ops.vmonarch.joint_attention(q, k, v, list(grid), 2, False, None, mask, 2, 0.1, True, None,
                                                    "bhsd", return_lse, 1, None)
        assert_grads_close(torch.autograd.grad((out * dout).sum(), (q, k, v)), want)

    def f(q, k, v):
        return vmonarch.joint_attention(q, k, v, grid, 2, text_lens=[1], layout="bhsd", return_lse=True, clamp=0.3,
                                        sink_frames=1, entropy_grad=True)

    assert torch.autograd.gradcheck(f, leaves(jq, jk, jv), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_joint_mask_errors_on_the_training_path():
    grid = (2, 1, 2)
    q, k, v = leaves(*joint_sequence(2, 1, grid, 3, 4, "bshd", False, seed=1))
    with pytest.raises(ValueError, match=r"text_mask\[1\] is not a key-padding prefix"):
        vmonarch.joint_attention(q, k, v, grid, 3, text_mask=torch.tensor([[True, False, False], [False, True, True]]))
    with pytest.raises(TypeError, match="text_mask has dtype Long, expected torch.bool"):
        vmonarch.joint_attention(q, k, v, grid, 3, text_mask=torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"text_lens\[0\].*is 4, expected 0..3"):
        vmonarch.joint_attention(q, k, v, grid, 3, text_lens=[4, 1])


def test_joint_text_mask_errors_are_the_forwards_on_the_training_path():
    """A text_mask takes one check whether gradients are wanted or not: the training operator gets the mask and
    raises the forward operator's own errors (type and message)."""
    grid = (2, 1, 2)
    jq, jk, jv = joint_sequence(2, 1, grid, 3, 4, "bshd", True, seed=2)
    bad = [dict(text_mask=torch.tensor([[True, True, False], [True, False, True]])),     # not a prefix (row 1)
           dict(text_mask=torch.tensor([[False, True, True], [True, True, True]])),     # not a prefix (row 0)
           dict(text_mask=torch.ones(2, 3, dtype=torch.uint8)),
           dict(text_mask=torch.ones(2, 4, dtype=torch.bool)),
           dict(text_mask=torch.ones(3, dtype=torch.bool)),
           dict(text_mask=torch.ones(2, 3, dtype=torch.bool), text_lens=[1, 2])]
    for kwargs in bad:
        with pytest.raises((TypeError, ValueError)) as forward:
            vmonarch.joint_attention(jq, jk, jv, grid, 3, text_first=True, **kwargs)
        with pytest.raises(forward.type) as training:
            vmonarch.joint_attention(*leaves(jq, jk, jv), grid, 3, text_first=True, **kwargs)
        assert str(training.value) == str(forward.value), kwargs
    with pytest.raises(ValueError, match=r"text_mask\[1\] is not a key-padding prefix \(True at 2 after False at 1\)"):
        vmonarch.joint_attention(*leaves(jq, jk, jv), grid, 3, text_first=True, **bad[0])


def test_joint_text_mask_trains_under_compile(ref):
    """The training path with a text_mask compiles as one graph (the mask goes to the operator, its fake kernel
    gives the shapes) and its gradients are the mask's lengths' gradients."""
    grid = (3, 1, 2)
    L, lens = 3, [2, 0]
    jq, jk, jv = joint_sequence(2, 2, grid, L, 4, "bhsd", False, seed=7)
    mask = torch.arange(L)[None] < torch.tensor(lens)[:, None]
    dout = torch.randn(jv.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    qb, kb, vb = leaves(jq, jk, jv)
    want = torch.autograd.grad((ref.joint_reference(qb, kb, vb, frames=grid[0], text_len=L, text_lens=lens,
                                                    sink_frames=1, detach_entropy=True) * dout).sum(), (qb, kb, vb))

    def attend(q, k, v):
        return vmonarch.joint_attention(q, k, v, grid, L, text_mask=mask, layout="bhsd", sink_frames=1)

    for run in (attend, torch.compile(attend, fullgraph=True)):
        q, k, v = leaves(jq, jk, jv)
        assert_grads_close(torch.autograd.grad((run(q, k, v) * dout).sum(), (q, k, v)), want)


def test_opcheck_exact_backward_ops():
    """Schema and fake kernels of the training and backward operators of exact groups and joint sequences."""
    grid = [2, 1, 3]
    q, k, v = make_qkv("random", 2, 2, tuple(grid), 4, "bshd", seed=101)
    tk, tv = text_tensors(2, 2, 3, 4, "bshd", 102)
    lens = torch.tensor([3, 1])
    for save_state in (False, True):
        torch.library.opcheck(torch.ops.vmonarch.attention_exact_train.default,
                              (q, k, v, grid, 2, 0.1, True, None, "bshd", 1, 0, tk, tv, lens, False, False, save_state),
                              test_utils=("test_schema", "test_faketensor"))
    out, lse, saved = torch.ops.vmonarch.attention_exact_train(q, k, v, grid, 2, 0.1, True, None, "bshd", 1, 0, tk, tv,
                                                               lens, False, False, True)
    dout = torch.randn_like(out)
    for s in (None, saved):
        torch.library.opcheck(torch.ops.vmonarch.attention_exact_backward.default,
                              (q, k, v, out, lse, dout, None, grid, 2, 0.1, True, None, "bshd", 1, 0, tk, tv, lens,
                               False, False, s), test_utils=("test_schema", "test_faketensor"))
    jq, jk, jv = joint_sequence(2, 2, tuple(grid), 3, 4, "bshd", True, seed=103)
    torch.library.opcheck(torch.ops.vmonarch.joint_attention_train.default,
                          (jq, jk, jv, grid, 3, True, lens, None, 2, 0.1, True, None, "bshd", 1, None, False, False),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.vmonarch.joint_attention_train.default,
                          (jq, jk, jv, grid, 3, True, None, torch.tensor([[True, False, False], [True, True, True]])),
                          test_utils=("test_schema", "test_faketensor"))
    jout, jlse = torch.ops.vmonarch.joint_attention_train(jq, jk, jv, grid, 3, True, lens)
    torch.library.opcheck(torch.ops.vmonarch.joint_attention_backward.default,
                          (jq, jk, jv, jout, jlse, torch.randn_like(jout), None, grid, 3, True, lens),
                          test_utils=("test_schema", "test_faketensor"))
