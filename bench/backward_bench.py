"""Backward-pass benchmark on one CUDA device (spec §7): VMonarch forward (with autograd recording), forward +
backward and backward alone through vmonarch.attention's autograd, in lean mode (the forward rerun inside the
backward; also with the exact gradient), saved mode (save_state=True), saved with the exact gradient (entropy_grad=True) and deterministic
(lean, deterministic=True), against torch SDPA's cuDNN and flash backward, with the peak memory of each
(torch.cuda.max_memory_allocated over one forward + backward) and the saved state's bytes per token per head.
Lean minus saved backward time is what one forward rerun costs (the lean backward runs the forward once).

    python3 bench/backward_bench.py [--quick] [--reps N] [--json FILE] [--cases plain,exact] [--variants LIST]

Shapes (batch 1, bf16, d = 128, t = 2 with the frame-0 recompute): 16x28x52 with 12 heads and 24x44x80
with 40 heads. --cases exact (spec §3b-3c, §7) adds the exact key groups' backward: the video shapes with
one sink frame (t = 1 and t = 2, lean) and CogVideoX-5B's joint sequence (226 text tokens first +
13x30x45 video, 48 heads, d = 64; vmonarch.joint_attention, lean, t = 2 and t = 1 with S = 1) against
cuDNN's backward over the same sequence. --variants picks the plain case's VMonarch rows and their order
(comma-separated from lean, lean-exact, saved, saved-exact, deterministic; default all, in that order), e.g. to
see whether a row's figure depends on what ran before it. Times are medians of CUDA-event timings after
warm-up. No assertions: numbers only.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

import vmonarch
from vmonarch._backward import saved_state_bytes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exact_groups_common import write_json  # noqa: E402
from train_bench_common import check_outputs, cuda_peak_bytes, median_ms, sdpa_forward  # noqa: E402

SHAPES = [((16, 28, 52), 12), ((24, 44, 80), 40)]
COGVIDEOX = ((13, 30, 45), 48, 64, 226)  # grid, heads, head dim, text tokens (first)
CASES = ("plain", "exact")
# The plain case's VMonarch rows: --variants key -> (row name, vmonarch.attention options).
VARIANTS = {
    "lean": ("vmonarch lean", dict()),
    "lean-exact": ("vmonarch lean exact", dict(entropy_grad=True)),
    "saved": ("vmonarch saved", dict(save_state=True)),
    "saved-exact": ("vmonarch saved exact", dict(save_state=True, entropy_grad=True)),
    "deterministic": ("vmonarch deterministic", dict(deterministic=True)),
}


CUDA = torch.device("cuda")


def timed(fn, reps):
    return median_ms(fn, CUDA, 2, reps)


def leaves(grid, heads, d, dtype, layout, extra_tokens=0):
    N = grid[0] * grid[1] * grid[2] + extra_tokens
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

    row = {"name": name, "fwd_ms": timed(lambda: forward(q, k, v), reps), "fwd_bwd_ms": timed(fwd_bwd, reps),
           "bwd_ms": timed(bwd, reps)}
    del out
    row["peak_mib"] = cuda_peak_bytes(fwd_bwd, CUDA) / 2**20
    return row


def comma_list(parser, option, text, allowed):
    """The non-empty items of a comma-separated option, each one of allowed (else a parser error naming it)."""
    items = [x for x in text.split(",") if x]
    if not items or any(x not in allowed for x in items):
        parser.error(f"{option} is {text!r}, expected a comma-separated list of {', '.join(allowed)}")
    return items


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the small shape only, fewer repetitions")
    parser.add_argument("--json", help="write the rows here (written whole or not at all)")
    parser.add_argument("--reps", type=int, help="timed repetitions per figure (default 20; 5 with --quick)")
    parser.add_argument("--cases", default="plain",
                        help="comma-separated: plain (the paper's setting, every mode) and/or exact (sink frame, joint)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated VMonarch rows of the plain case, in this order: " + ", ".join(VARIANTS))
    args = parser.parse_args()
    cases = comma_list(parser, "--cases", args.cases, CASES)
    variant_keys = comma_list(parser, "--variants", args.variants, VARIANTS)
    from torch.nn.attention import SDPBackend

    reps = args.reps if args.reps is not None else (5 if args.quick else 20)
    if reps < 1:
        parser.error(f"--reps is {reps}, expected >= 1")
    check_outputs(parser, json=args.json)
    rows = []
    header = (f"{'shape':>16} {'variant':>22} {'fwd ms':>8} {'fwd+bwd ms':>11} {'bwd ms':>9} {'peak MiB':>9} "
              f"{'bwd vs cuDNN':>12} {'saved B/tok/head':>16}")

    def line(row):
        if "error" in row:
            return f"{row['shape']:>16} {row['name']:>22}  unavailable: {row['error']}"
        saved = f"{row['saved_bytes_per_token_head']:16.1f}" if "saved_bytes_per_token_head" in row else f"{'-':>16}"
        return (f"{row['shape']:>16} {row['name']:>22} {row['fwd_ms']:8.3f} {row['fwd_bwd_ms']:11.3f} "
                f"{row['bwd_ms']:9.3f} {row['peak_mib']:9.1f} {row.get('bwd_speedup_vs_cudnn', float('nan')):11.2f}x "
                f"{saved}")

    def save():
        if args.json:
            write_json(args.json, {"device": torch.cuda.get_device_name(), "reps": reps, "rows": rows})

    def report(row):  # printed and saved as soon as measured: a run cut short keeps what it measured
        rows.append(row)
        print(line(row), flush=True)
        save()

    def sdpa_rows(label, q, k, v, dout):
        qt, kt, vt, dt = (x.detach().transpose(1, 2).contiguous() for x in (q, k, v, dout))
        qt, kt, vt = (x.requires_grad_(True) for x in (qt, kt, vt))
        for name, backend in (("sdpa cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa flash", SDPBackend.FLASH_ATTENTION)):
            try:
                report({"shape": label, **measure(name, sdpa_forward(backend), qt, kt, vt, dt, reps)})
            except RuntimeError as e:  # backend unavailable on this device / build
                report({"shape": label, "name": name, "error": str(e).splitlines()[0]})

    print(header, flush=True)
    for grid, heads in (SHAPES[:1] if args.quick else SHAPES) if "plain" in cases else ():
        label = f"{grid[0]}x{grid[1]}x{grid[2]}x{heads}h"
        q, k, v, dout = leaves(grid, heads, 128, torch.bfloat16, "bshd")
        N = grid[0] * grid[1] * grid[2]
        for name, opts in (VARIANTS[key] for key in variant_keys):
            fwd = (lambda o: lambda q, k, v: vmonarch.attention(q, k, v, grid=grid, iterations=2, **o))(opts)
            row = {"shape": label, **measure(name, fwd, q, k, v, dout, reps)}
            if opts.get("save_state"):
                row["saved_bytes_per_token_head"] = saved_state_bytes(q, v, 2, "bshd") / (N * heads)
            report(row)
        sdpa_rows(label, q, k, v, dout)
        del q, k, v, dout
        torch.cuda.empty_cache()
    if "exact" in cases:
        # Exact key groups (spec §3b): one sink frame, lean mode, at t = 1 and t = 2.
        for grid, heads in SHAPES[:1] if args.quick else SHAPES:
            label = f"{grid[0]}x{grid[1]}x{grid[2]}x{heads}h"
            q, k, v, dout = leaves(grid, heads, 128, torch.bfloat16, "bshd")
            for name, t in (("vmonarch lean t=1 S=1", 1), ("vmonarch lean t=2 S=1", 2)):
                fwd = (lambda t: lambda q, k, v: vmonarch.attention(q, k, v, grid=grid, iterations=t, sink_frames=1))(t)
                report({"shape": label, **measure(name, fwd, q, k, v, dout, reps)})
            if "plain" not in cases:  # else measured above, same shape and inputs
                sdpa_rows(label, q, k, v, dout)
            del q, k, v, dout
            torch.cuda.empty_cache()
        # The joint sequence (spec §3c): CogVideoX's text first, every text token valid.
        grid, heads, d, text = COGVIDEOX
        label = f"cogvideox {grid[0]}x{grid[1]}x{grid[2]}+{text}x{heads}h"
        q, k, v, dout = leaves(grid, heads, d, torch.bfloat16, "bshd", extra_tokens=text)
        for name, opts in (("vmonarch joint lean t=2", dict(iterations=2)),
                           ("vmonarch joint lean t=1 S=1", dict(iterations=1, sink_frames=1))):
            fwd = (lambda o: lambda q, k, v: vmonarch.joint_attention(q, k, v, grid, text, text_first=True, **o))(opts)
            report({"shape": label, **measure(name, fwd, q, k, v, dout, reps)})
        sdpa_rows(label, q, k, v, dout)
        del q, k, v, dout
        torch.cuda.empty_cache()
    cudnn = {r["shape"]: r["bwd_ms"] for r in rows if r.get("name") == "sdpa cudnn" and "bwd_ms" in r}
    for r in rows:
        if "bwd_ms" in r and r["shape"] in cudnn:
            r["bwd_speedup_vs_cudnn"] = cudnn[r["shape"]] / r["bwd_ms"]
    save()
    print("\nbackward against cuDNN's (same run):\n" + header)
    for r in rows:
        print(line(r))

if __name__ == "__main__":
    main()
