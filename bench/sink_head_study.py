#!/usr/bin/env python3
"""How strong is the sink head of the project's video-like generator, and what does one sink frame buy?

    python3 bench/sink_head_study.py --cli build-cpu/vmonarch --grid 8,12,16 --heads 4 --json study.json
    python3 bench/sink_head_study.py --cli build-cpu/vmonarch --grid 16,28,52 --heads 3 --only-head 2

Float64 on the CPU throughout. For each head of `vmonarch make-inputs` (kinds cycle positional, semantic,
sink, mixed):
  mass     the dense attention's share of each query row's mass on the keys of frame 0, averaged over the
           rows of frames >= 1 (frame 0's own rows are recomputed exactly), and its 10/50/90 % quantiles;
           for comparison the share a row would give frame 0 under uniform attention is 1/T;
  error    relative L2 error against dense attention of the reference (shared/reference/vmonarch_ref.py)
           at t = 2, frame-0 recompute on, S = 0 and S = 1, and of vmonarch.attention (CPU, float64) at the
           same settings, with the largest |ours - reference| relative to the output's norm.
Then, on the sink head (or --only-head), the study strengthens the sink: frame-0 keys k0 become k0 + g * u
with u the unit mean query over frames >= 1 (the direction the generator lifts them along, spec §3b's
"first-frame sink"), g bisected so that the frame-0 share reaches each of --shares, and reports the
reference's S = 0 and S = 1 errors at each share. This shows which frame-0 share the error figures quoted
in spec §3b (0.38 at S = 0, 0.003 at S = 1) correspond to.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exact_groups_common import check_output_path, find_cli, video_inputs, write_json  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_reference():
    candidates = [os.environ.get("VMONARCH_REFERENCE_DIR"), REPO.parent / "shared" / "reference",
                  REPO / "shared" / "reference", REPO / ".whl" / "reference"]
    for c in candidates:
        if c and (pathlib.Path(c) / "vmonarch_ref.py").is_file():
            spec = importlib.util.spec_from_file_location("vmonarch_ref", pathlib.Path(c) / "vmonarch_ref.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    raise FileNotFoundError("vmonarch_ref.py not found in $VMONARCH_REFERENCE_DIR, ../shared/reference, "
                            "shared/reference or .whl/reference")


def dense_and_frame0_mass(q, k, v, HW: int, chunk: int = 2048):
    """Dense output [N, dv] of one head and, per query row, the softmax mass on frame 0's keys."""
    s = q.shape[-1] ** -0.5
    outs, mass = [], []
    for a in range(0, q.shape[0], chunk):
        p = torch.softmax(q[a:a + chunk] @ k.T * s, -1)
        outs.append(p @ v)
        mass.append(p[:, :HW].sum(-1))
    return torch.cat(outs), torch.cat(mass)


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def errors(ref, q, k, v, T, dense, sink_frames, ours=True):
    """Reference (and vmonarch.attention) relative L2 errors against dense for one head at t = 2."""
    qb, kb, vb = (x[None, None] for x in (q, k, v))
    r = ref.vmonarch_reference(qb, kb, vb, frames=T, t=2, sink_frames=sink_frames)[0, 0]
    result = {"reference": rel(r, dense)}
    if ours:
        import vmonarch

        HW = q.shape[0] // T
        o = vmonarch.attention(qb, kb, vb, (T, HW, 1), layout="bhsd", iterations=2, sink_frames=sink_frames)[0, 0]
        result["ours"] = rel(o, dense)
        result["ours_vs_reference"] = float((o - r).abs().max() / r.norm() * r.numel() ** 0.5)
    return result


def strengthen(q, k, HW: int, gain: float):
    """k with frame 0's keys lifted by gain along the unit mean query of frames >= 1."""
    k2 = k.clone()
    k2[:HW] += gain * lift_direction(q, HW)
    return k2


def lift_direction(q, HW: int):
    u = q[HW:].mean(0)
    return u / u.norm()


