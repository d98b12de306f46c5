"""Shared by the training benches bench/backward_bench.py, bench/wan_block_train.py and bench/backward_memory.py:
timing, peak memory, what autograd saves, torch SDPA on one backend, and the output-path checks they run before
any work (as exact_groups_common.check_output_path does for the exact-group benches).

Timing: `warmup` calls, then `reps` calls each timed on its own (CUDA events on a GPU, perf_counter on the CPU),
median in milliseconds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, Optional, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exact_groups_common import check_output_path  # noqa: E402


def median_ms(fn: Callable[[], object], device: torch.device, warmup: int, reps: int,
              before: Optional[Callable[[], object]] = None) -> float:
    """Median milliseconds of fn() over `reps` timed calls after `warmup` untimed ones; before() (untimed)
    precedes every call."""
    cuda = device.type == "cuda"
    times = []
    for i in range(warmup + reps):
        if before is not None:
            before()
        if cuda:
            torch.cuda.synchronize()
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize()
            ms = start.elapsed_time(stop)
        else:
            t0 = time.perf_counter()
            fn()
            ms = (time.perf_counter() - t0) * 1e3
        if i >= warmup:
            times.append(ms)
    return statistics.median(times)


def cuda_peak_bytes(fn: Callable[[], object], device: torch.device,
                    before: Optional[Callable[[], object]] = None) -> Optional[int]:
    """Peak torch.cuda memory during one fn() call above what was allocated before it (after before() and
    emptying the cache); None on the CPU, where torch's allocator does not see host memory."""
    if device.type != "cuda":
        return None
    if before is not None:
        before()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def storage_key(t: torch.Tensor) -> Tuple[str, int]:
    """One key per storage (views of one tensor share it)."""
    s = t.untyped_storage()
    return s.device.type, s.data_ptr()


def saved_storages(fn: Callable[[], object]) -> Tuple[object, Dict[Tuple[str, int], dict]]:
    """(fn()'s result, {storage_key: dict(bytes, shape, dtype)} of the distinct storages autograd saves for the
    backward while fn() runs (torch.autograd.graph.saved_tensors_hooks; shape and dtype of the first tensor
    saved from each))."""
    seen = {}

    def pack(t):
        seen.setdefault(storage_key(t), dict(bytes=t.untyped_storage().nbytes(), shape=tuple(t.shape),
                                             dtype=str(t.dtype).replace("torch.", "")))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return result, seen


def sdpa_forward(backend):
    """torch SDPA restricted to one backend (torch.nn.attention.SDPBackend), as forward(q, k, v) on
    [B, heads, N, d] tensors."""
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    def forward(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)

    return forward


def check_outputs(ap: argparse.ArgumentParser, **paths: Optional[str]) -> None:
    """Before any work: every output path given (option name with '-' for '_' -> path) is a file path in an
    existing folder, and no two options name the same file (one would overwrite the other); else ap.error
    (exit status 2)."""
    given = {f"--{name.replace('_', '-')}": path for name, path in paths.items() if path}
    try:
        for option, path in given.items():
            check_output_path(option, path)
    except ValueError as e:
        ap.error(str(e))
    seen = {}
    for option, path in given.items():
        real = os.path.realpath(path)
        if real in seen:
            ap.error(f"{option} is {path!r}, the file {seen[real]} also names; expected a file of its own")
        seen[real] = option
