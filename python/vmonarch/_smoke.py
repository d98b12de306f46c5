"""Smoke test of the compiled extension: one vmonarch.attention and one vmonarch.dense_attention call
(checked against torch's softmax attention) and one error message, on CPU tensors and on CUDA when a
device and the CUDA kernels are there. The calls run in a child process, so a module that crashes
(e.g. one that carries its own static copy of libstdc++ next to torch's) is reported, with the call, the
signal and the compiler that built it, instead of killing the caller.

    python -m vmonarch._smoke [--device auto|cpu|cuda]      # the installed package
    python python/vmonarch/_smoke.py [--device ...]         # the same, without loading it in this process
    python python/vmonarch/_smoke.py --library build/_C.so --compiler "g++ ..." --device cpu
                                                            # a freshly linked module (the build's check)

Exit status 0 when every call gave the right result, 1 otherwise (after the report).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from typing import Optional, Sequence, Tuple

_HERE = os.path.dirname(os.path.abspath(__file__))

# The child: argv[1:] are the devices ("auto": CPU, plus CUDA when usable). Inputs are random (not zero);
# dense attention is compared with torch's own softmax(q kᵀ/√d) v, VMonarch at T = 1 with dense attention
# (spec: one frame makes the structured attention exact), and the error message must keep its numbers
# (a module with a second C++ runtime formats integers as nothing, or crashes doing it).
CHILD = r"""
import re, sys
import torch, vmonarch

devices = sys.argv[1:]
if devices == ["auto"]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        if vmonarch.cuda_built():
            devices.append("cuda")
        else:
            print("note: a CUDA device is visible but this build has no CUDA kernels; CPU only", flush=True)
for device in devices:
    dtype, tol = (torch.float32, 1e-4) if device == "cpu" else (torch.bfloat16, 3e-2)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 12, 2, 64, generator=g).to(device, dtype) for _ in range(3))
    qb, kb, vb = (x.double().cpu().transpose(1, 2) for x in (q, k, v))
    want = (torch.softmax(qb @ kb.transpose(-1, -2) / 8.0, -1) @ vb).transpose(1, 2)

    print(f"calling vmonarch.dense_attention on {device}", flush=True)
    dense = vmonarch.dense_attention(q, k, v)
    err = float((dense.double().cpu() - want).norm() / want.norm())
    if not err <= tol:
        sys.exit(f"vmonarch.dense_attention on {device}: relative L2 error {err:.3g} against torch, expected <= {tol}")

    print(f"calling vmonarch.attention on {device}", flush=True)
    out = vmonarch.attention(q, k, v, grid=(2, 2, 3))
    if out.shape != q.shape or not bool(torch.isfinite(out).all()):
        sys.exit(f"vmonarch.attention on {device}: output of shape {tuple(out.shape)} with non-finite values")
    one_frame = vmonarch.attention(q, k, v, grid=(1, 3, 4))
    err = float((one_frame.double().cpu() - want).norm() / want.norm())
    if not err <= tol:
        sys.exit(f"vmonarch.attention on {device} at T = 1: relative L2 error {err:.3g} against dense, expected <= {tol}")

    print(f"calling vmonarch.attention with a wrong grid on {device}", flush=True)
    try:
        vmonarch.attention(q, k, v, grid=(2, 2, 2))
        sys.exit(f"vmonarch.attention on {device}: a grid of 8 tokens for 12 was accepted")
    except ValueError as e:
        if not re.search(r"\b12\b", str(e)):
            sys.exit(f"vmonarch.attention on {device}: the error message lost its numbers: {e}")
    if device == "cuda":
        torch.cuda.synchronize()
    print(f"ok: vmonarch.attention and vmonarch.dense_attention on {device}", flush=True)
"""

_ADVICE = ("A module linked with another C++ runtime than torch's fails like this. Rebuild with the system "
           "g++: CXX=g++ pip install --no-build-isolation --no-deps --force-reinstall . (after deleting the "
           "build directory, build-py/).")


def _installed_compiler() -> str:
    """The compiler recorded in the installed package's _build_info.json (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("vmonarch")
    where = list(spec.submodule_search_locations or []) if spec else []
    try:
        with open(os.path.join(where[0] if where else _HERE, "_build_info.json")) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return "an unknown compiler (no _build_info.json)"
    return f"{info.get('cxx_compiler', '?')} ({info.get('cxx_compiler_version', '?')})"


def _how(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def run_child(code: str = CHILD, devices: Sequence[str] = ("auto",), library: Optional[str] = None,
              compiler: Optional[str] = None, timeout: float = 600) -> Tuple[bool, str]:
    """Runs `code` in a fresh interpreter; returns (passed, report). library: a built _C.so to load
    instead of the installed one (with this checkout's Python sources)."""
    env = dict(os.environ)
    if library is not None:
        env["VMONARCH_TORCH_LIBRARY"] = os.path.abspath(library)
        env["PYTHONPATH"] = os.path.dirname(_HERE) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    compiler = compiler or _installed_compiler()
    try:
        proc = subprocess.run([sys.executable, "-c", code, *devices], capture_output=True, text=True, env=env,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"vmonarch smoke test FAILED: no answer within {timeout:.0f} s (built with {compiler})"
    if proc.returncode == 0:
        return True, proc.stdout + f"vmonarch smoke test passed (built with {compiler})\n"
    calls = [line[len("calling "):] for line in proc.stdout.splitlines() if line.startswith("calling ")]
    where = calls[-1] if calls else "loading the extension"
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
    report = (f"vmonarch smoke test FAILED: {where} ended with {_how(proc.returncode)}.\n"
              f"The extension was built with {compiler}.\n{_ADVICE}\n--- child output ---\n{tail}\n")
    return False, report


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Call the compiled vmonarch extension once per device.")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--library", help="a built _C.so to test instead of the installed one")
    parser.add_argument("--compiler", help="the compiler that built it, for the report")
    args = parser.parse_args(argv)
    ok, report = run_child(devices=[args.device], library=args.library, compiler=args.compiler)
    print(report, end="", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
