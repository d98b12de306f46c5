#!/usr/bin/env python3
"""Scaling of VMonarch under Ulysses sequence parallelism (vmonarch.distributed) on 1..8 GPUs with NCCL.

    torchrun --nproc-per-node=P bench/ulysses_bench.py                 # P = 1, 2, 4 or 8
    torchrun --nproc-per-node=P bench/ulysses_bench.py --json out.json --chunks 1,2,4 --blocks 2,4

Two measurements, bf16, batch 1, Wan2.1-14B at 81x720x1280 (latent grid 21x45x80, N = 75,600 tokens,
40 heads, d = 128):
1. the self-attention layer: each rank holds N/P tokens of q, k, v for all heads. Printed per chunk count
   (the heads of a rank pipelined in groups, exchange of group c+1 behind the attention of group c): the
   whole ulysses_attention call, its local attention alone (this rank's heads over all N tokens), the two
   exchanges alone (the same call with the attention replaced by an empty output), and the parallel
   efficiency t1 / (P * tP) against vmonarch.attention of all 40 heads on one GPU (measured in this run).
2. the transformer forward (random weights, text length 512): `--blocks` depths timed under
   enable_parallelism(ContextParallelConfig(ulysses_degree=P)) with every block's self-attention on
   VMonarch, extrapolated linearly to 40 blocks like bench/wan_e2e.py, against the same model on one GPU.
Times are medians over --reps after --warmup, CUDA events, the slowest rank's time (all_reduce MAX). With
P = 1 the exchanges still run (at one rank) so that their cost shows. Rank 0 prints a table.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exact_groups_common import write_json  # noqa: E402
from train_bench_common import check_outputs, median_ms  # noqa: E402

CUDA = torch.device("cuda")

GRID, HEADS, D = (21, 45, 80), 40, 128


def timed(fn, warmup: int, reps: int) -> float:
    """Median seconds of fn() on this rank (every call after a barrier), then the maximum over ranks."""
    t = torch.tensor([median_ms(fn, CUDA, warmup, reps, before=dist.barrier) / 1e3], device="cuda")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def layer(args, world: int, rank: int) -> list:
    import vmonarch
    import vmonarch.distributed as vd

    N = math.prod(GRID)
    held, valid = vd.token_split(N, world)
    g = torch.Generator(device="cuda").manual_seed(rank)
    q, k, v = (torch.randn(1, held[rank], HEADS, D, device="cuda", dtype=torch.bfloat16, generator=g)
               for _ in range(3))
    opts = dict(iterations=args.iterations)
    rows = []
    with torch.inference_mode():
        # one GPU, all heads (the baseline), on rank 0 only; the other ranks wait
        t1 = torch.zeros(1, device="cuda")
        if rank == 0:
            full = [torch.randn(1, N, HEADS, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3)]
            t1[0] = median_ms(lambda: vmonarch.attention(*full, grid=GRID, **opts), CUDA, args.warmup, args.reps) / 1e3
            del full
        dist.broadcast(t1, 0)
        t1 = float(t1)
        mine = vd.head_split(HEADS, world)[rank]
        ql = torch.randn(1, N, mine, D, device="cuda", dtype=torch.bfloat16, generator=g)
        t_attn = timed(lambda: vmonarch.attention(ql, ql, ql, grid=GRID, **opts), args.warmup, args.reps)
        del ql

        def no_attention(qq, kk, vv, grid, **kw):
            return qq.new_empty(qq.shape[0], qq.shape[1], qq.shape[2], vv.shape[3])

        group = dist.group.WORLD
        for chunks in args.chunks:
            run = lambda fn: vd._ulysses(q, k, v, GRID, group, "bshd", held, valid, chunks, fn, opts)
            total = timed(lambda: run(vd._default_attention), args.warmup, args.reps)
            exchange = timed(lambda: run(no_attention), args.warmup, args.reps)
            rows.append(dict(world=world, heads_per_rank=max(vd.head_split(HEADS, world)), chunks=chunks,
                             one_gpu_s=t1, attention_s=t_attn, exchange_s=exchange, total_s=total,
                             efficiency=t1 / (world * total)))
    return rows


def forward(args, world: int, rank: int) -> list:
    import vmonarch.wan
    from diffusers import ContextParallelConfig
    from wan_e2e import MODELS, build

    spec = MODELS["14B"]
    latent = spec["latent"]
    g = torch.Generator(device="cuda").manual_seed(0)
    inputs = dict(hidden_states=torch.randn(1, *latent, device="cuda", dtype=torch.bfloat16, generator=g),
                  timestep=torch.tensor([999], device="cuda"),
                  encoder_hidden_states=torch.randn(1, 512, spec["config"]["text_dim"], device="cuda",
                                                    dtype=torch.bfloat16, generator=g))

    def run_model(model):
        with torch.inference_mode():
            model(**inputs, return_dict=False)

    results = {}
    for blocks in args.blocks:
        t1 = torch.zeros(1, device="cuda")
        if rank == 0:                                   # the same model on one GPU
            model = build(spec["config"], blocks, "cuda")
            vmonarch.wan.enable(model, iterations=args.iterations)
            t1[0] = median_ms(lambda: run_model(model), CUDA, args.warmup, args.reps) / 1e3
            del model
            torch.cuda.empty_cache()
        dist.broadcast(t1, 0)
        if world > 1:
            model = build(spec["config"], blocks, "cuda")
            vmonarch.wan.enable(model, iterations=args.iterations)
            vmonarch.wan.VMonarchWanAttnProcessor.ulysses_chunks = args.model_chunks
            model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
            tp = timed(lambda: run_model(model), args.warmup, args.reps)
            del model
            torch.cuda.empty_cache()
        else:
            tp = float(t1)
        results[blocks] = (float(t1), tp)
    (l1, (a1, ap)), (l2, (b1, bp)) = sorted(results.items())[:1] + sorted(results.items())[-1:]
    layers = spec["config"]["num_layers"]

    def extrapolate(x1, x2):
        per_block = (x2 - x1) / (l2 - l1) if l2 != l1 else x2 / l2
        return x1 - l1 * per_block + layers * per_block

    one, par = extrapolate(a1, b1), extrapolate(ap, bp)
    return [dict(world=world, blocks_measured=sorted(results), measured={str(k): v for k, v in results.items()},
                 one_gpu_40_blocks_s=one, parallel_40_blocks_s=par, speedup=one / par, efficiency=one / (world * par),
                 model_chunks=args.model_chunks)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", default="1,2,4", help="head groups pipelined per rank (layer benchmark)")
    ap.add_argument("--blocks", default="2,4", help="transformer depths timed (extrapolated to 40)")
    ap.add_argument("--model-chunks", type=int, default=1, help="VMonarchWanAttnProcessor.ulysses_chunks")
    ap.add_argument("--skip-forward", action="store_true", help="the attention layer only")
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", help="write the results here (rank 0; written whole or not at all)")
    args = ap.parse_args()
    check_outputs(ap, json=args.json)
    args.chunks = [int(c) for c in args.chunks.split(",")]
    args.blocks = [int(b) for b in args.blocks.split(",")]
    if not torch.cuda.is_available():
        print("ulysses_bench: needs CUDA devices", file=sys.stderr)
        return 2
    local = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local)
    if "RANK" not in os.environ:                      # plain python3: one rank
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get(
            "MASTER_PORT", "29533"))
    dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    world, rank = dist.get_world_size(), dist.get_rank()
    import vmonarch

    if not vmonarch.cuda_built():
        print("ulysses_bench: this vmonarch build has no CUDA kernels", file=sys.stderr)
        return 2
    layer_rows = layer(args, world, rank)
    forward_rows = [] if args.skip_forward else forward(args, world, rank)
    if rank == 0:
        name = torch.cuda.get_device_name()
        print(f"\n{world} x {name}, torch {torch.__version__}, bf16, batch 1, t = {args.iterations}, "
              f"median of {args.reps} after {args.warmup}, slowest rank")
        print(f"\nWan2.1-14B self-attention layer, grid {GRID} (N = {math.prod(GRID)}), {HEADS} heads, d = {D}")
        print("| GPUs | heads/rank | chunks | 1 GPU (ms) | local attention (ms) | exchanges (ms) | total (ms) | "
              "efficiency |")
        print("|---|---|---|---|---|---|---|---|")
        for r in layer_rows:
            print(f"| {r['world']} | {r['heads_per_rank']} | {r['chunks']} | {r['one_gpu_s'] * 1e3:.2f} | "
                  f"{r['attention_s'] * 1e3:.2f} | {r['exchange_s'] * 1e3:.2f} | {r['total_s'] * 1e3:.2f} | "
                  f"{r['efficiency'] * 100:.1f}% |")
        for r in forward_rows:
            print(f"\nWan2.1-14B transformer forward, 81x720x1280, VMonarch in every block (blocks "
                  f"{r['blocks_measured']} measured, extrapolated to 40; processor chunks {r['model_chunks']}):")
            print("| GPUs | 1 GPU (s) | P GPUs (s) | speedup | efficiency |")
            print("|---|---|---|---|---|")
            print(f"| {r['world']} | {r['one_gpu_40_blocks_s']:.3f} | {r['parallel_40_blocks_s']:.3f} | "
                  f"{r['speedup']:.2f}x | {r['efficiency'] * 100:.1f}% |")
        if args.json:
            write_json(args.json, dict(device=name, world=world, torch=torch.__version__, layer=layer_rows,
                                       forward=forward_rows))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
