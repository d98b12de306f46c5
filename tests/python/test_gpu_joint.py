"""Exact key groups and joint text+video attention on a CUDA device (skipped without one or without CUDA
kernels): the operators against the CPU operator in float64 on the same rounded inputs, torch.compile and
CUDA-graph capture, and the joint processors in bfloat16. Run on the GPU machine:
scripts/gpu_python_suite.sh --all, or python3 -m pytest tests/python/test_gpu_joint.py.

Bounds: the operators relative L2 <= 1e-2 (bfloat16) / 3e-3 (float16) like test_gpu.py; the processors
relative L2 <= 2e-2 of the whole model's output (a bf16 model, like test_gpu.py's Wan checks) against the
stock processors at one frame and against the fp64 reference swapped in at several frames.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import vmonarch
from conftest import make_qkv, rel_l2

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

try:  # the processors need diffusers; the operator tests below do not
    import diffusers  # noqa: F401
    import joint_helpers as jh
except ImportError:
    jh = None

DEV = "cuda"
BOUND = 2e-2


def _module(name):
    import importlib

    return importlib.import_module(f"vmonarch.{name}")


# name: (model factory, inputs factory, latent height, width) with frame sizes off the kernels' tiles
MODELS = {
    "hunyuan_video": ("tiny_hunyuan", "hunyuan_inputs", 14, 18),        # 7 x 9 tokens per frame, d 64 / 128
    "hunyuan_video15": ("tiny_hunyuan15", "hunyuan15_inputs", 7, 9),
    "cogvideox": ("tiny_cogvideox", "cogvideox_inputs", 14, 18),        # d = 64 as CogVideoX-5B
    "mochi": ("tiny_mochi", "mochi_inputs", 14, 18),
}


def needs_kernels():
    if not vmonarch.cuda_built():
        pytest.skip("this vmonarch build has no CUDA kernels")


def _needs_joint_op():
    if jh is None:
        pytest.skip("the joint processors need diffusers")
    if not vmonarch.cuda_built():
        pytest.skip("this vmonarch build has no CUDA kernels")
    if not hasattr(vmonarch, "joint_attention"):
        pytest.skip("vmonarch.joint_attention is not in this build")


def _run_or_skip(model, inputs):
    return jh.run(model, inputs)


def _setup(name, head_dim, frames, dtype=torch.bfloat16):
    model_fn, inputs_fn, height, width = MODELS[name]
    make_model, make_inputs = getattr(jh, model_fn), getattr(jh, inputs_fn)
    model = make_model(dtype=dtype, device=DEV, head_dim=head_dim)
    kwargs = dict(frames=frames, height=height, width=width, dtype=dtype, device=DEV)
    if name == "cogvideox":
        kwargs["head_dim"] = head_dim
    return model, make_inputs(**kwargs)


CASES = [("hunyuan_video", 128), ("hunyuan_video", 64), ("hunyuan_video15", 128), ("cogvideox", 64), ("mochi", 128)]


@pytest.mark.parametrize("name,head_dim", CASES)
def test_one_frame_matches_stock_bf16(name, head_dim):
    _needs_joint_op()
    model, inputs = _setup(name, head_dim, frames=1)
    stock = jh.run(model, inputs)
    _module(name).enable(model)
    ours = _run_or_skip(model, inputs)
    _module(name).disable(model)
    assert torch.isfinite(ours).all()
    assert rel_l2(ours, stock) < BOUND


@pytest.mark.parametrize("name,head_dim", CASES)
@pytest.mark.parametrize("sink_frames", [0, 1])
def test_frames_match_reference_bf16(name, head_dim, sink_frames, ref):
    _needs_joint_op()
    model, inputs = _setup(name, head_dim, frames=5)
    module = _module(name)
    module.enable(model, sink_frames=sink_frames)
    ours = _run_or_skip(model, inputs)
    module.enable(model, attention_fn=jh.reference_joint_fn(ref), sink_frames=sink_frames)
    want = jh.run(model, inputs)
    module.disable(model)
    assert torch.isfinite(ours).all()
    assert rel_l2(ours, want) < BOUND


def test_float32_model_is_cast_to_bf16_with_a_warning():
    _needs_joint_op()
    model, inputs = _setup("mochi", 64, frames=3, dtype=torch.float32)
    stock = jh.run(model, inputs)
    vmonarch.mochi.enable(model, sink_frames=3)          # S = T: dense attention, so close to stock
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ours = _run_or_skip(model, inputs)
    vmonarch.mochi.disable(model)
    assert any("cast to torch.bfloat16" in str(w.message) for w in record)
    assert ours.dtype == torch.float32 and rel_l2(ours, stock) < BOUND


# ---- the operators against the CPU operator (float64 on the same rounded inputs) ---------------------------

OP_BOUND = {torch.bfloat16: 1e-2, torch.float16: 3e-3}


def _cpu64(*ts):
    return [None if t is None else t.detach().double().cpu() for t in ts]


def _text(B, L, heads, d, layout, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (B, L, heads, d) if layout == "bshd" else (B, heads, L, d)
    tk = (3 ** 0.5) * torch.randn(*shape, generator=g, dtype=torch.float64)
    tv = torch.randn(*shape, generator=g, dtype=torch.float64)
    return tk.to(DEV, dtype), tv.to(DEV, dtype)


# (B, heads, grid, d, dtype, layout, sink_frames, window_radius, text L, text_lens)
EXACT_CASES = [
    (1, 2, (5, 7, 9), 128, torch.bfloat16, "bshd", 1, None, 0, None),
    (2, 2, (4, 5, 13), 64, torch.float16, "bhsd", 2, 1, 0, None),
    (1, 2, (3, 4, 4), 128, torch.bfloat16, "bshd", 3, None, 0, None),            # S = T: dense
    (1, 3, (6, 1, 61), 64, torch.bfloat16, "bshd", 0, 0, 0, None),               # r = 0, prime HW
    (2, 2, (3, 8, 8), 64, torch.bfloat16, "bshd", 0, None, 226, [226, 100]),     # text only
    (2, 2, (5, 5, 13), 128, torch.float16, "bhsd", 1, 1, 256, [0, 256]),         # lens 0 and L
    (1, 2, (1, 7, 9), 128, torch.bfloat16, "bshd", 0, None, 19, None),           # T = 1
]


@pytest.mark.parametrize("B,heads,grid,d,dtype,layout,S,r,L,lens", EXACT_CASES)
@pytest.mark.parametrize("recompute", [True, False])
def test_attention_exact_groups_cuda_vs_cpu(B, heads, grid, d, dtype, layout, S, r, L, lens, recompute):
    needs_kernels()
    q, k, v = make_qkv("random", B, heads, grid, d, layout, dtype=dtype, device=DEV, seed=sum(grid) + d + L)
    tk, tv = _text(B, L, heads, d, layout, dtype, seed=L + 1) if L else (None, None)
    kw = dict(layout=layout, return_lse=True, recompute_first_frame=recompute, sink_frames=S, window_radius=r)
    out, lse = vmonarch.attention(q, k, v, grid, text_k=tk, text_v=tv, text_lens=lens, **kw)
    assert out.device.type == "cuda" and out.dtype == dtype and out.shape == q.shape
    q64, k64, v64, tk64, tv64 = _cpu64(q, k, v, tk, tv)
    want, want_lse = vmonarch.attention(q64, k64, v64, grid, text_k=tk64, text_v=tv64, text_lens=lens, **kw)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert rel_l2(out, want) <= OP_BOUND[dtype], rel_l2(out, want)
    torch.testing.assert_close(lse.double().cpu(), want_lse, rtol=2e-2, atol=5e-2)


# (B, heads, grid, d, dtype, layout, L, text_first, lens or mask, sink_frames, window_radius)
JOINT_CASES = [
    (1, 2, (3, 7, 9), 128, torch.bfloat16, "bshd", 256, False, None, 0, None),      # HunyuanVideo-like
    (1, 2, (4, 5, 9), 64, torch.bfloat16, "bshd", 226, True, None, 1, None),        # CogVideoX-like
    (2, 2, (5, 3, 7), 128, torch.float16, "bhsd", 33, True, [10, 0], 0, 1),
    (2, 2, (3, 4, 5), 64, torch.float16, "bshd", 40, False, "mask", 1, None),       # key-padding mask
    (1, 2, (2, 4, 5), 128, torch.bfloat16, "bshd", 600, False, [500], 0, None),     # L > N
]


def _lens_arg(spec, B, L):
    if spec == "mask":
        lens = torch.tensor([L // 3 + 7 * b for b in range(B)])
        return None, torch.arange(L).unsqueeze(0) < lens.unsqueeze(1)
    return spec, None


@pytest.mark.parametrize("B,heads,grid,d,dtype,layout,L,text_first,lens,S,r", JOINT_CASES)
def test_joint_attention_cuda_vs_cpu(B, heads, grid, d, dtype, layout, L, text_first, lens, S, r):
    needs_kernels()
    T, H, W = grid
    text_lens, text_mask = _lens_arg(lens, B, L)
    q, k, v = make_qkv("random", B, heads, (1, 1, T * H * W + L), d, layout, dtype=dtype, device=DEV, seed=L + d)
    kw = dict(text_first=text_first, layout=layout, return_lse=True, sink_frames=S, window_radius=r)
    cuda_lens = None if text_lens is None else torch.tensor(text_lens, device=DEV)  # read on the host
    cuda_mask = None if text_mask is None else text_mask.to(DEV)
    out, lse = vmonarch.joint_attention(q, k, v, grid, L, text_lens=cuda_lens, text_mask=cuda_mask, **kw)
    want, want_lse = vmonarch.joint_attention(*_cpu64(q, k, v), grid, L, text_lens=text_lens, text_mask=text_mask,
                                              **kw)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert rel_l2(out, want) <= OP_BOUND[dtype], rel_l2(out, want)
    torch.testing.assert_close(lse.double().cpu(), want_lse, rtol=2e-2, atol=5e-2)


def test_joint_attention_compile_fullgraph_cuda():
    needs_kernels()
    torch._dynamo.reset()
    grid, L = (3, 4, 6), 20
    q, k, v = make_qkv("random", 1, 2, (1, 1, 72 + L), 64, "bshd", dtype=torch.bfloat16, device=DEV, seed=3)

    def f(q, k, v):
        return vmonarch.joint_attention(q, k, v, grid, L, text_lens=[15], sink_frames=1) * 2

    want = f(q, k, v)
    got = torch.compile(f, fullgraph=True)(q, k, v)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_exact_groups_cuda_graph_capture():
    needs_kernels()
    grid, L = (4, 6, 10), 30
    q, k, v = make_qkv("random", 1, 2, grid, 128, "bshd", dtype=torch.bfloat16, device=DEV, seed=5)
    tk, tv = _text(1, L, 2, 128, "bshd", torch.bfloat16, seed=6)
    static = [x.clone() for x in (q, k, v, tk, tv)]

    def call(q, k, v, tk, tv):
        return vmonarch.attention(q, k, v, grid, sink_frames=1, window_radius=1, text_k=tk, text_v=tv,
                                  text_lens=[25], return_lse=True)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            call(*static)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = call(*static)
    fresh = make_qkv("random", 1, 2, grid, 128, "bshd", dtype=torch.bfloat16, device=DEV, seed=7)
    fresh = list(fresh) + list(_text(1, L, 2, 128, "bshd", torch.bfloat16, seed=8))
    for dst, src in zip(static, fresh):
        dst.copy_(src)
    graph.replay()
    want, want_lse = call(*fresh)
    torch.cuda.synchronize()
    assert torch.equal(out, want) and torch.equal(lse, want_lse)
