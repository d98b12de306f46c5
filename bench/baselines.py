"""Times PyTorch SDPA baselines (cuDNN, FlashAttention-2, memory-efficient) at the benchmark shapes.

Run on the GPU machine:  python3 bench/baselines.py --json baselines.json [--quick]
bf16, d = 128, batch 1, BHSD, non-causal, forward only; triton.testing.do_bench median (ms).
"""
import argparse
import datetime
import json

import torch
import triton.testing
from torch.nn.attention import SDPBackend, sdpa_kernel
import torch.nn.functional as F

SHAPES = [(16, 28, 52, 12), (21, 30, 52, 12), (36, 28, 52, 12), (21, 45, 80, 40), (24, 44, 80, 40)]
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "fa2": SDPBackend.FLASH_ATTENTION,
            "mem_efficient": SDPBackend.EFFICIENT_ATTENTION}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default="baselines.json")
    ap.add_argument("--quick", action="store_true", help="short timing windows")
    ap.add_argument("--all", action="store_true", help="also the memory-efficient backend")
    ap.add_argument("--shape", type=int, default=-1)
    args = ap.parse_args()
    card = torch.cuda.get_device_name(0)
    print(f"baselines on {card}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}", flush=True)
    rows = []
    for si, (T, H, W, heads) in enumerate(SHAPES):
        if args.shape >= 0 and si != args.shape:
            continue
        N, d = T * H * W, 128
        g = torch.Generator(device="cuda").manual_seed(si)
        q, k, v = (torch.randn(1, heads, N, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
        flops = 4.0 * N * N * d * heads
        for name, backend in BACKENDS.items():
            if not args.all and name == "mem_efficient":
                continue
            try:
                with sdpa_kernel(backend):
                    fn = lambda: F.scaled_dot_product_attention(q, k, v)
                    fn()
                    torch.cuda.synchronize()
                    big = N * heads > 2_000_000
                    ms = triton.testing.do_bench(fn, warmup=300 if big else 100, rep=800 if big and not args.quick else 300,
                                                 return_mode="median")
            except RuntimeError as e:  # backend unavailable for this shape
                print(f"{name} at {T}x{H}x{W}x{heads}h: {e}", flush=True)
                continue
            rows.append({"shape": f"{T}x{H}x{W}x{heads}h", "what": name, "ms": ms, "tflops": flops / (ms * 1e-3) / 1e12})
            print(f"{T}x{H}x{W}x{heads}h {name:14s} {ms:10.3f} ms {flops / (ms * 1e-3) / 1e12:8.1f} TFLOP/s", flush=True)
        del q, k, v
        torch.cuda.empty_cache()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with open(args.json, "w") as f:
        json.dump({"card": card, "date": date, "torch": torch.__version__, "rows": rows}, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
