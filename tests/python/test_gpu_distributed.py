"""vmonarch.distributed on GPUs with NCCL, against one GPU in bfloat16 (skipped without CUDA).

    python3 -m pytest tests/python/test_gpu_distributed.py                        # one GPU (world size 1)
    torchrun --nproc-per-node=8 -m pytest tests/python/test_gpu_distributed.py    # 2..8 GPUs

At world size 1 the exchange itself (packing, all-to-all, strided views into the kernels) still runs through
the internal path, so one GPU checks everything but the traffic between devices.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

import vmonarch
import vmonarch.distributed as vd
from conftest import make_qkv, reference_attention, rel_l2

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# the same kernels on the same rows: only the order of independent operations may differ
SAME_AS_ONE_GPU = 2e-3


@pytest.fixture(scope="module")
def group():
    if not vmonarch.cuda_built():
        pytest.skip("this vmonarch build has no CUDA kernels")
    created = False
    if not dist.is_initialized():
        if "RANK" in os.environ:                       # torchrun
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        else:
            from distributed_helpers import free_port

            dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1,
                                    device_id=torch.device("cuda", torch.cuda.current_device()))
        created = True
    yield dist.group.WORLD
    if created:
        dist.destroy_process_group()


def _rows(x, layout, start, stop):
    return x[:, start:stop] if layout == "bshd" else x[:, :, start:stop]


# grid, batch, heads, d, layout, shards, chunks
CASES = [
    ((5, 9, 15), 1, 12, 128, "bshd", "split", 1),      # Wan-1.3B's 12 heads (uneven on 5, 7, 8 GPUs)
    ((3, 7, 11), 2, 5, 64, "bhsd", "padded", 2),       # 231 tokens, batch 2
    ((21, 9, 16), 1, 40, 128, "bshd", "split", 4),     # Wan-14B's 21 frames and 40 heads
    ((4, 1, 97), 1, 3, 128, "bhsd", "split", 2),       # prime HW, fewer heads than ranks on 4+ GPUs
]


@pytest.mark.parametrize("grid,B,heads,d,layout,shards,chunks", CASES)
def test_matches_one_gpu_bf16(group, grid, B, heads, d, layout, shards, chunks):
    world, rank = dist.get_world_size(), dist.get_rank()
    dev = torch.device("cuda", torch.cuda.current_device())
    N = grid[0] * grid[1] * grid[2]
    q, k, v = make_qkv("video", B, heads, grid, d, layout, dtype=torch.bfloat16, seed=N + heads)
    q, k, v = (x.to(dev) for x in (q, k, v))
    want = vmonarch.attention(q, k, v, grid=grid, layout=layout)
    held, valid = vd.token_split(N, world, shards)
    start = sum(valid[:rank])
    local = []
    for x in (q, k, v):
        mine = _rows(x, layout, start, start + valid[rank])
        pad = held[rank] - valid[rank]
        if pad:
            mine = torch.cat([mine, torch.randn_like(_rows(x, layout, 0, pad))], dim=1 if layout == "bshd" else 2)
        local.append(mine.contiguous())
    if world == 1:
        got = vd._ulysses(*local, grid, group, layout, held, valid, chunks, vd._default_attention, {})
    else:
        got = vd.ulysses_attention(*local, grid, layout=layout, shards=shards, chunks=chunks)
    assert got.dtype == torch.bfloat16 and got.device == dev
    if valid[rank]:
        err = rel_l2(_rows(got, layout, 0, valid[rank]), _rows(want, layout, start, start + valid[rank]))
        assert err <= SAME_AS_ONE_GPU, err
    assert (_rows(got, layout, valid[rank], held[rank]) == 0).all()


def test_against_the_fp64_reference(group, ref):
    world, rank = dist.get_world_size(), dist.get_rank()
    dev = torch.device("cuda", torch.cuda.current_device())
    grid, heads = (3, 6, 7), 6
    q, k, v = make_qkv("video", 1, heads, grid, 128, "bshd", dtype=torch.bfloat16, seed=5)
    want = reference_attention(ref, q, k, v, grid, "bshd", return_lse=False)
    held, valid = vd.token_split(126, world)
    start = sum(valid[:rank])
    local = [x[:, start:start + held[rank]].to(dev) for x in (q, k, v)]
    if world == 1:
        got = vd._ulysses(*local, grid, group, "bshd", held, valid, 2, vd._default_attention, {})
    else:
        got = vd.ulysses_attention(*local, grid, chunks=2)
    assert rel_l2(got, want[:, start:start + held[rank]]) <= 1e-2


def test_world_size_one_is_the_operator(group):
    if dist.get_world_size() != 1:
        pytest.skip("world size 1 only")
    q, k, v = make_qkv("random", 1, 4, (3, 5, 7), 128, "bshd", dtype=torch.bfloat16, device="cuda")
    assert torch.equal(vd.ulysses_attention(q, k, v, (3, 5, 7)), vmonarch.attention(q, k, v, grid=(3, 5, 7)))


def test_wan_context_parallel_bf16(group):
    """A tiny random-weight Wan under ContextParallelConfig(ulysses_degree=P) against the same model on one GPU."""
    world = dist.get_world_size()
    if world == 1:
        pytest.skip("context parallelism needs 2+ GPUs (torchrun --nproc-per-node=P)")
    pytest.importorskip("diffusers")
    import vmonarch.wan
    from diffusers import ContextParallelConfig
    from wan_helpers import run, tiny_inputs, tiny_wan

    dev = torch.device("cuda", torch.cuda.current_device())
    heads = 2 * world + 1                                  # uneven heads
    inputs = tiny_inputs(frames=3, height=4 * world, width=6, dtype=torch.bfloat16, device=dev)
    single = tiny_wan(heads=heads, head_dim=128, dtype=torch.bfloat16, device=dev)
    vmonarch.wan.enable(single)
    want = run(single, inputs)
    model = tiny_wan(heads=heads, head_dim=128, dtype=torch.bfloat16, device=dev)
    vmonarch.wan.enable(model)
    model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
    got = run(model, inputs)
    assert rel_l2(got, want) <= 5e-3


# --- the joint text+video form (spec §3c) ----------------------------------------------------------------
def _joint_or_skip(fn, *args, **kwargs):
    """fn's result, or a skip while the joint op has no CUDA path in this build (NotImplementedError)."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as e:
        pytest.skip(f"vmonarch.joint_attention has no CUDA path for this call in this build: {e}")