def gain_for_share(q, k, HW: int, target: float, chunk: int = 2048) -> float:
    """The gain g at which frame 0 holds `target` of the mass of the rows of frames >= 1, on average.

    Lifting frame 0's keys by g·u adds g·s·(q_r·u) to row r's frame-0 logits only, so row r's share is
    sigmoid(lse0_r + g·s·(q_r·u) − lse_rest_r) with the two log-sum-exps taken once without the lift."""
    s = q.shape[-1] ** -0.5
    rows = q[HW:]
    lse0, rest = [], []
    for a in range(0, rows.shape[0], chunk):
        x = rows[a:a + chunk] @ k.T * s
        lse0.append(torch.logsumexp(x[:, :HW], -1))
        rest.append(torch.logsumexp(x[:, HW:], -1))
    base = torch.cat(lse0) - torch.cat(rest)
    lift = rows @ lift_direction(q, HW) * s

    def share(g):
        return float(torch.sigmoid(base + g * lift).mean())
    if share(0.0) >= target:
        return 0.0
    lo, hi = 0.0, 1.0
    while share(hi) < target:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise RuntimeError(f"frame-0 share {target} not reachable by lifting frame 0's keys")
    for _ in range(60):
        mid = (lo + hi) / 2
        (lo, hi) = (mid, hi) if share(mid) < target else (lo, mid)
    return (lo + hi) / 2


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cli", default=None, help="vmonarch binary for make-inputs (default: see find_cli)")
    ap.add_argument("--grid", default="8,12,16")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only-head", type=int, default=None, help="study this head only (default: every head)")
    ap.add_argument("--shares", default="0.4,0.6,0.8,0.9,0.95,0.99", help="frame-0 shares of the sink sweep")
    ap.add_argument("--no-ours", action="store_true", help="skip vmonarch.attention (reference only)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    try:
        grid = tuple(int(x) for x in args.grid.split(","))
    except ValueError:
        grid = ()
    if len(grid) != 3 or min(grid) < 1:
        ap.error(f"--grid is {args.grid!r}, expected T,H,W (three ints >= 1)")
    if args.heads < 1:
        ap.error(f"--heads is {args.heads}, expected an int >= 1")
    if args.only_head is not None and not 0 <= args.only_head < args.heads:
        ap.error(f"--only-head is {args.only_head}, expected 0..{args.heads - 1} (--heads is {args.heads})")
    try:
        shares = [float(x) for x in args.shares.split(",")]
    except ValueError:
        shares = []
    if not shares or not all(0 < x < 1 for x in shares):
        ap.error(f"--shares is {args.shares!r}, expected comma-separated fractions in (0, 1)")
    if args.json:
        try:
            check_output_path("--json", args.json)
        except ValueError as e:
            ap.error(str(e))
    T, HW = grid[0], grid[1] * grid[2]
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    ref = load_reference()
    with tempfile.TemporaryDirectory() as folder:
        q, k, v, kinds = video_inputs(find_cli(args.cli), grid, args.heads, args.head_dim, args.seed, folder)
    q, k, v = q.double(), k.double(), v.double()
    heads = range(args.heads) if args.only_head is None else [args.only_head]
    print(f"grid {grid}, d {args.head_dim}, seed {args.seed}; uniform attention would give frame 0 a share 1/T = "
          f"{1 / T:.3f}")
    print(f"{'head':>4s} {'kind':10s} {'frame-0 share':>13s} {'q10':>6s} {'q50':>6s} {'q90':>6s} "
          f"{'S=0 ref':>8s} {'S=1 ref':>8s} {'S=0 ours':>8s} {'S=1 ours':>8s} {'max|ours-ref|':>13s}")
    report = {"grid": grid, "head_dim": args.head_dim, "seed": args.seed, "heads": [], "sweep": []}
    for h in heads:
        qh, kh, vh = q[0, h], k[0, h], v[0, h]
        dense, mass = dense_and_frame0_mass(qh, kh, vh, HW)
        m = mass[HW:]
        qs = torch.quantile(m.float(), torch.tensor([0.1, 0.5, 0.9])).tolist()
        e0 = errors(ref, qh, kh, vh, T, dense, 0, ours=not args.no_ours)
        e1 = errors(ref, qh, kh, vh, T, dense, 1, ours=not args.no_ours)
        row = dict(head=h, kind=kinds[h], frame0_share=float(m.mean()), quantiles=qs, s0=e0, s1=e1)
        report["heads"].append(row)
        ours = (f"{e0['ours']:8.4f} {e1['ours']:8.4f} {max(e0['ours_vs_reference'], e1['ours_vs_reference']):13.2e}"
                if not args.no_ours else f"{'–':>8s} {'–':>8s} {'–':>13s}")
        print(f"{h:4d} {kinds[h]:10s} {row['frame0_share']:13.3f} {qs[0]:6.3f} {qs[1]:6.3f} {qs[2]:6.3f} "
              f"{e0['reference']:8.4f} {e1['reference']:8.4f} {ours}", flush=True)
    sink = args.only_head if args.only_head is not None else next((h for h in heads if kinds[h] == "sink"), None)
    if sink is not None and T >= 2:
        print(f"sink sweep on head {sink} ({kinds[sink]}): frame-0 keys lifted along the mean query")
        print(f"{'target share':>12s} {'gain':>8s} {'share':>6s} {'S=0 ref':>8s} {'S=1 ref':>8s}")
        qh, kh, vh = q[0, sink], k[0, sink], v[0, sink]
        for target in shares:
            gain = gain_for_share(qh, kh, HW, target)
            k2 = strengthen(qh, kh, HW, gain)
            dense, mass = dense_and_frame0_mass(qh, k2, vh, HW)
            e0 = errors(ref, qh, k2, vh, T, dense, 0, ours=False)["reference"]
            e1 = errors(ref, qh, k2, vh, T, dense, 1, ours=False)["reference"]
            share = float(mass[HW:].mean())
            report["sweep"].append(dict(target=target, gain=gain, share=share, s0=e0, s1=e1))
            print(f"{target:12.2f} {gain:8.3f} {share:6.3f} {e0:8.4f} {e1:8.4f}", flush=True)
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
