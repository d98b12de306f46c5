"""The joint text+video processors in bfloat16 on a CUDA device with the library's joint op (skipped without a
device, without CUDA kernels, or while vmonarch.joint_attention is missing or raises NotImplementedError
for CUDA tensors). Run on the GPU machine: scripts/gpu_python_suite.sh --all, or
python3 -m pytest tests/python/test_gpu_joint.py.

Bounds: relative L2 <= 2e-2 of the whole model's output (a bf16 model, like test_gpu.py's Wan checks)
against the stock processors at one frame and against the fp64 reference swapped in at several frames.
"""
from __future__ import annotations

import warnings

import pytest
import torch

import vmonarch
from conftest import rel_l2

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
pytest.importorskip("diffusers")

import joint_helpers as jh  # noqa: E402

DEV = "cuda"
BOUND = 2e-2


def _module(name):
    import importlib

    return importlib.import_module(f"vmonarch.{name}")


# name: (model factory, inputs factory, latent height, width) with frame sizes off the kernels' tiles
MODELS = {
    "hunyuan_video": (jh.tiny_hunyuan, jh.hunyuan_inputs, 14, 18),        # 7 x 9 tokens per frame, d 64 / 128
    "hunyuan_video15": (jh.tiny_hunyuan15, jh.hunyuan15_inputs, 7, 9),
    "cogvideox": (jh.tiny_cogvideox, jh.cogvideox_inputs, 14, 18),        # d = 64 as CogVideoX-5B
    "mochi": (jh.tiny_mochi, jh.mochi_inputs, 14, 18),
}


def _needs_joint_op():
    if not vmonarch.cuda_built():
        pytest.skip("this vmonarch build has no CUDA kernels")
    if not hasattr(vmonarch, "joint_attention"):
        pytest.skip("vmonarch.joint_attention is not in this build")


def _run_or_skip(model, inputs):
    try:
        return jh.run(model, inputs)
    except NotImplementedError as e:
        pytest.skip(f"the joint op has no CUDA path in this build: {e}")


def _setup(name, head_dim, frames, dtype=torch.bfloat16):
    make_model, make_inputs, height, width = MODELS[name]
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
