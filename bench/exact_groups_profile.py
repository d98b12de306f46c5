#!/usr/bin/env python3
"""Where the time of one vmonarch.joint_attention call goes, at CogVideoX-5B's joint shape (spec §3c): the
kernels it launches (torch.profiler, device time each) and its CUDA-event time, for normal and for uniform
inputs of unit variance (the Python bench fills with torch.randn, the C++ bench with uniform values), alone
and right after cuDNN's SDPA on the same inputs (the Python bench's interleaved order).

    python3 bench/exact_groups_profile.py --out profile.json [--reps 20] [--grid 13,30,45 --heads 48 --d 64 --text 226]

CUDA only; writes JSON (whole or not at all) and prints a table.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exact_groups_common import check_output_path, environment, positive_int, steady_ms, times_ms, write_json  # noqa: E402


def inputs(fill: str, shape, device, seed: int):
    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for _ in range(3):
        if fill == "normal":
            x = torch.randn(*shape, device=device, dtype=torch.bfloat16, generator=g)
        else:  # uniform on ±√3: unit variance, as bench/exact_groups_cuda_bench.cu
            x = ((torch.rand(*shape, device=device, generator=g) * 2 - 1) * 3 ** 0.5).to(torch.bfloat16)
        out.append(x)
    return out


def kernel_table(fn, calls: int):
    """(name, calls, total device µs) per kernel over `calls` calls of fn, largest first."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        us = 0.0
        for attr in ("self_device_time_total", "self_cuda_time_total", "device_time_total", "cuda_time_total"):
            us = getattr(e, attr, 0.0) or 0.0
            if us:
                break
        if us and e.count:
            rows.append((e.key, e.count, float(us)))
    rows.sort(key=lambda r: -r[2])
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=positive_int("--reps"), default=20)
    ap.add_argument("--grid", default="13,30,45")
    ap.add_argument("--heads", type=positive_int("--heads"), default=48)
    ap.add_argument("--d", type=int, choices=(64, 128), default=64)
    ap.add_argument("--text", type=positive_int("--text", 0), default=226)
    args = ap.parse_args(argv)
    try:
        check_output_path("--out", args.out)
        grid = tuple(int(x) for x in args.grid.split(","))
        if len(grid) != 3 or min(grid) < 1:
            raise ValueError(f"--grid is {args.grid!r}, expected T,H,W (three integers >= 1)")
    except ValueError as e:
        ap.error(str(e))
    if not torch.cuda.is_available():
        print("exact_groups_profile: needs a CUDA device", file=sys.stderr)
        return 1
    import vmonarch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    device = torch.device("cuda")
    env = environment(device)
    T, H, W = grid
    M = T * H * W + args.text
    shape = (1, args.heads, M, args.d)
    print(f"joint_attention profile on {env.get('card')}, grid {grid}, {args.heads} heads, d {args.d}, "
          f"{args.text} text tokens first, {args.reps} reps; "
          f"VMONARCH_HOPPER_LONG_Q_TILES={os.environ.get('VMONARCH_HOPPER_LONG_Q_TILES', '(unset)')}", flush=True)
    result = dict(environment=env, grid=grid, heads=args.heads, d=args.d, text=args.text, reps=args.reps,
                  long_q_tiles=os.environ.get("VMONARCH_HOPPER_LONG_Q_TILES"), fills={})
    for fill in ("normal", "uniform"):
        q, k, v = inputs(fill, shape, device, M)

        def ours():
            return vmonarch.joint_attention(q, k, v, grid, args.text, text_first=True, layout="bhsd")

        def cudnn():
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v)

        r = dict(cudnn_ms=statistics.median(times_ms(cudnn, device, 2, max(3, args.reps // 4))))
        r["alone_ms"] = statistics.median(times_ms(ours, device, 3, args.reps))
        r["back_to_back_ms"] = steady_ms(ours, device, 10, 3)
        after = []  # each round: cuDNN's 7 calls, then ours timed (as the Python bench's interleaved rounds)
        for _ in range(4):
            times_ms(cudnn, device, 2, 5)
            after += times_ms(ours, device, 0, 5)
        r["after_cudnn_ms"] = statistics.median(after)
        r["after_cudnn_first_ms"] = after[0::5]
        r["kernels"] = [dict(name=n, calls=c, us_per_call=us / 5) for n, c, us in kernel_table(ours, 5)]
        r["kernel_sum_us"] = sum(x["us_per_call"] for x in r["kernels"])
        result["fills"][fill] = r
        print(f"{fill:8s} alone {r['alone_ms']:.3f} ms, back to back {r['back_to_back_ms']:.3f}, after cuDNN "
              f"{r['after_cudnn_ms']:.3f} (first of each round {', '.join(f'{t:.3f}' for t in r['after_cudnn_first_ms'])}), "
              f"cuDNN {r['cudnn_ms']:.3f} ms ({r['cudnn_ms'] / r['alone_ms']:.3f}x); kernels sum "
              f"{r['kernel_sum_us']:.1f} us per call (under the profiler):", flush=True)
        for x in r["kernels"]:
            print(f"    {x['us_per_call']:9.1f} us  x{x['calls'] // 5:<3d} {x['name'][:150]}")
        del q, k, v
        torch.cuda.empty_cache()
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
