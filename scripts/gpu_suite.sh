#!/usr/bin/env bash
# GPU suite for the lent GPU machine, run from the repo root:
#   scripts/gpu_suite.sh [--quick] [--skip-tests] [--skip-sanitizers] [--skip-bench] [--filter GTEST_FILTER]
# Binaries come prebuilt from .devcarry/ (vmonarch_gpu_tests, vmonarch_bench; see the README's GPU section),
# or from $VMONARCH_BIN. Logs and JSON go to $OUT (the device tool's folder) or ./out. Ends with a short
# pass/fail + timing table.
set -u
BIN=${VMONARCH_BIN:-.devcarry}
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$BIN"  # libgomp fallback carried with the binaries
OUTDIR=${OUT:-out}
mkdir -p "$OUTDIR"
QUICK=0; TESTS=1; SANI=1; BENCH=1; FILTER='*'
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --skip-tests) TESTS=0 ;;
    --skip-sanitizers) SANI=0 ;;
    --skip-bench) BENCH=0 ;;
    --filter) FILTER="$2"; shift ;;
    *) echo "unknown option $1"; exit 2 ;;
  esac
  shift
done

SUMMARY=()
FAILED=0
step() { # step NAME LOGFILE CMD...
  local name=$1 log=$2; shift 2
  local t0=$(date +%s.%N)
  echo "=== $name: $*"
  "$@" > "$OUTDIR/$log" 2>&1
  local rc=$?
  local t1=$(date +%s.%N)
  local secs=$(python3 -c "print(f'{$t1-$t0:.1f}')")
  if [ $rc -eq 0 ]; then SUMMARY+=("$(printf '%-28s PASS  %7ss' "$name" "$secs")");
  else SUMMARY+=("$(printf '%-28s FAIL(rc=%d) %7ss' "$name" $rc "$secs")"); FAILED=1; fi
  tail -n 40 "$OUTDIR/$log" | grep -E "^\[ (pipeline|dense|kernel|device) |FAILED|PASSED|ERROR SUMMARY|error|Error|TFLOP|GB/s|ms " | tail -n 60
  return $rc
}

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader || true
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}

if [ $TESTS -eq 1 ]; then
  step "gpu tests" gpu_tests.log "$BIN/vmonarch_gpu_tests" --gtest_filter="$FILTER"
  grep -E "^\[ (pipeline|dense|kernel|device) " "$OUTDIR/gpu_tests.log" > "$OUTDIR/gpu_errors.txt" || true
  # The Hopper kernel picks its key-tile width per call (wide at most test shapes); the narrow tiles must
  # pass the same flash-level tests (a no-op on cards other than sm_90).
  step "gpu tests (narrow tiles)" gpu_tests_narrow.log env VMONARCH_HOPPER_TILE=narrow \
    "$BIN/vmonarch_gpu_tests" --gtest_filter='HopperFlash.*:*Kernels.RStep*:*Dense*:*Pipeline*'
  # What non-Hopper GPUs run: the whole forward and the flash-level tests on the portable mma.sync kernel.
  step "gpu tests (portable kernel)" gpu_tests_portable.log env VMONARCH_DISABLE_HOPPER=1 \
    "$BIN/vmonarch_gpu_tests" --gtest_filter='PortableFlash.*:*Kernels*:*Dense*:*Pipeline*'
fi

if [ $SANI -eq 1 ]; then
  # Small awkward shapes: HW = 1, 65, 63 (clamp off), key/query tails, T = 3, 21, 33, 64 (every L-step
  # variant), dense with Nq = 7 and 130; the Hopper kernel's small shapes and its determinism check; poly_exp2.
  SF='*T3x1x1*:*T2x5x13*:*T3x7x9*noclamp*:*Kernels*HW65*:*Kernels*T21_HW63*:*Kernels*T33_HW7*:*Kernels*T64_HW9*:*Nq7_Nk65*:*Nq130_Nk63*:CudaErrors.WorkspaceTooSmall:HopperFlash.SmallShapes:HopperFlash.DeterministicAcrossRunsAndSchedules:HopperFlash.SeveralQueryTilesPerBlock_LongKeysSmall:PolyExp2.*'
  for tool in memcheck racecheck initcheck; do
    step "sanitizer $tool" "sanitizer_$tool.log" compute-sanitizer --tool $tool --error-exitcode 1 \
      "$BIN/vmonarch_gpu_tests" --gtest_filter="$SF"
  done
  # The flash backward: a key tail of 1, len_q below a tile and of 1, several segments, both head dims, every
  # Hopper schedule and the portable kernel (check_every_peer), the pipelined and specialized forms' bitwise comparisons.
  BSF='Kernel/FlashBwd.MatchesF64Formulas/B2h2_S3_q37_k37*:Kernel/FlashBwd.MatchesF64Formulas/B1h2_S3_q1_k130*:Kernel/FlashBwd.MatchesF64Formulas/B1h2_S2_q129*:FlashBwdPipelined.*:FlashBwdSpecialized.*'
  for tool in memcheck racecheck; do
    step "sanitizer $tool (flash backward)" "sanitizer_${tool}_bwd.log" compute-sanitizer --tool $tool --error-exitcode 1 \
      "$BIN/vmonarch_gpu_tests" --gtest_filter="$BSF"
  done
  # The L-step backward's tensor-core kernels (one and two warps per position) at 16·MT = 16, 32 and 48 padded
  # frames, with and without dc, every exact-group variant.
  LSF='Shapes/LStepBwd.*/f16_d64_T2_HW13*:Shapes/LStepBwd.*/bf16_d128_T21_HW17*:Shapes/LStepBwd.*/f16_d64_T48_HW5*'
  for tool in memcheck racecheck; do
    step "sanitizer $tool (L-step backward)" "sanitizer_${tool}_lstep_bwd.log" compute-sanitizer --tool $tool --error-exitcode 1 \
      "$BIN/vmonarch_gpu_tests" --gtest_filter="$LSF"
  done
  # The same shapes on the portable kernel (on an H100 the runs above take the Hopper kernel).
  for tool in memcheck racecheck; do
    step "sanitizer $tool (portable)" "sanitizer_${tool}_portable.log" env VMONARCH_DISABLE_HOPPER=1 \
      compute-sanitizer --tool $tool --error-exitcode 1 "$BIN/vmonarch_gpu_tests" --gtest_filter="$SF"
  done
fi

if [ $BENCH -eq 1 ]; then
  Q=""; [ $QUICK -eq 1 ] && Q="--quick"
  step "benchmark (ours)" bench.log "$BIN/vmonarch_bench" --json "$OUTDIR/bench.json" $Q
  step "baselines (torch SDPA)" baselines.log env PYTHONUNBUFFERED=1 python3 bench/baselines.py --json "$OUTDIR/baselines.json" $Q
  if [ -f "$OUTDIR/bench.json" ]; then
    python3 bench/report.py "$OUTDIR/bench.json" $( [ -f "$OUTDIR/baselines.json" ] && echo "$OUTDIR/baselines.json" ) \
      --label "gpu_suite" > "$OUTDIR/report.md" 2>&1 || true
  fi
fi

echo
[ -f "$OUTDIR/report.md" ] && cat "$OUTDIR/report.md"
[ -f "$OUTDIR/gpu_errors.txt" ] && { echo "--- accuracy (rel-L2) ---"; cat "$OUTDIR/gpu_errors.txt"; }
echo "--- summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)) ---"
for s in "${SUMMARY[@]}"; do echo "$s"; done
exit $FAILED
