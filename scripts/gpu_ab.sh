#!/usr/bin/env bash
# A/B timing of two builds in one lease, on the GPU machine:
#   [BENCH=name] scripts/gpu_ab.sh BEFORE_DIR AFTER_DIR [ROUNDS] [OUTDIR] [-- bench options]
# Runs BEFORE_DIR/$BENCH and AFTER_DIR/$BENCH alternately ROUNDS times (default 2), writes their JSON to
# OUTDIR (default $OUT or ./out) and prints bench/compare_bench.py's table (median per row). BENCH: any
# bench writing bench/bench_json.hpp's JSON with --json FILE (default vmonarch_bench; exact_groups_cuda_bench,
# backward_plan_bench).
set -u
BEFORE=$1; AFTER=$2; ROUNDS=${3:-2}; OUTDIR=${4:-${OUT:-out}}
shift $(( $# < 4 ? $# : 4 )); [ "${1:-}" = "--" ] && shift
BENCH=${BENCH:-vmonarch_bench}
mkdir -p "$OUTDIR"
B=(); A=()
for i in $(seq 1 "$ROUNDS"); do
  "$BEFORE/$BENCH" --json "$OUTDIR/ab_before_$i.json" "$@" > "$OUTDIR/ab_before_$i.log" 2>&1 || echo "before run $i failed (rc=$?)"
  "$AFTER/$BENCH" --json "$OUTDIR/ab_after_$i.json" "$@" > "$OUTDIR/ab_after_$i.log" 2>&1 || echo "after run $i failed (rc=$?)"
  B+=("$OUTDIR/ab_before_$i.json"); A+=("$OUTDIR/ab_after_$i.json")
done
python3 "$(dirname "$0")/../bench/compare_bench.py" --before "${B[@]}" --after "${A[@]}"
