#!/usr/bin/env bash
# Profiling run of the L-step backward kernels (spec §7 steps 3, 4, 6) on the lent GPU machine, from the repo root
# with the binaries in .devcarry as for gpu_suite.sh:
#   scripts/profile_lstep_bwd.sh [small|large ...]      (default: both)
# For each shape of backward_plan_bench, its first two L-step backward launches (n = 1: the last L-step, n = 2:
# the earlier one), each in its own ncu run with the memory, occupancy, warp-state and source counters:
# details_<shape>_<n>.txt and the warp-stall summary (scripts/ncu_stalls.py) in stalls_<shape>_<n>.txt. Output in $OUT (or ./out).
# KERNEL_RE overrides the kernel regex (default lstep_bwd).
set -u
BIN=${VMONARCH_BIN:-.devcarry}
KERNEL_RE=${KERNEL_RE:-lstep_bwd}
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$BIN"
OUTDIR=${OUT:-out}
mkdir -p "$OUTDIR"
[ $# -eq 0 ] && set -- small large
for shape in "$@"; do
  for n in 1 2; do
    rep=/tmp/lstep_bwd_${shape}_$n
    rm -f "$rep.ncu-rep"
    ncu -k "regex:$KERNEL_RE" --launch-skip $((n - 1)) --launch-count 1 --section SpeedOfLight --section MemoryWorkloadAnalysis \
      --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats --section SourceCounters \
      -o "$rep" "$BIN/backward_plan_bench" "--$shape" --rounds 1 --reps 1 --json /tmp/lstep_bwd_prof.json \
      > "$OUTDIR/ncu_${shape}_$n.log" 2>&1 || { echo "ncu failed for $shape launch $n"; tail -n 5 "$OUTDIR/ncu_${shape}_$n.log"; continue; }
    ncu -i "$rep.ncu-rep" --page details > "$OUTDIR/details_${shape}_$n.txt" 2>&1
    ncu -i "$rep.ncu-rep" --page source --csv --print-source sass > "/tmp/lstep_sass_${shape}_$n.csv" 2>&1 ||
      echo "source page export failed for $shape launch $n"
    python3 scripts/ncu_stalls.py "/tmp/lstep_sass_${shape}_$n.csv" 30 > "$OUTDIR/stalls_${shape}_$n.txt" 2>&1
    echo "== $shape launch $n:"
    grep -E '^ +(Duration|Memory Throughput|DRAM Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per Thread|Dynamic Shared Memory Per Block|Grid Size)' \
      "$OUTDIR/details_${shape}_$n.txt"
    rm -f "$OUTDIR/ncu_${shape}_$n.log"
  done
done
