#!/usr/bin/env python3
"""Quality and cost of the exact key groups (spec §3b) on the project's video-like inputs: the README table.

    python3 bench/exact_groups_quality.py --json q.json --md q.md                 # GPU, 16x28x52, 12 heads
    python3 bench/exact_groups_quality.py --json q.json --md q.md --tiny          # CPU, small shape, seconds
    python3 bench/exact_groups_quality.py --json q.json --device cpu --heads 4    # CPU at 16x28x52 (slow)

Inputs: `vmonarch make-inputs` (the C++ generator, include/vmonarch/extras/video_data.hpp: a moving scene,
3-D RoPE, heads cycling through the kinds positional, semantic, sink, mixed; seed 0), so the CLI binary is
needed (--cli, else $VMONARCH_CLI, $VMONARCH_BIN/vmonarch, build*/vmonarch, .devcarry/*/vmonarch, PATH).
The inputs are rounded to the run's dtype (GPU: bf16; CPU: f32) and the reference is dense attention on
those rounded inputs in float32 on the GPU (TF32 off) or float64 on the CPU, so the error measures the
approximation and the kernel's rounding, not the input rounding.

Rows: vmonarch.attention with the frame-0 recompute for t in {1, 2} x S in {0, 1} x r in {none, 1}; a dense
row (torch SDPA, cuDNN first); and a joint sequence (the same video plus 256 text tokens after it, 200
valid, HunyuanVideo-style; text q/k/v: copies of seeded random video tokens, the keys lifted along the mean
query until all 256 text keys hold 20 % of the video rows' attention mass, so the text matters) through
vmonarch.joint_attention at (t, S) = (2, 0), (1, 1), with SDPA under the same key-padding mask as its
dense row. Per head kind: the relative L2 error of the output over that kind's heads pooled,
sqrt(sum ||O - O_ref||^2 / sum ||O_ref||^2); "all" pools every head. FLOPs: vmonarch.flops (spec §4), all
heads, batch 1. Time: median of --reps calls after a warm-up (CUDA events; the CPU: perf_counter).
Writes the JSON (--json) and, with --md, the markdown tables for the README. Exit 0 when every row ran,
1 when some could not (its status says why), 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from typing import Dict, List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exact_groups_common import (check_output_path, environment, find_cli, positive_int, sdpa_call,  # noqa: E402
                                 resolve_device, time_ms, video_inputs, write_atomic, write_json)

KINDS = ["positional", "semantic", "sink", "mixed"]
SETTINGS = [(t, s, r) for t in (1, 2) for s in (0, 1) for r in (None, 1)]
JOINT_SETTINGS = [(2, 0, None), (1, 1, None)]
TEXT_SHARE = 0.2   # share of the video rows' attention mass the text keys get in the joint row
PAPER = (2, 0, None)
FULL = dict(grid=(16, 28, 52), heads=12, d=128, text=256, text_valid=200)
TINY = dict(grid=(4, 6, 10), heads=4, d=128, text=8, text_valid=5)


def dense_fp(q, k, v, key_valid: Optional[torch.Tensor], dtype, chunk: int = 4096):
    """Exact softmax attention of [1, heads, Nq, d] in `dtype`, query chunks of `chunk` rows (one head at a
    time); key_valid: bool [Nk] or None."""
    s = q.shape[-1] ** -0.5
    out = torch.empty(q.shape[:-1] + (v.shape[-1],), dtype=dtype, device=q.device)
    for h in range(q.shape[1]):
        kh, vh = k[0, h].to(dtype), v[0, h].to(dtype)
        for a in range(0, q.shape[2], chunk):
            x = q[0, h, a:a + chunk].to(dtype) @ kh.T * s
            if key_valid is not None:
                x = x.masked_fill(~key_valid[None, :], float("-inf"))
            out[0, h, a:a + chunk] = torch.softmax(x, -1) @ vh
    return out


def kind_errors(out, ref, kinds: List[str]) -> Dict[str, float]:
    """Pooled relative L2 error per head kind and over all heads ("all")."""
    diff = (out.double() - ref.double()).pow(2).sum(dim=(0, 2, 3))
    norm = ref.double().pow(2).sum(dim=(0, 2, 3))
    result = {}
    for kind in KINDS + ["all"]:
        idx = [h for h, k in enumerate(kinds) if kind == "all" or k == kind]
        if idx:
            result[kind] = math.sqrt(float(diff[idx].sum() / norm[idx].sum()))
    return result


def per_head_errors(out, ref) -> List[float]:
    diff = (out.double() - ref.double()).pow(2).sum(dim=(0, 2, 3))
    norm = ref.double().pow(2).sum(dim=(0, 2, 3))
    return [math.sqrt(float(x)) for x in diff / norm]


def run_setting(row: dict, fn, ref, kinds, device, warmup: int, reps: int) -> dict:
    try:
        out = fn()
        row["errors"] = kind_errors(out, ref, kinds)
        row["per_head"] = per_head_errors(out, ref)
        del out
        row["ms"] = time_ms(fn, device, warmup, reps)
        row["status"] = "ok" if all(math.isfinite(x) for x in row["per_head"]) else "non-finite output"
    except NotImplementedError as e:
        row["status"] = f"unsupported: {str(e).splitlines()[0] if str(e) else 'NotImplementedError'}"
    except torch.OutOfMemoryError as e:
        row["status"] = f"out of memory: {str(e).splitlines()[0]}"
    except (RuntimeError, ValueError, TypeError) as e:
        row["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def text_tokens(q, k, v, L: int, seed: int, share: float = TEXT_SHARE, sample_rows: int = 512):
    """Text q/k/v [1, heads, L, d] for the joint row: copies of L seeded random video tokens whose keys are
    lifted along the unit mean video query u by a per-head gain g, bisected so that the L text keys hold
    `share` of the video rows' softmax mass on average (over a sample of rows; all L keys counted).

    Lifting every text key by g·u adds g·s·(q_r·u) to row r's text logits, so row r's text share is
    sigmoid(lse_text_r + g·s·(q_r·u) − lse_video_r), computed once without the lift."""
    g = torch.Generator().manual_seed(seed + 7919)
    N, d = q.shape[2], q.shape[3]
    idx = torch.randperm(N, generator=g)[:L].to(q.device)
    tq, tk, tv = (x[:, :, idx].clone() for x in (q, k, v))
    sc = d ** -0.5
    for h in range(q.shape[1]):
        rows = q[0, h, ::max(1, N // sample_rows)].float()
        u = q[0, h].float().mean(0)
        u = u / u.norm()
        lse_video = torch.logsumexp(rows @ k[0, h].float().T * sc, -1)
        lse_text = torch.logsumexp(rows @ tk[0, h].float().T * sc, -1)
        base, lift = lse_text - lse_video, rows @ u * sc

        def text_share(gain):
            return float(torch.sigmoid(base + gain * lift).mean())
        lo, hi = 0.0, 1.0
        while text_share(hi) < share and hi < 1e6:
            lo, hi = hi, hi * 2
        for _ in range(50):
            mid = (lo + hi) / 2
            (lo, hi) = (mid, hi) if text_share(mid) < share else (lo, mid)
        tk[0, h] += ((lo + hi) / 2 * u).to(tk.dtype)
    return tq, tk, tv


def measure(args, device, run_dtype, ref_dtype) -> dict:
    import vmonarch

    shape = TINY if args.tiny else dict(FULL)
    if args.grid:
        shape["grid"] = args.grid
    if args.heads:
        shape["heads"] = args.heads
    grid, heads, d = shape["grid"], shape["heads"], shape["d"]
    T, H, W = grid
    N = T * H * W
    cli = find_cli(args.cli)
    with tempfile.TemporaryDirectory() as folder:
        q, k, v, kinds = video_inputs(cli, grid, heads, d, args.seed, folder)
    q, k, v = (x.to(device=device, dtype=run_dtype) for x in (q, k, v))
    print(f"inputs: {cli} make-inputs --grid {T},{H},{W} --heads {heads} --head-dim {d} --seed {args.seed}; kinds "
          + " ".join(kinds), flush=True)
    ref = dense_fp(q, k, v, None, ref_dtype)
    rows = []
    count = vmonarch.flops(grid, d, heads)
    dense_row = dict(part="video", what="dense", flops=count.dense)
    backend, fn, notes = sdpa_call(q, k, v, None, device)
    dense_row.update(backend=backend, refused=notes)
    if fn is None:
        dense_row["status"] = "no SDPA backend accepted the inputs"
    else:
        run_setting(dense_row, fn, ref, kinds, device, args.warmup, args.reps)
    rows.append(dense_row)
    for t, s, r in SETTINGS:
        c = vmonarch.flops(grid, d, heads, iterations=t, sink_frames=s, window_radius=r)
        row = dict(part="video", what="vmonarch", iterations=t, sink_frames=s, window_radius=r, flops=c.vmonarch,
                   dense_flops=c.dense)

        def fn(t=t, s=s, r=r):
            return vmonarch.attention(q, k, v, grid, layout="bhsd", iterations=t, sink_frames=s, window_radius=r)
        run_setting(row, fn, ref, kinds, device, args.warmup, args.reps)
        rows.append(row)
        print(describe(row), flush=True)
    del ref

    # Joint sequence [video | text], the padded text keys masked out.
    L, valid = shape["text"], shape["text_valid"]
    tq, tk, tv = text_tokens(q, k, v, L, args.seed)
    jq, jk, jv = (torch.cat([a, b], 2) for a, b in ((q, tq), (k, tk), (v, tv)))
    del q, k, v
    text_mask = (torch.arange(L, device=device) < valid)[None, :]
    key_valid = torch.cat([torch.ones(N, dtype=torch.bool, device=device), text_mask[0]])
    jref = dense_fp(jq, jk, jv, key_valid, ref_dtype)
    # Share of the video rows' mass on the valid text keys (how much the text matters here).
    with torch.no_grad():
        sc = d ** -0.5
        rows_sample = jq[0, :, :N:max(1, N // 512)].to(ref_dtype)
        x = (rows_sample @ jk[0].to(ref_dtype).transpose(-1, -2) * sc).masked_fill(~key_valid, float("-inf"))
        text_share = float(torch.softmax(x, -1)[..., N:].sum(-1).mean())
    jc = vmonarch.flops(grid, d, heads, text_len=L, joint=True)
    jdense = dict(part="joint", what="dense", flops=jc.dense)
    mask = key_valid[None, None, None, :]
    backend, fn, notes = sdpa_call(jq, jk, jv, mask, device)
    jdense.update(backend=backend, refused=notes)
    if fn is None:
        jdense["status"] = "no SDPA backend accepted the inputs"
    else:
        run_setting(jdense, fn, jref, kinds, device, args.warmup, args.reps)
    rows.append(jdense)
    for t, s, r in JOINT_SETTINGS:
        c = vmonarch.flops(grid, d, heads, iterations=t, sink_frames=s, window_radius=r, text_len=L, joint=True)
        row = dict(part="joint", what="vmonarch", iterations=t, sink_frames=s, window_radius=r, flops=c.vmonarch,
                   dense_flops=c.dense)

        def fn(t=t, s=s, r=r):
            return vmonarch.joint_attention(jq, jk, jv, grid, L, text_first=False, text_mask=text_mask, layout="bhsd",
                                            iterations=t, sink_frames=s, window_radius=r)
        run_setting(row, fn, jref, kinds, device, args.warmup, args.reps)
        rows.append(row)
        print(describe(row), flush=True)
    return dict(grid=list(grid), heads=heads, head_dim=d, seed=args.seed, kinds=kinds, run_dtype=str(run_dtype),
                reference_dtype=str(ref_dtype), text_len=L, text_valid=valid, text_mass_share=text_share,
                cli=cli, rows=rows)


def fmt_error(x: float) -> str:
    return f"{x:.3f}" if x >= 1e-3 else f"{x:.1e}"


def setting_label(row: dict) -> str:
    r = "–" if row["window_radius"] is None else str(row["window_radius"])
    return f"{row['iterations']} | {row['sink_frames']} | {r}"


def describe(row: dict) -> str:
    e = row.get("errors", {})
    errs = " ".join(f"{k} {e[k]:.4f}" for k in KINDS + ["all"] if k in e)
    ms = f"{row['ms']:.2f} ms" if "ms" in row else ""
    return f"{row['part']} t={row.get('iterations')} S={row.get('sink_frames')} r={row.get('window_radius')}: " \
           f"{errs} {ms} [{row.get('status')}]"


def markdown(result: dict, env: dict) -> str:
    T, H, W = result["grid"]
    where = env.get("card", "CPU")
    kinds_present = [k for k in KINDS if k in result["kinds"]]
    counts = {k: result["kinds"].count(k) for k in kinds_present}
    lines = [f"Measured {env['date']} on {where} (torch {env['torch']}) with `bench/exact_groups_quality.py`: "
             f"video-like inputs (`vmonarch make-inputs`, seed {result['seed']}) at {T}×{H}×{W}, "
             f"{result['heads']} heads ({', '.join(f'{counts[k]} {k}' for k in kinds_present)}), "
             f"d {result['head_dim']}, {result['run_dtype'].replace('torch.', '')} inputs; relative L2 error "
             f"against dense attention in {result['reference_dtype'].replace('torch.', '')} on the same inputs, "
             "pooled over the heads of each kind; frame-0 recompute on; FLOPs of all heads (spec §4).", ""]

    def table(part: str, title: str) -> None:
        rows = [r for r in result["rows"] if r["part"] == part]
        dense = next((r for r in rows if r["what"] == "dense"), None)
        lines.append(title)
        lines.append("")
        lines.append("| t | S | r | " + " | ".join(kinds_present) + " | all | FLOPs | vs dense | time (ms) |")
        lines.append("|---" * (len(kinds_present) + 7) + "|")
        for r in rows:
            if r["what"] == "dense":
                label = f"dense ({r.get('backend') or 'no backend'}) | | "
                ratio = "1×"
            else:
                label = setting_label(r)
                if (r["iterations"], r["sink_frames"], r["window_radius"]) == PAPER:
                    label = label.replace("–", "– (paper, default)")
                x = r["dense_flops"] / r["flops"]
                ratio = f"{x:.1f}× fewer" if x >= 1 else f"{1 / x:.1f}× more"
            e = r.get("errors")
            errs = [fmt_error(e[k]) if e and k in e else "–" for k in kinds_present + ["all"]]
            ms = f"{r['ms']:.2f}" if "ms" in r else f"to be measured ({r.get('status', '')})"
            lines.append(f"| {label} | " + " | ".join(errs) + f" | {r['flops']:.3g} | {ratio} | {ms} |")
        lines.append("")

    table("video", f"Video self-attention, {T}×{H}×{W}:")
    table("joint", f"Joint sequence: the same video + {result['text_len']} text tokens after it "
                   f"({result['text_valid']} valid, key-padding mask; text carries "
                   f"{100 * result['text_mass_share']:.1f} % of the video rows' mass):")
    best = best_at_paper_cost(result)
    if best:
        lines.append(f"Lowest overall error at no more FLOPs than the paper's setting: t = {best['iterations']}, "
                     f"S = {best['sink_frames']}, r = {'none' if best['window_radius'] is None else best['window_radius']} "
                     f"(all {best['errors']['all']:.3f} vs {paper_row(result)['errors']['all']:.3f}).")
        lines.append("")
    return "\n".join(lines)


def paper_row(result: dict) -> Optional[dict]:
    return next((r for r in result["rows"] if r["part"] == "video" and r["what"] == "vmonarch"
                 and (r["iterations"], r["sink_frames"], r["window_radius"]) == PAPER and "errors" in r), None)


def best_at_paper_cost(result: dict) -> Optional[dict]:
    paper = paper_row(result)
    if paper is None:
        return None
    ok = [r for r in result["rows"] if r["part"] == "video" and r["what"] == "vmonarch" and "errors" in r
          and r["flops"] <= paper["flops"]]
    return min(ok, key=lambda r: r["errors"]["all"]) if ok else None


def parse_grid(text: str):
    try:
        grid = tuple(int(x) for x in text.split(","))
    except ValueError:
        grid = ()
    if len(grid) != 3 or min(grid) < 1:
        raise argparse.ArgumentTypeError(f"--grid is {text!r}, expected T,H,W (three ints >= 1)")
    return grid


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True, help="JSON file to write (written whole or not at all)")
    ap.add_argument("--md", default=None, help="markdown file for the README (written whole or not at all)")
    ap.add_argument("--tiny", action="store_true", help=f"grid {TINY['grid']}, {TINY['heads']} heads, on the CPU")
    ap.add_argument("--device", default=None, help="cuda (default) or cpu (default with --tiny)")
    ap.add_argument("--grid", type=parse_grid, default=None, help="T,H,W (default 16,28,52)")
    ap.add_argument("--heads", type=positive_int("--heads"), default=None, help="heads (default 12)")
    ap.add_argument("--seed", type=positive_int("--seed", 0), default=0)
    ap.add_argument("--cli", default=None, help="vmonarch CLI binary (make-inputs)")
    ap.add_argument("--warmup", type=positive_int("--warmup", 0), default=None, help="default 2 (CPU 0)")
    ap.add_argument("--reps", type=positive_int("--reps"), default=None, help="timed calls (default 5, CPU 1)")
    args = ap.parse_args(argv)
    try:
        check_output_path("--json", args.json)
        if args.md:
            check_output_path("--md", args.md)
    except ValueError as e:
        ap.error(str(e))
    args.device = resolve_device(ap, args.device, args.tiny)
    cpu = args.device == "cpu"
    args.warmup = (0 if cpu else 2) if args.warmup is None else args.warmup
    args.reps = (1 if cpu else 5) if args.reps is None else args.reps
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":   # a float32 reference, not TF32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    run_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ref_dtype = torch.float32 if device.type == "cuda" else torch.float64
    env = environment(device)
    try:
        result = measure(args, device, run_dtype, ref_dtype)
    except (FileNotFoundError, RuntimeError) as e:
        print(f"exact_groups_quality: {e}", file=sys.stderr)
        return 1
    write_json(args.json, dict(environment=env, tiny=args.tiny, warmup=args.warmup, reps=args.reps, **result))
    md = markdown(result, env)
    print(md)
    if args.md:
        write_atomic(args.md, md + "\n")
    print(f"wrote {args.json}" + (f" and {args.md}" if args.md else ""))
    return 0 if all(r.get("status") == "ok" for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