def _joint_local(x, layout, rank, N, L, text_first, held, valid, t_held, t_valid, replicated):
    """This rank's rows of the joint sequence x: its video rows and its text rows (all of them when replicated),
    text first or last, each padded with noise to its held count."""
    def padded(part, rows):
        if rows == 0:
            return part
        return torch.cat([part, torch.randn_like(_rows(x, layout, 0, rows))], dim=1 if layout == "bshd" else 2)

    video_at, text_at = (L, 0) if text_first else (0, N)
    a = video_at + sum(valid[:rank])
    b = text_at + (0 if replicated else sum(t_valid[:rank]))
    video = padded(_rows(x, layout, a, a + valid[rank]), held[rank] - valid[rank])
    text = padded(_rows(x, layout, b, b + t_valid[rank]), t_held[rank] - t_valid[rank])
    return torch.cat([text, video] if text_first else [video, text], dim=1 if layout == "bshd" else 2).contiguous()


# grid, batch, heads, d, layout, L, text_first, text_lens, text_shards
JOINT_CASES = [
    ((5, 9, 15), 1, 24, 128, "bshd", 256, False, [200], None),      # HunyuanVideo-like: text last, 24 heads
    ((13, 6, 9), 1, 48, 64, "bshd", 226, True, None, None),          # CogVideoX-like: text first, d 64, 48 heads
    ((3, 7, 11), 2, 5, 64, "bhsd", 17, False, [17, 9], "split"),     # sharded text, batch 2, uneven heads
    ((4, 1, 97), 1, 3, 128, "bshd", 31, True, [30], "padded"),       # prime HW, fewer heads than ranks on 4+ GPUs
]


