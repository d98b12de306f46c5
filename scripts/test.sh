#!/usr/bin/env bash
# The README's test command: builds (via setup.sh), runs the ctest suite, then the same suite under
# AddressSanitizer + UndefinedBehaviorSanitizer (CPU build), the fuzz targets' short runs, and the
# Python package's tests when it is installed. GPU tests run on a GPU machine: scripts/gpu_suite.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

echo "== ctest (release build)" >&2
ctest --test-dir build --output-on-failure -j "$(nproc)"

echo "== ctest under ASan + UBSan (CPU build)" >&2
if [ ! -f build-asan/CMakeCache.txt ]; then
    cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVMONARCH_CUDA=OFF -DVMONARCH_SANITIZE=ON \
        $(command -v ninja >/dev/null && echo -G Ninja)
fi
cmake --build build-asan -j "$(nproc)"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-asan --output-on-failure -j "$(nproc)" -LE slow

if [ -f fuzz/CMakeLists.txt ]; then
    echo "== fuzz targets (short runs over the seed corpus)" >&2
    if [ ! -f build-fuzz/CMakeCache.txt ]; then
        CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVMONARCH_CUDA=OFF \
            -DVMONARCH_FUZZ=ON -DVMONARCH_BUILD_TESTS=OFF -DVMONARCH_BUILD_TOOLS=OFF \
            $(command -v ninja >/dev/null && echo -G Ninja)
    fi
    cmake --build build-fuzz -j "$(nproc)"
    ctest --test-dir build-fuzz --output-on-failure -L fuzz
fi

if [ -x scripts/test_python.sh ]; then
    echo "== Python package tests" >&2
    scripts/test_python.sh
fi
