"""Merges vmonarch_bench's JSON and baselines.py's JSON into a markdown table (speedups included).

python3 bench/report.py OURS.json BASELINES.json [--label TEXT] [--append bench/RESULTS.md]
Prints the table; with --append, appends it under a heading naming the label, card and date.
"""
import argparse
import json


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ours")
    ap.add_argument("baselines", nargs="?")
    ap.add_argument("--label", default="run")
    ap.add_argument("--append")
    args = ap.parse_args()
    ours = json.load(open(args.ours))
    base = json.load(open(args.baselines)) if args.baselines else {"rows": [], "card": "-"}
    o = {(r["shape"], r["what"]): r for r in ours["rows"]}
    b = {(r["shape"], r["what"]): r for r in base["rows"]}
    shapes = [s for s in dict.fromkeys(r["shape"] for r in ours["rows"]) if s != "-"]

    def ms(d, key):
        r = d.get(key)
        return r["ms"] if r else None

    def f(x, fmt="{:.2f}"):
        return fmt.format(x) if x is not None else "–"

    lines = [f"### {args.label}: {ours['card']} ({ours['date']}); baselines on {base['card']}", "",
             "| shape | FA2 ms | cuDNN ms | our dense ms (vs FA2) | VMonarch t=2+rc ms | vs cuDNN | vs FA2 | t=1+rc | t=3+rc | t=2 no rc |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in shapes:
        fa2, cud, dense = ms(b, (s, "fa2")), ms(b, (s, "cudnn")), ms(o, (s, "dense (ours)"))
        vm = ms(o, (s, "vmonarch t=2 +recompute"))
        ratio = f"{dense / fa2:.2f}×" if dense and fa2 else "–"
        lines.append(f"| {s} | {f(fa2)} | {f(cud)} | {f(dense)} ({ratio}) | {f(vm)} | "
                     f"{f(cud / vm if cud and vm else None, '{:.1f}×')} | {f(fa2 / vm if fa2 and vm else None, '{:.1f}×')} | "
                     f"{f(ms(o, (s, 'vmonarch t=1 +recompute')))} | {f(ms(o, (s, 'vmonarch t=3 +recompute')))} | "
                     f"{f(ms(o, (s, 'vmonarch t=2')))} |")
    lines += ["", f"Kernels of the t=2 forward (device copy ceiling {ours.get('copy_gbps', 0):.0f} GB/s):", "",
              "| shape | R-step 1 ms (TF/s) | R-step 2 ms (TF/s) | L-step 1 ms (GB/s, % copy) | L-step 2 ms (GB/s, % copy) | recompute ms (TF/s) |",
              "|---|---|---|---|---|---|"]
    cp = ours.get("copy_gbps", 0) or 1
    for s in shapes:
        cells = []
        for what in ["R-step 1 (Q in place, K value)", "R-step 2 (row scale, K+V values)", "L-step 1 (aR, cR)",
                     "L-step 2 (O, lse)", "recompute frame 0"]:
            r = o.get((s, what))
            if r is None:
                cells.append("–")
            elif what.startswith("L-step"):
                cells.append(f"{r['ms']:.3f} ({r['gbps']:.0f}, {100 * r['gbps'] / cp:.0f}%)")
            else:
                cells.append(f"{r['ms']:.3f} ({r['tflops']:.0f})")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append:
        with open(args.append, "a") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
