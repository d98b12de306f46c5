"""Backward-pass benchmark on one CUDA device (spec §7): VMonarch forward + backward and backward alone, in
lean mode, paper gradient (what the package runs on CUDA), against torch SDPA's cuDNN and flash backward, with the
peak memory of each (torch.cuda.max_memory_allocated over one forward + backward).

    python3 bench/backward_bench.py [--quick] [--json FILE]

Shapes (batch 1, bf16, d = 128, t = 2 with the frame-0 recompute): 16x28x52 with 12 heads and 24x44x80
with 40 heads. Times are medians of CUDA-event timings after warm-up. No assertions: numbers only.
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.nn.functional as F

import vmonarch

SHAPES = [((16, 28, 52), 12), ((24, 44, 80), 40)]


def timed(fn, reps):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def peak_bytes(fn):
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def leaves(grid, heads, d, dtype, layout):
    N = grid[0] * grid[1] * grid[2]
    shape = (1, N, heads, d) if layout == "bshd" else (1, heads, N, d)
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(shape, device="cuda", dtype=dtype, generator=gen).requires_grad_(True) for _ in range(3))
    dout = torch.randn(shape, device="cuda", dtype=dtype, generator=gen)
    return q, k, v, dout


def measure(name, forward, q, k, v, dout, reps):
    """fwd+bwd time, bwd-alone time and peak memory of one forward + backward."""

    def fwd_bwd():
        out = forward(q, k, v)
        torch.autograd.grad(out, (q, k, v), dout)

    out = forward(q, k, v)

    def bwd():
        torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)

    row = {"name": name, "fwd_bwd_ms": timed(fwd_bwd, reps), "bwd_ms": timed(bwd, reps)}
    del out
    row["peak_mib"] = peak_bytes(fwd_bwd) / 2**20
    return row


def sdpa_backend(backend):
    from torch.nn.attention import sdpa_kernel

    def forward(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)

    return forward


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the small shape only, fewer repetitions")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    from torch.nn.attention import SDPBackend

    reps = 5 if args.quick else 20
    rows = []
    for grid, heads in SHAPES[:1] if args.quick else SHAPES:
        label = f"{grid[0]}x{grid[1]}x{grid[2]}x{heads}h"
        q, k, v, dout = leaves(grid, heads, 128, torch.bfloat16, "bshd")
        # The Python package's CUDA backward: the inference op's autograd (paper gradient, lean mode, the forward
        # rerun inside the backward). Saved state, the exact gradient and deterministic mode exist on CUDA in the
        # C++ API only (the package refuses them on CUDA).
        variants = [("vmonarch lean", dict())]
        for name, opts in variants:
            fwd = (lambda o: lambda q, k, v: vmonarch.attention(q, k, v, grid=grid, iterations=2, **o))(opts)
            rows.append({"shape": label, **measure(name, fwd, q, k, v, dout, reps)})
        qt, kt, vt, dt = (x.detach().transpose(1, 2).contiguous() for x in (q, k, v, dout))
        qt, kt, vt = (x.requires_grad_(True) for x in (qt, kt, vt))
        for name, backend in (("sdpa cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa flash", SDPBackend.FLASH_ATTENTION)):
            try:
                rows.append({"shape": label, **measure(name, sdpa_backend(backend), qt, kt, vt, dt, reps)})
            except RuntimeError as e:  # backend unavailable on this device / build
                rows.append({"shape": label, "name": name, "error": str(e).splitlines()[0]})
        del q, k, v, dout, qt, kt, vt, dt
        torch.cuda.empty_cache()
    ref = {r["shape"]: r for r in rows if r.get("name") == "sdpa cudnn" and "bwd_ms" in r}
    print(f"{'shape':>16} {'variant':>22} {'fwd+bwd ms':>11} {'bwd ms':>9} {'peak MiB':>9} {'bwd vs cuDNN':>12}")
    for r in rows:
        if "error" in r:
            print(f"{r['shape']:>16} {r['name']:>22}  unavailable: {r['error']}")
            continue
        speed = ref[r["shape"]]["bwd_ms"] / r["bwd_ms"] if r["shape"] in ref else float("nan")
        r["bwd_speedup_vs_cudnn"] = speed
        print(f"{r['shape']:>16} {r['name']:>22} {r['fwd_bwd_ms']:11.3f} {r['bwd_ms']:9.3f} {r['peak_mib']:9.1f} "
              f"{speed:11.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
