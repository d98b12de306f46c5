#!/usr/bin/env bash
# Installs everything vmonarch needs on a fresh Debian/Ubuntu machine and builds it into ./build.
#   ./scripts/setup.sh            # system packages + C++ build (+ Python package when scripts/setup_python.sh exists)
#   VMONARCH_SKIP_PYTHON=1 ./scripts/setup.sh   # C++ only
# CUDA kernels are built when nvcc is on the PATH or in /usr/local/cuda/bin (no GPU needed to build).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake ninja-build pkg-config git libgtest-dev libgmock-dev libcli11-dev
          nlohmann-json3-dev libpng-dev zlib1g-dev clang)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi

if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi

generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
if [ ! -f build/CMakeCache.txt ]; then
    cmake -S . -B build "${generator[@]}" -DCMAKE_BUILD_TYPE=Release ${VMONARCH_CMAKE_ARGS:-}
fi
cmake --build build -j "$(nproc)"

if [ -z "${VMONARCH_SKIP_PYTHON:-}" ] && [ -x scripts/setup_python.sh ]; then
    scripts/setup_python.sh
fi
echo "setup: done; try ./build/vmonarch demo" >&2
