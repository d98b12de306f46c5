"""Multi-process runs on the CPU for the vmonarch.distributed tests: gloo over 127.0.0.1, one process per
rank (torch.multiprocessing spawn), each running a named job of this module and saving what it found."""
from __future__ import annotations

import os
import socket
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, job: str, outdir: str) -> None:
    torch.set_num_threads(1)
    if torch.accelerator.device_count() == 0:
        # diffusers' enable_parallelism places rank r on device r % device_count(); a CPU-only machine has 0
        torch.accelerator.device_count = lambda: 1
    # "cpu:gloo" rather than "gloo": diffusers' ulysses_anything gathers sizes on the CPU only when the
    # backend string names the CPU
    dist.init_process_group("cpu:gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        import distributed_jobs

        result = getattr(distributed_jobs, job)(rank, world)
    finally:
        dist.destroy_process_group()
    torch.save(result, os.path.join(outdir, f"rank{rank}.pt"))


def run_job(job: str, world: int):
    """Runs distributed_jobs.<job>(rank, world) on `world` processes; returns each rank's result."""
    with tempfile.TemporaryDirectory() as outdir:
        mp.spawn(_entry, args=(world, free_port(), job, outdir), nprocs=world, join=True)
        return [torch.load(os.path.join(outdir, f"rank{r}.pt"), weights_only=False) for r in range(world)]
