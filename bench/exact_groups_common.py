"""Shared by bench/exact_groups_bench.py and bench/exact_groups_quality.py: timing, SDPA backend choice,
argument checks and atomic output files.

Timing: warm-up calls, then `reps` calls each timed on its own (CUDA events on a GPU, perf_counter on the
CPU), median in milliseconds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, List, Optional, Sequence, Tuple

import torch


def positive_int(name: str, lo: int = 1):
    """argparse type: an int >= lo; argparse prints the message, which names the option and its value."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} is {text!r}, expected an int >= {lo}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"{name} is {value}, expected an int >= {lo}")
        return value
    return parse


def times_ms(fn: Callable[[], object], device: torch.device, warmup: int, reps: int) -> List[float]:
    """Milliseconds of each of `reps` calls of fn() after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times: List[float] = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(reps):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def steady_ms(fn: Callable[[], object], device: torch.device, calls: int, reps: int) -> float:
    """Milliseconds per call of `calls` back-to-back fn() calls between two events (the host queues the next
    call while the GPU runs the previous one, as inside a model's forward), median over `reps` repeats."""
    times: List[float] = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) / calls)
        else:
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times.append((time.perf_counter() - t0) * 1e3 / calls)
    return statistics.median(times)


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int, reps: int) -> float:
    """Median milliseconds of fn() over `reps` calls after `warmup` calls."""
    return statistics.median(times_ms(fn, device, warmup, reps))


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> Tuple[Optional[int], Optional[int]]:
    """(peak allocated bytes during one fn() call, peak minus what was allocated before); None on the CPU."""
    if device.type != "cuda":
        fn()
        return None, None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del out
    return int(peak), int(peak - before)


def sdpa_backends(device: torch.device, prefer: Sequence[str] = ("cudnn", "efficient", "flash", "math")):
    """[(name, SDPBackend)] in the order to try: cuDNN first on a GPU; on the CPU only math and flash exist."""
    from torch.nn.attention import SDPBackend

    table = {"cudnn": SDPBackend.CUDNN_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}
    names = list(prefer) if device.type == "cuda" else ["flash", "math"]
    return [(n, table[n]) for n in names]


def sdpa_call(q, k, v, attn_mask, device: torch.device, prefer=("cudnn", "efficient", "flash", "math")):
    """(backend name, fn, notes): the first SDPA backend (forced, one at a time) that accepts these inputs.

    notes lists the backends that refused, with their messages' first line."""
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    notes = []
    for name, backend in sdpa_backends(device, prefer):
        def fn(backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        try:
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        except RuntimeError as e:
            notes.append(f"{name}: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}")
            continue
        return name, fn, notes
    return None, None, notes


def resolve_device(ap: argparse.ArgumentParser, device: Optional[str], tiny: bool) -> str:
    """--device: cuda by default, cpu with --tiny; anything else, or cuda without a GPU, is ap.error (status 2)."""
    device = device or ("cpu" if tiny else "cuda")
    if device not in ("cpu", "cuda"):
        ap.error(f"--device is {device!r}, expected 'cuda' or 'cpu'")
    if device == "cuda" and not torch.cuda.is_available():
        ap.error("--device is 'cuda' but torch sees no CUDA device (use --tiny or --device cpu)")
    return device


def cuda_kernels_missing(script: str, device: torch.device) -> bool:
    """True (after saying so on stderr) when `device` is CUDA but there is no GPU or vmonarch has no CUDA kernels."""
    import vmonarch

    if device.type == "cuda" and not (torch.cuda.is_available() and vmonarch.cuda_built()):
        print(f"{script}: --device cuda needs a CUDA device and a vmonarch build with CUDA kernels "
              "(use --device cpu)", file=sys.stderr)
        return True
    return False


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def check_output_path(option: str, path: str) -> str:
    """An output file path: its folder must exist and it must not be a folder itself."""
    if os.path.isdir(path):
        raise ValueError(f"{option} is {path!r}, a directory; expected a file path")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{option} is {path!r}, whose folder {folder!r} does not exist")
    return path


def write_atomic(path: str, text: str) -> None:
    """Writes text to path through a temporary file in the same folder (never a half-written file)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".part-", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=1) + "\n")


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        env["card"] = torch.cuda.get_device_name(device)
        env["cudnn"] = torch.backends.cudnn.version()
    try:
        import vmonarch

        env["vmonarch"] = vmonarch.__version__
        env["vmonarch_cuda_built"] = vmonarch.cuda_built()
    except Exception as e:  # the scripts report a missing extension themselves
        env["vmonarch"] = f"unavailable: {e}"
    env["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return env


def find_cli(explicit: Optional[str] = None) -> str:
    """The `vmonarch` CLI binary: explicit, $VMONARCH_CLI, $VMONARCH_BIN/vmonarch, the newest build*/vmonarch
    of the checkout, .devcarry/*/vmonarch, then `vmonarch` on the PATH. Raises FileNotFoundError naming
    every place looked at."""
    import glob
    import shutil

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidates = [explicit] if explicit else []
    if not explicit:
        candidates += [os.environ.get("VMONARCH_CLI")]
        if os.environ.get("VMONARCH_BIN"):
            candidates.append(os.path.join(os.environ["VMONARCH_BIN"], "vmonarch"))
        candidates += sorted(glob.glob(os.path.join(repo, "build*", "vmonarch")), key=os.path.getmtime, reverse=True)
        candidates += sorted(glob.glob(os.path.join(repo, ".devcarry", "*", "vmonarch")))
        candidates.append(shutil.which("vmonarch"))
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    looked = ", ".join(c for c in candidates if c) or "(nothing found)"
    raise FileNotFoundError("no executable vmonarch CLI binary (it generates the video-like inputs: `vmonarch "
                            f"make-inputs`); looked at: {looked}; pass --cli or set VMONARCH_CLI")


def video_inputs(cli: str, grid, heads: int, head_dim: int, seed: int, folder: str):
    """(q, k, v, kinds): `vmonarch make-inputs` data, float32 [1, heads, T*H*W, head_dim] each, and the head
    kinds the CLI prints (positional, semantic, sink, mixed, cycling over the heads)."""
    import subprocess

    import numpy as np

    paths = [os.path.join(folder, f"{n}.npy") for n in "qkv"]
    for p in paths:
        if os.path.exists(p):
            raise FileExistsError(f"{p} exists; the inputs are written to a fresh folder")
    cmd = [cli, "make-inputs", "--q", paths[0], "--k", paths[1], "--v", paths[2], "--grid",
           ",".join(map(str, grid)), "--heads", str(heads), "--head-dim", str(head_dim), "--seed", str(seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    line = next((x for x in proc.stdout.splitlines() if x.startswith("head kinds:")), None)
    if line is None:
        raise RuntimeError(f"{' '.join(cmd)} printed no 'head kinds:' line:\n{proc.stdout}")
    kinds = [item.split("=", 1)[1] for item in line.split()[2:]]
    q, k, v = (torch.from_numpy(np.load(p)) for p in paths)
    for p in paths:
        os.unlink(p)
    return q, k, v, kinds
