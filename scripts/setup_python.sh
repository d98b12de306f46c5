#!/usr/bin/env bash
# Set up the vmonarch PyTorch package on a machine that reaches PyPI (a developer box or CI):
#   1. torch (see "Which torch" below), numpy, pytest, scikit-build-core, diffusers, matplotlib (the
#      fine-tuning demo's loss curves);
#   2. build and install vmonarch's Python package from this checkout (pip install --no-build-isolation).
#
# Usage: scripts/setup_python.sh            (idempotent: skips what is already installed)
# Environment:
#   PYTHON=python3                 interpreter to install into
#   VMONARCH_TORCH_VERSION=2.11.0  torch version to install when none is importable
#   VMONARCH_TORCH_INSTALL=auto    auto | light | full | skip   (see below)
#   VMONARCH_CUDA=AUTO|ON|OFF      build the extension with the CUDA kernels; default: OFF unless
#                                  nvidia-smi sees a GPU (CPU-only machines then skip a long nvcc build)
#   VMONARCH_SKIP_BUILD=1          install the dependencies only
#   CXX=g++                        the C++ compiler (default: CMake's choice). The build refuses one that
#                                  links libstdc++ statically and cannot be made to link torch's shared one.
#
# After the install, python/vmonarch/_smoke.py calls vmonarch.attention and vmonarch.dense_attention once
# on CPU tensors (and CUDA ones when a GPU is visible) in a child process; if that fails (e.g. a crash of a
# module linked with another C++ runtime than torch's), the package is uninstalled again and the script
# exits 1 with a report naming the compiler.
#
# Which torch. PyPI has only CUDA builds of torch for Linux x86-64: `pip install torch` pulls about
# 2.7 GB of wheels (torch 0.53 GB plus cuBLAS, cuDNN, NCCL, cuSPARSELt, triton, ...), 4.6 GB installed,
# about 1 minute on a fast link (measured 2026-11 with torch 2.11.0, Python 3.11). CPU-only torch wheels
# live on a separate index that these machines cannot reach. The light path: where the machine already
# has a CUDA 13 toolkit in the loader's cache (the cpp-kernels image does, under /usr/local/cuda-13.0),
# install torch with --no-deps, its pure-Python requirements, and only the three CUDA libraries a
# toolkit does not ship (cuFile, cuSPARSELt, NVSHMEM): about 0.8 GB downloaded, 1.7 GB installed. torch
# imports and runs on the CPU that way (CUDA stays unused: there is no GPU). `auto` takes the light path
# where it applies and checks `import torch`; otherwise, or if that check fails, the full install.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
TORCH_VERSION=${VMONARCH_TORCH_VERSION:-2.11.0}
MODE=${VMONARCH_TORCH_INSTALL:-auto}
PIP=("$PY" -m pip install --disable-pip-version-check)

log() { echo "[setup_python] $*"; }

torch_ok() {
    "$PY" - <<'EOF' >/dev/null 2>&1
import torch
assert float(torch.ones(4) @ torch.ones(4)) == 4.0
EOF
}

# Pins of the CUDA libraries torch $TORCH_VERSION needs that a CUDA 13.0 toolkit does not ship.
light_pins() {
    case "$TORCH_VERSION" in
    2.11.0) echo "nvidia-cufile==1.15.1.6 nvidia-cusparselt-cu13==0.8.0 nvidia-nvshmem-cu13==3.4.5" ;;
    *) echo "" ;;
    esac
}

toolkit_has_runtime() {
    local cache
    cache=$(ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null || true)
    for so in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcudnn.so.9 libnccl.so.2 libcupti.so.13 \
              libnvrtc.so.13 libcufft.so.12 libcurand.so.10 libcusparse.so.12 libnvJitLink.so.13; do
        grep -q "$so " <<<"$cache" || return 1
    done
}

install_torch_light() {
    local pins
    pins=$(light_pins)
    [ -n "$pins" ] || return 1
    toolkit_has_runtime || return 1
    log "light torch install: torch==$TORCH_VERSION --no-deps + pure-Python deps + $pins"
    "${PIP[@]}" --no-deps "torch==$TORCH_VERSION" $pins
    "${PIP[@]}" filelock "typing-extensions>=4.10" "setuptools<82" "sympy>=1.13.3" "networkx>=2.5.1" jinja2 \
        "fsspec>=0.8.5"
    torch_ok
}

install_torch_full() {
    log "full torch install: torch==$TORCH_VERSION with its CUDA wheels"
    "${PIP[@]}" "torch==$TORCH_VERSION"
    torch_ok
}

start=$(date +%s)
if torch_ok; then
    log "torch already importable: $("$PY" -c 'import torch; print(torch.__version__)')"
else
    case "$MODE" in
    skip) log "VMONARCH_TORCH_INSTALL=skip and no torch: nothing to build against"; exit 1 ;;
    light) install_torch_light || { log "light install failed"; exit 1; } ;;
    full) install_torch_full ;;
    auto) install_torch_light || install_torch_full ;;
    *) log "unknown VMONARCH_TORCH_INSTALL=$MODE"; exit 2 ;;
    esac
    log "torch $("$PY" -c 'import torch; print(torch.__version__)') installed in $(($(date +%s) - start)) s"
fi

# Test and build requirements. diffusers is pinned to the version whose Wan attention processor
# vmonarch.wan mirrors (python/vmonarch/wan.py); yunchang (pure Python, needs only torch) for the test of
# vmonarch.distributed's yunchang hook; matplotlib for examples/finetune_tiny_dit.py's PNG.
"${PIP[@]}" -q numpy pytest "scikit-build-core>=0.10" "diffusers==0.42.1" "yunchang==0.6.4" matplotlib

if [ "${VMONARCH_SKIP_BUILD:-0}" = 1 ]; then
    log "VMONARCH_SKIP_BUILD=1: not building vmonarch"
    exit 0
fi

cuda=${VMONARCH_CUDA:-}
if [ -z "$cuda" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then cuda=AUTO; else cuda=OFF; fi
fi
log "building vmonarch (VMONARCH_CUDA=$cuda)"
cd "$ROOT"
"${PIP[@]}" --no-build-isolation --no-deps -v . -Ccmake.define.VMONARCH_CUDA="$cuda"
"$PY" -c 'import vmonarch; print("[setup_python] vmonarch", vmonarch.__version__, "cuda kernels:", vmonarch.cuda_built())'
if ! "$PY" python/vmonarch/_smoke.py; then   # the installed package, called in a child process
    log "the installed vmonarch failed its smoke test (report above): uninstalling it"
    "$PY" -m pip uninstall -y -q vmonarch || true
    exit 1
fi
log "done in $(($(date +%s) - start)) s"
