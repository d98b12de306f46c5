#!/usr/bin/env bash
# Build the libFuzzer targets with clang and run each for N seconds (default 60).
#   scripts/fuzz.sh [seconds]        env: BUILD_DIR (default build-fuzz), JOBS (default nproc)
# New corpus entries go to $BUILD_DIR/fuzz-work/<format>; crashes to $BUILD_DIR/fuzz-artifacts/.
set -euo pipefail

seconds="${1:-60}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${BUILD_DIR:-$root/build-fuzz}"
jobs="${JOBS:-$(nproc)}"

CC=clang CXX=clang++ cmake -S "$root" -B "$build" -DVMONARCH_FUZZ=ON -DVMONARCH_CUDA=OFF \
  -DVMONARCH_BUILD_TESTS=OFF -DVMONARCH_BUILD_TOOLS=OFF >/dev/null
cmake --build "$build" -j"$jobs" --target fuzz_npy fuzz_safetensors

status=0
for format in npy safetensors; do
  work="$build/fuzz-work/$format"
  artifacts="$build/fuzz-artifacts"
  mkdir -p "$work" "$artifacts"
  echo "== fuzz_$format for ${seconds}s"
  if ! "$build/fuzz/fuzz_$format" -max_total_time="$seconds" -print_final_stats=1 \
       -dict="$root/fuzz/$format.dict" -artifact_prefix="$artifacts/$format-" \
       "$work" "$root/fuzz/corpus/$format"; then
    echo "!! fuzz_$format found a problem; see $artifacts" >&2
    status=1
  fi
done
exit "$status"
