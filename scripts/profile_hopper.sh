#!/usr/bin/env bash
# Profiling run for the lent GPU machine (from the repo root, binaries in .devcarry as for gpu_suite.sh):
#   scripts/profile_hopper.sh ["ROW NAME" ...]
# 1. SM clock, power and clock-event reasons sampled every 100 ms while the first row runs back to back
#    (200 launches): the clocks the benchmark tables are measured at.
# 2. For each row of hopper_flash_bench (default: the 24x44x80x40h R-step first and the dense kernel), one
#    launch under ncu (--clock-control none) with the source counters: the warp-stall samples of every SASS
#    instruction summarised by scripts/ncu_stalls.py (stalls_*.txt; KEEP_SASS_CSV=1 also returns the CSVs)
#    and the details page (details_*.txt).
# Output goes to $OUT (the device tool's folder) or ./out; at most 8 files come back from $OUT.
# Another bench: BENCH (binary name, default hopper_flash_bench), BENCH_ARGS (default --hopper-only), KERNEL_RE
# (ncu's kernel regex, default flash_sm90_kernel); the bench must take --only ROW and --reps N, e.g.
#   BENCH=flash_bwd_bench BENCH_ARGS="--no-det --schedule coop-pipe" KERNEL_RE=flash_bwd_sm90 \
#     scripts/profile_hopper.sh "dense frame-0"
set -u
BIN=${VMONARCH_BIN:-.devcarry}
BENCH=${BENCH:-hopper_flash_bench}
BENCH_ARGS=${BENCH_ARGS:---hopper-only}
KERNEL_RE=${KERNEL_RE:-flash_sm90_kernel}
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$BIN"
OUTDIR=${OUT:-out}
mkdir -p "$OUTDIR"
if [ $# -eq 0 ]; then set -- "24x44x80x40h R-step first" "dense N=23296 12h (O)"; fi

nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active \
  --format=csv -lms 100 > "$OUTDIR/clocks.csv" 2>&1 &
SMI=$!
sleep 1
"$BIN/$BENCH" $BENCH_ARGS --only "$1" --reps 200 > "$OUTDIR/sustained.txt" 2>&1
sleep 1
kill $SMI 2>/dev/null
python3 - "$OUTDIR/clocks.csv" <<'EOF'
import csv, sys
rows = [r for r in list(csv.reader(open(sys.argv[1])))[1:] if len(r) > 2 and r[1].split()[0].isdigit()]
clk = [float(r[1].split()[0]) for r in rows]
if clk:
    busy = [(c, float(r[2].split()[0])) for c, r in zip(clk, rows) if float(r[2].split()[0]) > 200]
    print(f"clock samples {len(clk)}: SM clock min {min(clk):.0f} max {max(clk):.0f} MHz; "
          f"under load (power > 200 W, {len(busy)} samples): mean clock {sum(c for c, _ in busy) / max(1, len(busy)):.0f} MHz, "
          f"mean power {sum(p for _, p in busy) / max(1, len(busy)):.0f} W")
EOF
grep -E "(hopper|sm90-[a-z-]+) +[0-9]" "$OUTDIR/sustained.txt"

i=0
for row in "$@"; do
  i=$((i + 1))
  rep=/tmp/prof_$i
  rm -f "$rep.ncu-rep"
  ncu --clock-control none -k "regex:$KERNEL_RE" --launch-skip 2 --launch-count 1 \
    --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section SourceCounters \
    -o "$rep" "$BIN/$BENCH" $BENCH_ARGS --only "$row" --reps 1 > "$OUTDIR/ncu_run_$i.log" 2>&1 ||
    { echo "ncu failed for '$row'"; tail -n 5 "$OUTDIR/ncu_run_$i.log"; continue; }
  ncu -i "$rep.ncu-rep" --page details > "$OUTDIR/details_$i.txt" 2>&1
  ncu -i "$rep.ncu-rep" --page source --csv --print-source sass > "/tmp/sass_$i.csv" 2>&1 ||
    echo "source page export failed for '$row'"
  { echo "== $row"; python3 scripts/ncu_stalls.py "/tmp/sass_$i.csv" 40; } > "$OUTDIR/stalls_$i.txt" 2>&1
  [ -n "${KEEP_SASS_CSV:-}" ] && cp "/tmp/sass_$i.csv" "$OUTDIR/"
  echo "== $row: $(grep -E '^ +Duration' "$OUTDIR/details_$i.txt" | head -1)"
  rm -f "$OUTDIR/ncu_run_$i.log"
done
ls -la "$OUTDIR"
