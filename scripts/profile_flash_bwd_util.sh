#!/usr/bin/env bash
# Pipe and shared-memory utilization of the Hopper flash backward kernels (lent GPU machine, repo root,
# binaries in .devcarry as for gpu_suite.sh):
#   scripts/profile_flash_bwd_util.sh [SCHEDULE] ["CASE" ...]
# One launch per case of `flash_bwd_bench --big --hopper-only --no-det --schedule SCHEDULE --only CASE` under
# ncu (--clock-control none): the tensor (gmma) pipe's active cycles, shared-memory wavefronts and bank
# conflicts, issue slots, achieved clock and duration; the summary table goes to stdout and $OUT/util.txt.
set -u
BIN=${VMONARCH_BIN:-.devcarry}
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$BIN"
OUTDIR=${OUT:-out}
mkdir -p "$OUTDIR"
SCHED=${1:-spec-prep}
shift || true
if [ $# -eq 0 ]; then set -- "R-step first (dA)" "R-step last (rs, dA, dY)" "dense frame-0"; fi
ARGS=${BENCH_ARGS:---big --hopper-only --no-det}
M=sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active
M=$M,sm__inst_executed_pipe_tensor_op_gmma.sum
M=$M,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum.pct_of_peak_sustained_elapsed
M=$M,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum
M=$M,smsp__issue_active.avg.pct_of_peak_sustained_active
M=$M,sm__cycles_elapsed.avg.per_second,gpu__time_duration.sum
M=$M,lts__t_sectors_op_red.sum,lts__t_sectors_op_atom.sum,lts__throughput.avg.pct_of_peak_sustained_elapsed
M=$M,dram__throughput.avg.pct_of_peak_sustained_elapsed
M=$M,smsp__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,smsp__inst_executed_pipe_xu.sum
for row in "$@"; do
  echo "== $row ($SCHED)"
  ncu --clock-control none -k "regex:flash_bwd_sm90" --launch-skip 2 --launch-count 1 --metrics "$M" \
    "$BIN/flash_bwd_bench" $ARGS --schedule "$SCHED" --only "$row" --reps 1 2>&1 |
    grep -E "^ +(sm__|l1tex__|smsp__|lts__|dram__|gpu__)" || echo "ncu failed"
done | tee "$OUTDIR/util.txt"
