"""torch SDPA's cuDNN and flash backward on the frame-0 recompute's shape (spec §7.2: the HW queries of frame 0
over all N keys) and on the dense problem, for comparison with the library's own flash backward
(`flash_bwd_bench`'s "dense frame-0 recompute" row counts the same 10·Nq·N·d FLOPs per head).

    python3 bench/cudnn_recompute_probe.py        (one CUDA device; bf16, d = 128, batch 1)

Shapes 16x28x52 with 12 heads and 24x44x80 with 40 heads. Times are medians of CUDA-event timings of
torch.autograd.grad through scaled_dot_product_attention with one backend allowed, after 3 warm-ups. Numbers
only, printed one dict per line.
"""
import os
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_bench_common import median_ms  # noqa: E402

CUDA = torch.device("cuda")


def main():
    for (T, H, W), heads in [((16, 28, 52), 12), ((24, 44, 80), 40)]:
        hw, n = H * W, T * H * W
        for case, nq in (("recompute", hw), ("dense", n)):
            reps = 3 if case == "dense" and n > 30000 else 10
            gen = torch.Generator(device="cuda").manual_seed(0)
            q = torch.randn(1, heads, nq, 128, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
            k = torch.randn(1, heads, n, 128, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
            v = torch.randn(1, heads, n, 128, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
            dout = torch.randn(1, heads, nq, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
            for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION):
                with sdpa_kernel(backend):
                    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
                    ms = median_ms(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True), CUDA, 3, reps)
                flops = 10.0 * nq * n * 128 * heads
                print(dict(shape=f"{T}x{H}x{W}x{heads}h", case=case, backend=str(backend), ms=ms, tflops=flops / ms / 1e9),
                      flush=True)
                del out
            del q, k, v, dout
            torch.cuda.empty_cache()
    print(torch.cuda.get_device_name(), torch.__version__)


if __name__ == "__main__":
    main()
