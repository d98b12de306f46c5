#!/usr/bin/env bash
# The Python package's GPU suite, for the lent GPU machine (no internet), run from the repo root:
#   scripts/gpu_python_suite.sh [--prebuilt] [--all | --gpu-files] [--bench] [--bench-quick] [--train-bench]
#                               [--tests "FILES"] [--overhead] [--skip-tests] [--build-check] [--image-cxx]
#
# Compiler: the extension is built with the system g++ (/usr/bin/g++, or $VMONARCH_CXX), not the image's
# $CXX: that one links libstdc++ statically into shared libraries, and such a module crashes on its first
# call. --image-cxx builds with the image's $CXX instead (to check that the build then either repairs the
# link with torch's libstdc++ and works, or stops with a message naming the compiler).
#
# Needs in .whl/ (git-ignored, carried to the machine; see the README's PyTorch section, "GPU machine"):
#   diffusers-*.whl, importlib_metadata-*.whl   pure-Python wheels the machine lacks
#   reference/vmonarch_ref.py                    copy of shared/reference (../shared does not travel)
#   vmonarch-*.whl                               only with --prebuilt: built here with
#       pip wheel --no-build-isolation --no-deps -w .whl . -Ccmake.define.VMONARCH_CUDA=ON
#
# Steps: install the carried wheels into /tmp/site; build the extension there offline
# (pip install --no-build-isolation --no-deps, CUDA on, all cores), or install the prebuilt wheel with
# --prebuilt (--build-check then also builds from source in the background and reports whether that
# worked); run tests/python/test_gpu.py (--all: every Python test; --gpu-files: every file with the GPU in its
# name: the forward, backward, CLI backward (with a carried CLI binary, below), exact-group backward, joint,
# torch-impl and 1-GPU NCCL tests);
# --bench: bench/wan_e2e.py; --train-bench: bench/backward_bench.py (plain and exact cases, against cuDNN) and
# bench/wan_block_train.py (one Wan2.1-1.3B block's training step at 480p and 720p); --overhead:
# bench/backward_overhead.py (the backward through autograd, the op, a CUDA graph; cuDNN's); --skip-tests: no
# pytest step; --tests "FILES": these test files instead.
# Logs go to $OUT (the device tool's folder) or ./out.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUTDIR=${OUT:-out}
mkdir -p "$OUTDIR"
PREBUILT=0; ALL=0; GPU_FILES=0; BENCH=0; BENCH_ARGS=(); TRAIN_BENCH=0; BUILD_CHECK=0; IMAGE_CXX=0; OVERHEAD=0
SKIP_TESTS=0; ONLY_TESTS=
while [ $# -gt 0 ]; do
  case "$1" in
    --prebuilt) PREBUILT=1 ;;
    --all) ALL=1 ;;
    --gpu-files) GPU_FILES=1 ;;
    --train-bench) TRAIN_BENCH=1 ;;
    --overhead) OVERHEAD=1 ;;
    --skip-tests) SKIP_TESTS=1 ;;
    --tests) ONLY_TESTS=$2; shift ;;
    --bench) BENCH=1 ;;
    --bench-quick) BENCH=1; BENCH_ARGS+=(--quick) ;;
    --build-check) BUILD_CHECK=1 ;;
    --image-cxx) IMAGE_CXX=1 ;;
    *) echo "unknown option $1"; exit 2 ;;
  esac
  shift
done

SITE=/tmp/site
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
export VMONARCH_REFERENCE_DIR=${VMONARCH_REFERENCE_DIR:-$PWD/.whl/reference}
[ -d shared/reference ] && VMONARCH_REFERENCE_DIR=$PWD/shared/reference
PIP=(python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE")
CUDA_DEFINES=(-Ccmake.define.VMONARCH_CUDA=ON -Ccmake.define.CMAKE_CUDA_ARCHITECTURES="${VMONARCH_CUDA_ARCHS:-90a-real}")
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}

if [ $IMAGE_CXX -eq 1 ]; then
  BUILD_TAG=image-cxx
  echo "compiler: the image's CXX=${CXX:-(unset, CMake picks c++)}"
else
  BUILD_TAG=gxx
  export CXX=${VMONARCH_CXX:-$(command -v /usr/bin/g++ || command -v g++ || echo g++)}
  echo "compiler: CXX=$CXX (the image's CXX is not used; --image-cxx to use it)"
fi
[ -n "${CXX:-}" ] && { "$CXX" --version | head -1 || true; }
BUILD_DIR=/tmp/vmonarch-build-$BUILD_TAG

# Prints the build's own explanation of a failure (CMake's error), else the log's end.
build_failed() {
  if grep -q "CMake Error" "$1"; then grep -A 24 "CMake Error" "$1" | head -60; else tail -40 "$1"; fi
}

nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'

deps=$(ls .whl/*.whl 2>/dev/null | grep -v '/vmonarch-' || true)
if [ -n "$deps" ]; then "${PIP[@]}" $deps || exit 1; fi

t0=$(date +%s)
if [ $PREBUILT -eq 1 ]; then
  wheel=$(ls .whl/vmonarch-*.whl 2>/dev/null | head -1)
  [ -n "$wheel" ] || { echo "--prebuilt: no .whl/vmonarch-*.whl"; exit 1; }
  "${PIP[@]}" "$wheel" || exit 1
  cp python/vmonarch/*.py "$SITE/vmonarch/"   # the checkout's Python sources over the wheel's
  if [ $BUILD_CHECK -eq 1 ]; then
    ( python3 -m pip install --no-build-isolation --no-deps --no-index --target /tmp/site-build . \
        "${CUDA_DEFINES[@]}" -Cbuild-dir="$BUILD_DIR-check" > "$OUTDIR/offline_build.log" 2>&1
      echo "offline build exit code $?" >> "$OUTDIR/offline_build.log" ) &
    BUILD_PID=$!
  fi
else
  python3 -m pip install -v --no-build-isolation --no-deps --no-index --target "$SITE" . "${CUDA_DEFINES[@]}" \
    -Cbuild-dir="$BUILD_DIR" > "$OUTDIR/build.log" 2>&1 || {
    build_failed "$OUTDIR/build.log"
    [ $IMAGE_CXX -eq 1 ] && echo "(built with the image's CXX=${CXX:-}; without --image-cxx the suite uses /usr/bin/g++)"
    exit 1; }
  echo "offline build: $(($(date +%s) - t0)) s"
  grep "vmonarch python: C++ runtime" "$OUTDIR/build.log" | sed 's/^ *//' || true
fi
python3 -c 'import vmonarch; print("vmonarch", vmonarch.__version__, "cuda kernels:", vmonarch.cuda_built(), "device:", vmonarch.cuda_available())' || exit 1
# One attention and one dense_attention call on CPU and CUDA tensors, in a child process: a module that
# crashes is reported with the compiler that built it, and the suite stops here.
python3 python/vmonarch/_smoke.py --device auto || exit 1

# The CLI's CUDA backward tests (test_gpu_cli_backward.py) need a CUDA build of the `vmonarch` binary: carried as
# .devcarry/vmonarch (or $VMONARCH_CLI), else they are skipped.
[ -z "${VMONARCH_CLI:-}" ] && [ -x .devcarry/vmonarch ] && export VMONARCH_CLI=$PWD/.devcarry/vmonarch
[ -n "${VMONARCH_CLI:-}" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$(dirname "$VMONARCH_CLI")"
FAILED=0
TESTS=tests/python/test_gpu.py
[ $GPU_FILES -eq 1 ] && TESTS=$(ls tests/python/test_*gpu*.py)
[ $ALL -eq 1 ] && TESTS=tests/python
[ -n "$ONLY_TESTS" ] && TESTS=$ONLY_TESTS
if [ $SKIP_TESTS -eq 0 ]; then
  python3 -m pytest $TESTS -q -p no:cacheprovider -rs --junitxml="$OUTDIR/pytest_gpu.xml" 2>&1 | tee "$OUTDIR/pytest_gpu.log" | tail -40
  [ "${PIPESTATUS[0]}" -eq 0 ] || FAILED=1
fi

if [ $OVERHEAD -eq 1 ]; then
  python3 bench/backward_overhead.py --json "$OUTDIR/backward_overhead.json" 2>&1 | tee "$OUTDIR/backward_overhead.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || FAILED=1
fi

if [ $BENCH -eq 1 ]; then
  python3 bench/wan_e2e.py "${BENCH_ARGS[@]}" --json "$OUTDIR/wan_e2e.json" 2>&1 | tee "$OUTDIR/wan_e2e.log" || FAILED=1
fi

if [ $TRAIN_BENCH -eq 1 ]; then
  python3 bench/backward_bench.py --cases plain,exact --json "$OUTDIR/backward_bench.json" 2>&1 | tee "$OUTDIR/backward_bench.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || FAILED=1
  python3 bench/wan_block_train.py --json "$OUTDIR/wan_block_train.json" --md "$OUTDIR/wan_block_train.md" 2>&1 |
    tee "$OUTDIR/wan_block_train.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || FAILED=1
fi

if [ -n "${BUILD_PID:-}" ]; then
  wait "$BUILD_PID"
  tail -3 "$OUTDIR/offline_build.log"
fi
exit $FAILED
