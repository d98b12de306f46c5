#!/usr/bin/env python3
"""Summarise an ncu source-page CSV (ncu -i REPORT --page source --csv --print-source sass):
warp-stall samples by reason, and the instructions with the most samples.
usage: ncu_stalls.py SASS.csv [TOP]"""
import collections
import csv
import sys


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    top_n = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    rows = list(csv.reader(open(sys.argv[1], newline="")))
    head = next((i for i, r in enumerate(rows) if "Address" in r and "Source" in r), None)
    if head is None:
        sys.exit(f"{sys.argv[1]}: no 'Address'/'Source' header row: not an ncu source-page CSV")
    hdr = rows[head]
    ix = {h: i for i, h in enumerate(hdr)}
    stalls = [h for h in hdr if h.startswith("stall_") and "Not Issued" not in h]
    total, by_reason, per_instr = 0, collections.Counter(), []
    base = None
    for r in rows[head + 1:]:
        if len(r) < len(hdr):
            continue
        try:
            addr = int(r[ix["Address"]], 16)
            samples = int(r[ix["Warp Stall Sampling (All Samples)"]] or 0)
        except ValueError:
            continue
        base = addr if base is None else base
        total += samples
        reasons = {}
        for c in stalls:
            v = int(r[ix[c]] or 0)
            by_reason[c] += v
            if v:
                reasons[c[6:]] = v
        per_instr.append((samples, addr - base, r[ix["Source"]].strip(), reasons))
    if total == 0:
        sys.exit("no warp-stall samples in the CSV")
    print(f"{total} warp-stall samples")
    for c, v in by_reason.most_common():
        if v:
            print(f"  {c[6:]:20s} {100 * v / total:5.1f}%")
    print(f"top {top_n} instructions (offset from the kernel's first instruction):")
    for s, off, src, reasons in sorted(per_instr, reverse=True)[:top_n]:
        why = ", ".join(f"{k} {100 * v / total:.2f}%" for k, v in sorted(reasons.items(), key=lambda x: -x[1])[:3])
        print(f"  {100 * s / total:5.2f}%  {off:05x}  {src[:56]:56s}  {why}")


if __name__ == "__main__":
    main()
