#!/usr/bin/env bash
# Every GPU test (and, with --bench, every benchmark) on the lent GPU machine, ending with one short table.
#   scripts/gpu_all.sh [--only cpp|python|extra] [--bench] [--image-cxx-check]
# Phases (each also runnable alone, to fit one device call's time limit):
#   cpp     scripts/gpu_suite.sh --skip-bench: the C++ GPU tests, narrow tiles, the portable peer,
#           compute-sanitizer (binaries from $VMONARCH_BIN, default .devcarry/main; see the README's GPU section)
#   python  scripts/gpu_python_suite.sh: builds the extension from source there (system g++), smoke test,
#           tests/python/test_gpu.py; then the joint processors' and the backward's GPU tests and the Ulysses
#           GPU test (torchrun, one process per GPU)
#   extra   --image-cxx-check: builds the extension with the image's $CXX into its own folder and smoke-tests
#           it (must either work or stop with the build's message naming the compiler; never crash)
#   --bench adds vmonarch_bench + torch baselines (gpu_suite.sh), bench/ulysses_bench.py and, on one GPU,
#           bench/backward_memory.py, bench/wan_block_train.py (their JSON and markdown in the logs tarball),
#           bench/exact_groups_bench.py and bench/exact_groups_quality.py (JSON and markdown into $OUT; the
#           quality script needs the CLI binary $VMONARCH_BIN/vmonarch for its inputs)
# Logs: $OUT/gpu_all_logs.tgz (all logs) and $OUT/gpu_all_summary.txt.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ONLY=all; BENCH=0; IMAGE_CHECK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --only) ONLY=$2; shift ;;
    --bench) BENCH=1 ;;
    --image-cxx-check) IMAGE_CHECK=1 ;;
    *) echo "unknown option $1"; exit 2 ;;
  esac
  shift
done
FINAL_OUT=${OUT:-out}
LOGS=/tmp/gpu_all_logs
mkdir -p "$FINAL_OUT" "$LOGS"
export VMONARCH_BIN=${VMONARCH_BIN:-.devcarry/main}
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$PWD/$VMONARCH_BIN"
export PYTHONUNBUFFERED=1
ROWS=()
phase() { # phase NAME LOG CMD...: runs CMD, records PASS/FAIL and seconds
  local name=$1 log=$2; shift 2
  local t0=$SECONDS
  echo "=== $name"
  "$@" > "$LOGS/$log" 2>&1
  local rc=$?
  tail -n 25 "$LOGS/$log"
  ROWS+=("$(printf '%-34s %-10s %5ss' "$name" "$([ $rc -eq 0 ] && echo PASS || echo "FAIL($rc)")" $((SECONDS - t0)))")
}

nvidia-smi --query-gpu=name,driver_version,clocks.sm,power.draw --format=csv,noheader || true
date -u

IMG_PID=""
if [ $IMAGE_CHECK -eq 1 ]; then  # in the background: it only needs the CPUs
  ( CXX=${CXX:-c++} python3 -m pip install -v --no-build-isolation --no-deps --no-index --target /tmp/site-img . \
      -Ccmake.define.VMONARCH_CUDA=ON -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90a-real \
      -Cbuild-dir=/tmp/vmonarch-build-img > "$LOGS/image_cxx_build.log" 2>&1
    echo "build exit code $?" >> "$LOGS/image_cxx_build.log" ) &
  IMG_PID=$!
fi

if [ "$ONLY" = all ] || [ "$ONLY" = cpp ]; then
  B=--skip-bench; [ $BENCH -eq 1 ] && B=""
  phase "C++ GPU suite" cpp_suite.log env OUT="$LOGS/cpp" bash scripts/gpu_suite.sh $B
fi

