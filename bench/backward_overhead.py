"""Where the package's backward time goes beyond its kernels (one CUDA device, bf16, d = 128, t = 2 with the
frame-0 recompute, saved mode): the same backward timed four ways, median of CUDA-event timings after warm-up.

    autograd   torch.autograd.grad(out, (q, k, v), dout) as a training step calls it (bench/backward_bench.py)
    op         torch.ops.vmonarch.attention_backward called directly (no autograd engine)
    graph      the op captured once in a CUDA graph and replayed: the kernels alone, no host work
    host       perf_counter around the op call alone, without waiting for the GPU (launch cost on the CPU)

op - graph is time the GPU waits for the host; autograd - op is the autograd engine's share. cuDNN's SDPA
backward (autograd, the same timing) is measured in the same run for the ratios.

--cpu: the host's part alone, on a tiny grid (2x2x2, one head, d 64, float32, one thread) where the kernels
take microseconds: autograd and op by perf_counter, and a trivial torch.autograd.Function's backward (a clone's)
beside them, so autograd - op is what the Python autograd rule and the engine cost on the host.

    python3 bench/backward_overhead.py [--reps N] [--json FILE] [--quick] [--cpu]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

import vmonarch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exact_groups_common import write_json  # noqa: E402
from train_bench_common import check_outputs, median_ms, sdpa_forward  # noqa: E402

SHAPES = [((16, 28, 52), 12), ((24, 44, 80), 40)]
CUDA = torch.device("cuda")


def host_ms(fn, reps):
    """Median CPU milliseconds of fn() alone (the GPU drained before each call, not waited for after)."""
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    return statistics.median(times)


class _Clone(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g


def backward_calls(q, k, v, dout, grid):
    """(op, autograd): the saved-mode backward of one training forward (t = 2, recompute) as the op called
    directly and through torch.autograd.grad, each a call that can be repeated."""
    args = (list(grid), 2, 0.1, True, None, "bshd", False, False)
    with torch.no_grad():
        out, lse, saved = torch.ops.vmonarch.attention_train(q, k, v, *args, True)
    out_g = vmonarch.attention(q, k, v, grid=grid, save_state=True)

    def op():
        with torch.no_grad():
            return torch.ops.vmonarch.attention_backward(q, k, v, out, lse, dout, None, *args, saved)

    return op, lambda: torch.autograd.grad(out_g, (q, k, v), dout, retain_graph=True)


def cpu_row(reps):
    """The host's part of the backward on a tiny CPU problem (microseconds, perf_counter, median)."""
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    q, k, v, dout = (torch.randn((1, 8, 1, 64), generator=gen) for _ in range(4))
    q, k, v = (x.requires_grad_(True) for x in (q, k, v))
    op, autograd = backward_calls(q, k, v, dout, (2, 2, 2))
    x = torch.randn(4, requires_grad=True)
    y, gy = _Clone.apply(x), torch.ones(4)

    def us(fn):
        return median_ms(fn, torch.device("cpu"), max(10, reps // 10), reps) * 1e3
    return {"shape": "cpu 2x2x2x1h d64 f32", "op_us": us(op), "autograd_us": us(autograd),
            "trivial_function_us": us(lambda: torch.autograd.grad(y, (x,), gy, retain_graph=True))}


def shape_rows(grid, heads, reps):
    from torch.nn.attention import SDPBackend

    N = grid[0] * grid[1] * grid[2]
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn((1, N, heads, 128), device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_(True)
               for _ in range(3))
    dout = torch.randn_like(q)
    op, autograd = backward_calls(q, k, v, dout, grid)

    op()
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm the caching allocator on the capture stream
        op()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        op()
    label = f"{grid[0]}x{grid[1]}x{grid[2]}x{heads}h"
    row = {"shape": label, "autograd_ms": median_ms(autograd, CUDA, 3, reps), "op_ms": median_ms(op, CUDA, 3, reps),
           "graph_ms": median_ms(graph.replay, CUDA, 3, reps), "host_ms": host_ms(op, reps)}
    del graph
    qt, kt, vt, dt = (x.detach().transpose(1, 2).contiguous() for x in (q, k, v, dout))
    qt, kt, vt = (x.requires_grad_(True) for x in (qt, kt, vt))
    o = sdpa_forward(SDPBackend.CUDNN_ATTENTION)(qt, kt, vt)
    row["cudnn_bwd_ms"] = median_ms(lambda: torch.autograd.grad(o, (qt, kt, vt), dt, retain_graph=True), CUDA, 3, reps)
    for key in ("autograd", "op", "graph"):
        row[f"{key}_vs_cudnn"] = row["cudnn_bwd_ms"] / row[f"{key}_ms"]
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the rows here (written whole or not at all)")
    parser.add_argument("--quick", action="store_true", help="the small shape only")
    parser.add_argument("--cpu", action="store_true", help="the host's part on a tiny CPU problem (no GPU needed)")
    parser.add_argument("--reps", type=int, help="timed repetitions per figure (default 20; 2000 with --cpu)")
    args = parser.parse_args()
    reps = args.reps if args.reps is not None else (2000 if args.cpu else 20)
    if reps < 1:
        parser.error(f"--reps is {reps}, expected >= 1")
    check_outputs(parser, json=args.json)
    if args.cpu:
        r = cpu_row(reps)
        print(f"{r['shape']}: autograd {r['autograd_us']:.1f} us, op {r['op_us']:.1f} us, "
              f"a trivial autograd.Function {r['trivial_function_us']:.1f} us")
        if args.json:
            write_json(args.json, {"device": "cpu", "reps": reps, "rows": [r]})
        return
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device (or --cpu)")
    rows = []
    print(f"{'shape':>16} {'autograd':>9} {'op':>9} {'graph':>9} {'host':>9} {'cuDNN':>9}  ratios autograd/op/graph")
    for grid, heads in SHAPES[:1] if args.quick else SHAPES:
        r = shape_rows(grid, heads, reps)
        rows.append(r)
        print(f"{r['shape']:>16} {r['autograd_ms']:9.3f} {r['op_ms']:9.3f} {r['graph_ms']:9.3f} {r['host_ms']:9.3f} "
              f"{r['cudnn_bwd_ms']:9.3f}  {r['autograd_vs_cudnn']:.2f}x / {r['op_vs_cudnn']:.2f}x / "
              f"{r['graph_vs_cudnn']:.2f}x", flush=True)
        torch.cuda.empty_cache()
    if args.json:
        write_json(args.json, {"device": torch.cuda.get_device_name(), "reps": reps, "rows": rows})


if __name__ == "__main__":
    main()