@pytest.mark.parametrize("grid,B,heads,d,layout,L,text_first,text_lens,text_shards", JOINT_CASES)
def test_joint_matches_one_gpu_bf16(group, grid, B, heads, d, layout, L, text_first, text_lens, text_shards):
    from vmonarch._ulysses_joint import _default_joint_attention, _ulysses_joint

    world, rank = dist.get_world_size(), dist.get_rank()
    dev = torch.device("cuda", torch.cuda.current_device())
    N = grid[0] * grid[1] * grid[2]
    q, k, v = make_qkv("video", B, heads, (1, 1, N + L), d, layout, dtype=torch.bfloat16, seed=N + L)
    q, k, v = (x.to(dev) for x in (q, k, v))
    options = dict(text_first=text_first, text_lens=text_lens)
    want = _joint_or_skip(vmonarch.joint_attention, q, k, v, grid, L, layout=layout, **options)
    held, valid = vd.token_split(N, world)
    replicated = text_shards is None
    t_held, t_valid = ([L] * world, [L] * world) if replicated else vd.token_split(L, world, text_shards)
    local = [_joint_local(x, layout, rank, N, L, text_first, held, valid, t_held, t_valid, replicated)
             for x in (q, k, v)]
    if world == 1:
        got = _joint_or_skip(_ulysses_joint, *local, grid, L, group, layout, held, valid, t_held, t_valid, replicated,
                             _default_joint_attention, options)
    else:
        got = _joint_or_skip(vd.ulysses_joint_attention, *local, grid, L, layout=layout, text_shards=text_shards,
                             **options)
    assert got.dtype == torch.bfloat16 and got.device == dev
    want_local = _joint_local(want, layout, rank, N, L, text_first, held, valid, t_held, t_valid, replicated)
    pad_rows = torch.zeros(held[rank] + t_held[rank], dtype=torch.bool)
    video_at, text_at = (t_held[rank], 0) if text_first else (0, held[rank])
    pad_rows[video_at + valid[rank]:video_at + held[rank]] = True
    pad_rows[text_at + t_valid[rank]:text_at + t_held[rank]] = True
    axis = 1 if layout == "bshd" else 2
    rows_ = (~pad_rows).nonzero().flatten().to(dev)
    assert rel_l2(got.index_select(axis, rows_), want_local.index_select(axis, rows_)) <= SAME_AS_ONE_GPU
    assert (got.index_select(axis, pad_rows.nonzero().flatten().to(dev)) == 0).all()


def test_joint_models_context_parallel_bf16(group):
    """Tiny random-weight HunyuanVideo and CogVideoX under ContextParallelConfig(ulysses_degree=P) with vmonarch's
    context_parallel_plan() against the same model on one GPU."""
    world = dist.get_world_size()
    if world == 1:
        pytest.skip("context parallelism needs 2+ GPUs (torchrun --nproc-per-node=P)")
    pytest.importorskip("diffusers")
    import vmonarch.cogvideox
    import vmonarch.hunyuan_video
    import joint_helpers as jh
    from diffusers import ContextParallelConfig

    dev = torch.device("cuda", torch.cuda.current_device())
    cases = [(vmonarch.hunyuan_video, jh.tiny_hunyuan,
              lambda: jh.hunyuan_inputs(frames=4 * world, height=14, width=18, dtype=torch.bfloat16, device=dev)),
             (vmonarch.cogvideox, jh.tiny_cogvideox,
              lambda: jh.cogvideox_inputs(frames=4 * world, height=14, width=18, head_dim=64, dtype=torch.bfloat16,
                                          device=dev))]
    for module, factory, inputs in cases:
        head_dim = 64 if module is vmonarch.cogvideox else 128
        single = factory(dtype=torch.bfloat16, device=dev, head_dim=head_dim)
        module.enable(single)
        want = _joint_or_skip(jh.run, single, inputs())
        model = factory(dtype=torch.bfloat16, device=dev, head_dim=head_dim)
        module.enable(model)
        model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world),
                                 cp_plan=module.context_parallel_plan())
        got = _joint_or_skip(jh.run, model, inputs())
        assert rel_l2(got, want) <= 5e-3, module.__name__