if [ "$ONLY" = all ] || [ "$ONLY" = python ]; then
  phase "Python GPU suite (source build)" py_suite.log env OUT="$LOGS/py" bash scripts/gpu_python_suite.sh
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  export VMONARCH_REFERENCE_DIR=${VMONARCH_REFERENCE_DIR:-$PWD/.whl/reference}
  phase "joint processors (GPU)" joint.log python3 -m pytest tests/python/test_gpu_joint.py -q -rs -p no:cacheprovider
  # The CLI's CUDA backward runs with a prebuilt CUDA `vmonarch` binary (.devcarry/vmonarch or $VMONARCH_CLI).
  [ -z "${VMONARCH_CLI:-}" ] && [ -x .devcarry/vmonarch ] && export VMONARCH_CLI=$PWD/.devcarry/vmonarch
  phase "backward (GPU)" backward.log python3 -m pytest tests/python/test_gpu_backward.py \
    tests/python/test_backward_reruns_cpu.py tests/python/test_gpu_cli_backward.py \
    tests/python/test_gpu_exact_backward.py -q -rs -p no:cacheprovider
  NG=$(python3 -c 'import torch; print(torch.cuda.device_count())')
  phase "Ulysses ($NG GPU)" ulysses.log python3 -m torch.distributed.run --standalone --nproc-per-node="$NG" \
    -m pytest tests/python/test_gpu_distributed.py -q -rs -p no:cacheprovider
  if [ $BENCH -eq 1 ]; then
    phase "backward bench" backward_bench.log python3 bench/backward_bench.py --json "$LOGS/backward_bench.json"
    # The backward's memory (saved bytes per layer, workspace) and one Wan2.1-1.3B block's training step at
    # 480p and 720p (estimated: under a minute and one to two minutes on an H200); cut at 4 min each.
    phase "backward memory" backward_memory.log timeout 240 \
      python3 bench/backward_memory.py --json "$LOGS/backward_memory.json" --md "$LOGS/backward_memory.md"
    phase "Wan block train step" wan_block_train.log timeout 240 \
      python3 bench/wan_block_train.py --shape 480p,720p --json "$LOGS/wan_block_train.json" \
      --md "$LOGS/wan_block_train.md"
    phase "Ulysses bench ($NG GPU)" ulysses_bench.log python3 -m torch.distributed.run --standalone \
      --nproc-per-node="$NG" bench/ulysses_bench.py --json "$LOGS/ulysses_bench.json"
    # Exact key groups and joint attention against cuDNN SDPA (one GPU; about a minute on an H200), then the
    # README's quality table (inputs from the CLI's make-inputs: $VMONARCH_BIN/vmonarch). Each is cut at 4 min.
    phase "exact groups bench" exact_groups_bench.log timeout 240 \
      python3 bench/exact_groups_bench.py --warmup 2 --reps 5 --out "$FINAL_OUT/exact_groups_bench.json"
    phase "exact groups quality" exact_groups_quality.log timeout 240 \
      python3 bench/exact_groups_quality.py --json "$FINAL_OUT/exact_groups_quality.json" \
      --md "$FINAL_OUT/exact_groups_quality.md"
  fi
fi

if [ -n "$IMG_PID" ]; then
  wait "$IMG_PID"
  echo "=== image CXX (${CXX:-c++}) build: $(tail -1 "$LOGS/image_cxx_build.log")"
  grep -E "C\+\+ runtime|CMake Error|links libstdc" "$LOGS/image_cxx_build.log" | head -5
  if grep -q "build exit code 0" "$LOGS/image_cxx_build.log"; then
    phase "image CXX build: smoke test" image_cxx_smoke.log env PYTHONPATH=/tmp/site-img \
      python3 python/vmonarch/_smoke.py --device auto
  else
    # A refused build is acceptable when it says why, naming the compiler.
    if grep -q "CMake Error" "$LOGS/image_cxx_build.log"; then grep -A12 "CMake Error" "$LOGS/image_cxx_build.log" | head -14; fi
    ROWS+=("$(printf '%-34s %-10s' "image CXX build" "REFUSED")")
  fi
fi

tar czf "$FINAL_OUT/gpu_all_logs.tgz" -C "$LOGS" . 2>/dev/null
{ echo "--- gpu_all summary"; printf '%s\n' "${ROWS[@]}"; } | tee "$FINAL_OUT/gpu_all_summary.txt"
grep -q FAIL "$FINAL_OUT/gpu_all_summary.txt" && exit 1
exit 0
