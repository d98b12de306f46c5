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
