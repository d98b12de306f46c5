#!/usr/bin/env python3
"""Compares the JSON files of two builds' C++ benches timed in one lease (scripts/gpu_ab.sh): vmonarch_bench,
exact_groups_cuda_bench or backward_plan_bench (bench/bench_json.hpp: rows with "shape" or "case", "what",
optionally "schedule", and "ms"):
  compare_bench.py --before A1.json [A2.json ...] --after B1.json [B2.json ...] [--tolerance 2]
Per (shape, row) it takes the median over each build's runs and prints before, after and the change in
percent; rows beyond the tolerance are marked. Exit code 0 either way (a report, not a test)."""
import argparse
import json
import statistics


def load(paths):
    rows, card = {}, None
    for path in paths:
        with open(path) as f:
            d = json.load(f)
        card = card or d.get("card")
        for r in d["rows"]:
            what = r["what"] + (f" [{r['schedule']}]" if r.get("schedule") else "")
            rows.setdefault((r.get("shape", r.get("case")), what), []).append(r["ms"])
    return rows, card


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", nargs="+", required=True)
    ap.add_argument("--after", nargs="+", required=True)
    ap.add_argument("--tolerance", type=float, default=2.0, help="percent")
    a = ap.parse_args()
    before, card = load(a.before)
    after, _ = load(a.after)
    print(f"card: {card}; median of {len(a.before)} run(s) before, {len(a.after)} after; +% = slower")
    print(f"| shape | row | before ms | after ms | change |")
    print(f"|---|---|---|---|---|")
    worst = 0.0
    for key in before:
        if key not in after or key[1].startswith("device copy"):
            continue
        b, n = statistics.median(before[key]), statistics.median(after[key])
        pct = 100.0 * (n - b) / b
        worst = max(worst, pct)
        mark = "  **over**" if pct > a.tolerance else ""
        print(f"| {key[0]} | {key[1]} | {b:.3f} | {n:.3f} | {pct:+.1f}%{mark} |")
    print(f"slowest change: {worst:+.1f}% (tolerance {a.tolerance:.0f}%)")


if __name__ == "__main__":
    main()
