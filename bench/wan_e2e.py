#!/usr/bin/env python3
"""End-to-end timing of one Wan transformer forward (diffusers' WanTransformer3DModel, random weights,
bfloat16) with the stock attention processor and with VMonarch self-attention (vmonarch.wan.enable).

    python3 bench/wan_e2e.py                     # 1.3B at 81x480x832 and 14B at 81x720x1280
    python3 bench/wan_e2e.py --models 1.3B --json out.json
    python3 bench/wan_e2e.py --quick             # small latents, for a smoke run

One forward is one denoising step of one guidance branch. The models are built on the GPU with random
weights (no download). Layers: the 1.3B runs all 30 blocks. The 14B runs two reduced depths (default 2
and 4 blocks) and extrapolates linearly to its 40 blocks, time(40) = fixed + 40 * per_block, because its
dense-attention forward alone takes several seconds per block pair on one GPU; the table says which rows
are extrapolated. Stock attention is diffusers' default dispatch (torch SDPA, which picks its own
kernel); the script prints the SDPA backends that are enabled.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch

MODELS = {
    # name: config, latent (C, F, H, W) for the paper-style video, text length
    "1.3B": dict(config=dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30,
                             in_channels=16, out_channels=16, text_dim=4096, freq_dim=256),
                 video="81x480x832", latent=(16, 21, 60, 104)),
    "14B": dict(config=dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40,
                            in_channels=16, out_channels=16, text_dim=4096, freq_dim=256),
                video="81x720x1280", latent=(16, 21, 90, 160)),
}
QUICK_LATENT = {"1.3B": (16, 5, 30, 52), "14B": (16, 5, 30, 52)}


def build(config: dict, layers: int, device: str):
    from diffusers import WanTransformer3DModel

    cfg = dict(config, num_layers=layers, patch_size=(1, 2, 2), cross_attn_norm=True,
               qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
    with torch.device(device):
        model = WanTransformer3DModel(**cfg)
    # bf16 like from_pretrained(torch_dtype=torch.bfloat16): the modules diffusers keeps in float32 (rope,
    # time embedder, modulation tables, norms) stay float32, with the rotary tables unrounded.
    rope = (model.rope.freqs_cos.clone(), model.rope.freqs_sin.clone())
    model = model.to(torch.bfloat16)
    model.rope.freqs_cos, model.rope.freqs_sin = rope
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    for name, module in model.named_modules():
        if name.split(".")[-1] in keep:
            module.float()
    for name, param in model.named_parameters():
        if name.split(".")[-1] in keep:
            param.data = param.data.float()
    return model.eval()


def timed_forward(model, inputs, warmup: int, reps: int) -> float:
    times = []
    with torch.inference_mode():
        for i in range(warmup + reps):
            torch.cuda.synchronize()
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(**inputs, return_dict=False)
            stop.record()
            torch.cuda.synchronize()
            if i >= warmup:
                times.append(start.elapsed_time(stop) / 1e3)
    return statistics.median(times)


def measure(name: str, spec: dict, layers: int, latent, args) -> dict:
    import vmonarch.wan

    model = build(spec["config"], layers, "cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(1, *latent, device="cuda", dtype=torch.bfloat16, generator=g),
        timestep=torch.tensor([999], device="cuda"),
        encoder_hidden_states=torch.randn(1, 512, spec["config"]["text_dim"], device="cuda", dtype=torch.bfloat16,
                                          generator=g),
    )
    stock = timed_forward(model, inputs, args.warmup, args.reps)
    vmonarch.wan.enable(model, iterations=args.iterations, recompute_first_frame=not args.no_recompute)
    ours = timed_forward(model, inputs, args.warmup, args.reps)
    vmonarch.wan.disable(model)
    del model
    torch.cuda.empty_cache()
    return {"stock_s": stock, "vmonarch_s": ours}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="1.3B,14B")
    ap.add_argument("--layers-14b", default="2,4", help="two reduced depths of the 14B model to extrapolate from")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--no-recompute", action="store_true")
    ap.add_argument("--quick", action="store_true", help="small latents (smoke run)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("wan_e2e: needs a CUDA device", file=sys.stderr)
        return 2
    import vmonarch

    if not vmonarch.cuda_built():
        print("wan_e2e: this vmonarch build has no CUDA kernels", file=sys.stderr)
        return 2

    device = torch.cuda.get_device_name()
    backends = {k: getattr(torch.backends.cuda, f"{k}_sdp_enabled")() for k in ("flash", "mem_efficient", "cudnn", "math")}
    print(f"device: {device}; torch {torch.__version__}; SDPA backends enabled: "
          + ", ".join(k for k, on in backends.items() if on))
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        spec = MODELS[name]
        latent = QUICK_LATENT[name] if args.quick else spec["latent"]
        C, F, H, W = latent
        grid = (F, H // 2, W // 2)
        full_layers = spec["config"]["num_layers"]
        t0 = time.time()
        if name == "14B":
            l1, l2 = (int(x) for x in args.layers_14b.split(","))
            a = measure(name, spec, l1, latent, args)
            b = measure(name, spec, l2, latent, args)
            res = {}
            for key in ("stock_s", "vmonarch_s"):
                per_block = (b[key] - a[key]) / (l2 - l1)
                fixed = a[key] - l1 * per_block
                res[key] = fixed + full_layers * per_block
                res[key.replace("_s", "_per_block_s")] = per_block
            res["measured"] = {f"{l1}_blocks": a, f"{l2}_blocks": b}
            how = f"extrapolated from {l1} and {l2} blocks"
        else:
            res = measure(name, spec, full_layers, latent, args)
            how = f"measured, all {full_layers} blocks"
        heads, d = spec["config"]["num_attention_heads"], spec["config"]["attention_head_dim"]
        f = vmonarch.flops(grid, d, heads, iterations=args.iterations, recompute_first_frame=not args.no_recompute)
        row = dict(model=name, video=spec["video"] if not args.quick else "quick", grid=grid,
                   tokens=math.prod(grid), layers=full_layers, how=how, speedup=res["stock_s"] / res["vmonarch_s"],
                   attn_flop_ratio=f.dense / f.vmonarch, wall_s=time.time() - t0, **res)
        rows.append(row)
        print(f"{name}: grid {grid} ({row['tokens']} tokens), {how}: stock {res['stock_s']:.3f} s, "
              f"VMonarch {res['vmonarch_s']:.3f} s, speedup {row['speedup']:.2f}x", flush=True)

    print()
    print(f"| model | video | latent grid | tokens | stock forward (s) | VMonarch forward (s) | speedup | how |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| Wan2.1-{r['model']} | {r['video']} | {'x'.join(map(str, r['grid']))} | {r['tokens']} | "
              f"{r['stock_s']:.3f} | {r['vmonarch_s']:.3f} | {r['speedup']:.2f}x | {r['how']} |")
    print(f"\n{device}, bf16, batch 1, one forward (one denoising step, one guidance branch), t={args.iterations}, "
          f"frame-0 recompute {'off' if args.no_recompute else 'on'}, median of {args.reps} after {args.warmup} warm-up")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(device=device, torch=torch.__version__, sdpa_backends=backends, rows=rows), fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
