#!/usr/bin/env python3
"""What an uneven head split costs Ulysses (vmonarch.distributed) in its local attention, measured on one device.

Under Ulysses each of P ranks runs vmonarch.attention over all N tokens of its heads, ranks holding
heads // P + (r < heads % P) heads (vd.head_split); the rank with the most heads sets the pace. This bench
times vmonarch.attention on one device at every head count a split gives and reports, per (model, P):

    ideal      heads / (P * ceil(heads / P))            the head-count model (README, Multi-GPU)
    measured   t(heads) / (P * t(ceil(heads / P)))      the local attention's parallel efficiency, one device's
                                                        timings standing in for every rank's
    per head   t(ceil(heads / P)) / ceil(heads / P) against t(heads) / heads: how much slower a head runs when
                                                        the GPU holds fewer of them (fewer blocks per wave)

The exchanges (two all-to-alls) are not in these figures: they need several GPUs (bench/ulysses_bench.py).

    python3 bench/ulysses_head_split.py [--quick] [--reps N] [--json FILE] [--device cuda|cpu]

Cases (batch 1, t = 2 with the frame-0 recompute): Wan2.1-1.3B 81x480x832 (grid 21x30x52, 12 heads, d 128,
P = 2..12), Wan2.1-14B 81x720x1280 (21x45x80, 40 heads, d 128, P = 2..16), CogVideoX-5B's video part
(13x30x45, 48 heads, d 64, P = 5..32); bf16 on CUDA. --quick: the first case only. --device cpu: a tiny grid
in float32 (a check that the bench runs; its numbers say nothing about a GPU). Medians of CUDA-event timings.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exact_groups_common import environment, write_json  # noqa: E402
from train_bench_common import check_outputs, median_ms  # noqa: E402

CASES = [("Wan2.1-1.3B 81x480x832", (21, 30, 52), 12, 128, (2, 3, 4, 5, 8, 12)),
         ("Wan2.1-14B 81x720x1280", (21, 45, 80), 40, 128, (2, 3, 4, 6, 8, 16)),
         ("CogVideoX-5B 49x480x720 video", (13, 30, 45), 48, 64, (5, 7, 8, 16, 32))]
CPU_CASES = [("tiny cpu", (3, 4, 5), 6, 64, (4, 5))]


def case_rows(name, grid, heads, d, worlds, device, dtype, reps):
    import vmonarch
    import vmonarch.distributed as vd

    N = math.prod(grid)
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn((1, N, heads, d), device=device, dtype=dtype, generator=gen) for _ in range(3))
    cache = {}

    def t_ms(h):  # the local attention of a rank holding h heads (contiguous views, as the exchange gives)
        if h not in cache:
            qh, kh, vh = (x[:, :, :h].contiguous() for x in (q, k, v))
            with torch.inference_mode():
                cache[h] = median_ms(lambda: vmonarch.attention(qh, kh, vh, grid=grid), device, 2, reps)
        return cache[h]

    t_all = t_ms(heads)
    rows = []
    for P in worlds:
        h = max(vd.head_split(heads, P))
        rows.append({"case": name, "grid": list(grid), "heads": heads, "d": d, "world": P, "most_heads": h,
                     "t_all_heads_ms": t_all, "t_rank_ms": t_ms(h), "ideal": heads / (P * h),
                     "measured": t_all / (P * t_ms(h)), "per_head_slowdown": (t_ms(h) / h) / (t_all / heads)})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the rows here (written whole or not at all)")
    parser.add_argument("--quick", action="store_true", help="the first case only")
    parser.add_argument("--reps", type=int, default=10, help="timed calls per head count (default 10)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.reps < 1:
        parser.error(f"--reps is {args.reps}, expected >= 1")
    check_outputs(parser, json=args.json)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device is 'cuda', but no CUDA device is available")
    cases = CPU_CASES if device.type == "cpu" else CASES[:1] if args.quick else CASES
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    rows = []
    print(f"{'case':>30} {'P':>3} {'heads/rank':>10} {'rank ms':>9} {'all heads ms':>12} {'ideal':>6} "
          f"{'measured':>8} {'per-head slowdown':>17}")
    for case in cases:
        for r in case_rows(*case, device, dtype, args.reps):
            rows.append(r)
            print(f"{r['case']:>30} {r['world']:>3} {r['most_heads']:>10} {r['t_rank_ms']:9.3f} "
                  f"{r['t_all_heads_ms']:12.3f} {r['ideal']:6.1%} {r['measured']:8.1%} {r['per_head_slowdown']:16.2f}x")
    if args.json:
        write_json(args.json, {"environment": environment(device), "reps": args.reps, "rows": rows})


if __name__ == "__main__":
    main()
