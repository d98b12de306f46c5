#!/usr/bin/env python3
"""The training step (forward + backward) of one Wan2.1-1.3B transformer block: diffusers'
WanTransformerBlock with the stock self-attention processor (torch SDPA: cuDNN, flash) against vmonarch's
processor (vmonarch.wan.VMonarchWanAttnProcessor, t = 2 with the frame-0 recompute) in its training modes.

    python3 bench/wan_block_train.py [--shape 480p,720p] [--reps 10] [--json FILE]
    python3 bench/wan_block_train.py --device cpu --quick        # tiny grid on the CPU (smoke run)

The block: dim 1536, 12 heads x 128, ffn 8960, cross-attention norm, RMS q/k norms across heads, random
weights, bfloat16 (scale_shift_table and the norms in float32, as the pretrained model keeps them). Inputs: the
hidden states of the patchified latent (shape 480p: 81x480x832 video -> T, H, W = 21, 30, 52 tokens; 720p:
81x720x1280 -> 21, 45, 80), 512 text tokens already projected to 1536 for the cross-attention, the
timestep projection [1, 6, 1536] (float32) and Wan's rotary tables (WanRotaryPosEmbed, float32). One step
is block(...) then backward of a fixed random output gradient (gradients of the input hidden states and of
every parameter; the parameter gradients are reset to None before each step).

Per mode: the step time (median of --reps, CUDA events after warm-up), the forward alone, peak memory of a
step above the steady state (parameters and inputs; the parameter gradients it allocates are included), the
activations autograd saves for the backward (torch.autograd.graph.saved_tensors_hooks, each storage once, the
parameters and inputs left out: "act. MiB"), and the self-attention's share: its core op alone (SDPA on
[1, 12, N, 128], or vmonarch.attention with the mode's options) forward + backward timed the same way, divided
by the step time. Stock rows restrict torch SDPA to their backend; the vmonarch rows' cross-attention prefers
the first --stock backend (cuDNN by default; the others as fallbacks), so the rows differ only in the
self-attention.

Modes: vmonarch lean (the paper's gradient, the forward rerun inside the backward), saved (save_state=True),
lean exact-grad (entropy_grad=True). A mode the installed package refuses (NotImplementedError) or that runs
out of memory is skipped with the reason. No assertions: numbers only.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import math
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exact_groups_common import cuda_kernels_missing, write_atomic, write_json  # noqa: E402
from train_bench_common import check_outputs, cuda_peak_bytes, median_ms, saved_storages, storage_key  # noqa: E402

CONFIG = dict(dim=1536, ffn_dim=8960, num_heads=12, qk_norm="rms_norm_across_heads", cross_attn_norm=True, eps=1e-6)
TINY_CONFIG = dict(CONFIG, dim=256, ffn_dim=512, num_heads=2)   # --tiny-block: for the CPU test of this script
HEAD_DIM = 128
TEXT_TOKENS = 512
SHAPES = {"480p": (21, 30, 52), "720p": (21, 45, 80)}
QUICK_GRID = (3, 4, 6)
QUICK_TEXT = 16
VMONARCH_MODES = [
    ("vmonarch lean", dict()),
    ("vmonarch saved", dict(save_state=True)),
    ("vmonarch lean exact-grad", dict(entropy_grad=True)),
]
_FP32_PARTS = ("scale_shift_table", "norm1", "norm2", "norm3")


def parse_grid(text: str):
    if text in SHAPES:
        return text, SHAPES[text]
    parts = text.split("x") if "x" in text else text.split(",")
    try:
        grid = tuple(int(p) for p in parts)
    except ValueError:
        grid = ()
    if len(grid) != 3 or min(grid) < 1:
        raise SystemExit(f"wan_block_train: --shape entry {text!r} is not 480p, 720p or TxHxW with T, H, W >= 1")
    return text, grid


# --- the block and its inputs ----------------------------------------------------------------------------
def build_block(config, device, dtype):
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    torch.manual_seed(0)
    with torch.device(device):
        block = WanTransformerBlock(**config)
    block = block.to(dtype)
    for name, module in block.named_children():
        if name in _FP32_PARTS:
            module.float()
    block.scale_shift_table.data = block.scale_shift_table.data.float()
    return block.train()


def block_inputs(config, grid, text_tokens, device, dtype):
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    T, H, W = grid
    N = T * H * W
    dim = config["dim"]
    g = torch.Generator(device=device).manual_seed(1)
    rope = WanRotaryPosEmbed(HEAD_DIM, (1, 2, 2), max_seq_len=1024).to(device)
    latent_shape = torch.empty((1, 1, T, 2 * H, 2 * W), device="meta")   # only its shape is read
    cos, sin = (x.float() for x in rope(latent_shape))
    return dict(
        hidden_states=torch.randn(1, N, dim, device=device, dtype=dtype, generator=g).requires_grad_(True),
        encoder_hidden_states=torch.randn(1, text_tokens, dim, device=device, dtype=dtype, generator=g),
        temb=torch.randn(1, 6, dim, device=device, dtype=torch.float32, generator=g) * 0.1,
        rotary_emb=(cos, sin),
    ), torch.randn(1, N, dim, device=device, dtype=dtype, generator=g)


def set_self_attention(block, grid, options):
    """options None: diffusers' stock processor; else vmonarch's processor with these schedule options."""
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    import vmonarch.wan

    if options is None:
        block.attn1.set_processor(WanAttnProcessor())
        return
    schedule = vmonarch.wan.VMonarchSchedule(iterations=2, recompute_first_frame=True, **options)
    schedule.grid = tuple(grid)   # what the transformer's forward hook sets from the latent's shape
    block.attn1.set_processor(vmonarch.wan.VMonarchWanAttnProcessor(schedule, layer=0))


# --- memory -----------------------------------------------------------------------------------------------
def saved_activation_bytes(fn, exclude):
    """Bytes of the distinct storages autograd saves while fn() runs (its graph is kept until return), less
    those of the tensors in `exclude` (the parameters and the inputs, which live anyway)."""
    skip = {storage_key(t) for t in exclude}
    out, seen = saved_storages(fn)
    del out
    return sum(v["bytes"] for key, v in seen.items() if key not in skip)


def attention_core(grid, heads, device, dtype, options):
    """The self-attention core alone: returns fn() doing its forward + backward on [1, N, 12, 128] inputs."""
    import torch.nn.functional as F

    import vmonarch

    N = math.prod(grid)
    g = torch.Generator(device=device).manual_seed(2)
    q, k, v, dout = (torch.randn(1, N, heads, HEAD_DIM, device=device, dtype=dtype, generator=g)
                     for _ in range(4))
    if options is None:   # as diffusers' native dispatch calls SDPA: [B, heads, N, d] views
        q, k, v, dout = (x.transpose(1, 2) for x in (q, k, v, dout))
        forward = F.scaled_dot_product_attention
    else:
        def forward(q, k, v):
            return vmonarch.attention(q, k, v, grid=tuple(grid), iterations=2, recompute_first_frame=True, **options)
    leaves = [x.requires_grad_(True) for x in (q, k, v)]

    def fn():
        torch.autograd.grad(forward(*leaves), leaves, dout)

    return fn


def sdpa_context(backend_name, strict=True):
    """torch SDPA restricted to one backend (strict: the stock rows, so their label is what ran), or preferring
    it with the others as fallbacks (the cross-attention of the vmonarch rows)."""
    if backend_name == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    first = backends[backend_name]
    if strict:
        return sdpa_kernel(first)
    return sdpa_kernel([first] + [b for b in backends.values() if b != first], set_priority=True)


def measure_mode(block, inputs, grad_out, grid, options, backend, args, device, dtype):
    set_self_attention(block, grid, options)

    def reset():
        block.zero_grad(set_to_none=True)
        inputs["hidden_states"].grad = None

    def step():
        out = block(**inputs)
        out.backward(grad_out)

    def forward_only():
        with torch.no_grad():
            block(**inputs)

    with sdpa_context(backend, strict=options is None):
        step()   # a refused mode raises here
        reset()
        row = dict(step_ms=median_ms(step, device, args.warmup, args.reps, before=reset),
                   fwd_ms=median_ms(forward_only, device, args.warmup, args.reps))
        row["peak_mib"] = (lambda b: None if b is None else b / 2**20)(cuda_peak_bytes(step, device, before=reset))
        reset()
        lives_anyway = [*block.parameters(), *block.buffers(), inputs["hidden_states"], inputs["encoder_hidden_states"],
                        inputs["temb"], *inputs["rotary_emb"]]
        row["saved_activations_bytes"] = saved_activation_bytes(lambda: block(**inputs), lives_anyway)
        core = attention_core(grid, block.attn1.heads, device, dtype, options)
        row["self_attention_ms"] = median_ms(core, device, args.warmup, args.reps)
        del core
    row["self_attention_share"] = row["self_attention_ms"] / row["step_ms"]
    reset()
    return row


def run_shape(label, grid, args, device, dtype):
    text = QUICK_TEXT if args.quick else TEXT_TOKENS
    config = TINY_CONFIG if args.tiny_block else CONFIG
    block = build_block(config, device, dtype)
    inputs, grad_out = block_inputs(config, grid, text, device, dtype)
    modes = [(f"stock (SDPA {b})", None, b) for b in args.stock] + \
            [(name, opts, args.stock[0]) for name, opts in VMONARCH_MODES]
    rows = []
    for name, options, backend in modes:
        row = dict(shape=label, grid=list(grid), tokens=math.prod(grid), text_tokens=text, mode=name,
                   sdpa_backend=backend)
        try:
            row.update(measure_mode(block, inputs, grad_out, grid, options, backend, args, device, dtype))
        except NotImplementedError as e:
            row["skipped"] = f"refused by the installed vmonarch: {str(e).splitlines()[0]}"
        except torch.OutOfMemoryError:
            row["skipped"] = "out of memory"
        except RuntimeError as e:   # an SDPA backend that cannot run here
            row["skipped"] = f"RuntimeError: {str(e).splitlines()[0]}"
        rows.append(row)
        print(format_row(row), flush=True)
        block.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    base = next((r for r in rows if "step_ms" in r), None)
    for r in rows:
        if base is not None and "step_ms" in r:
            r["baseline"] = base["mode"]
            r["step_speedup"] = base["step_ms"] / r["step_ms"]
            r["self_attention_speedup"] = base["self_attention_ms"] / r["self_attention_ms"]
    del block, inputs, grad_out
    return rows


HEADER = (f"{'shape':>10} {'mode':>26} {'step ms':>9} {'fwd ms':>8} {'attn ms':>8} {'attn %':>7} {'peak MiB':>9} "
          f"{'act. MiB':>9}")


def format_row(r):
    if "skipped" in r:
        return f"{r['shape']:>10} {r['mode']:>26}  skipped: {r['skipped']}"
    peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:9.0f}"
    return (f"{r['shape']:>10} {r['mode']:>26} {r['step_ms']:9.2f} {r['fwd_ms']:8.2f} {r['self_attention_ms']:8.2f} "
            f"{100 * r['self_attention_share']:6.1f}% {peak:>9} {r['saved_activations_bytes'] / 2**20:9.1f}")


def markdown(rows):
    """The README's table (Training: Wan block step) for these rows."""
    lines = ["| grid | mode | step | forward | self-attention (share) | peak memory | saved activations | "
             "step speedup vs the first stock row |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        grid = f"{r['shape']} {'x'.join(str(g) for g in r['grid'])}"
        if "skipped" in r:
            lines.append(f"| {grid} | {r['mode']} | skipped: {r['skipped']} | | | | | |")
            continue
        peak = "—" if r["peak_mib"] is None else f"{r['peak_mib']:.0f} MiB"
        lines.append(f"| {grid} | {r['mode']} | {r['step_ms']:.2f} ms | {r['fwd_ms']:.2f} ms | "
                     f"{r['self_attention_ms']:.2f} ms ({100 * r['self_attention_share']:.0f} %) | {peak} | "
                     f"{r['saved_activations_bytes'] / 2**20:.0f} MiB | {r.get('step_speedup', float('nan')):.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--shape", default="480p,720p", help="comma-separated: 480p, 720p or TxHxW token grids")
    ap.add_argument("--quick", action="store_true", help=f"grid {QUICK_GRID} with {QUICK_TEXT} text tokens, 2 reps")
    ap.add_argument("--stock", default=None,
                    help="SDPA backends of the stock rows, comma-separated (cudnn, flash, efficient, math, default); "
                         "default cudnn,flash on CUDA, default on the CPU")
    ap.add_argument("--tiny-block", action="store_true", help=f"a small block ({TINY_CONFIG['dim']} wide) for tests")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json", help="write the rows here (written whole or not at all)")
    ap.add_argument("--md", help="write the README's markdown table here (written whole or not at all)")
    args = ap.parse_args()
    check_outputs(ap, json=args.json, md=args.md)
    device = torch.device(args.device)
    if cuda_kernels_missing("wan_block_train", device):
        return 2
    dtype = getattr(torch, args.dtype)
    if device.type == "cuda" and dtype == torch.float32:
        print("wan_block_train: the CUDA kernels take bfloat16 or float16, not float32", file=sys.stderr)
        return 2
    args.stock = (args.stock or ("cudnn,flash" if device.type == "cuda" else "default")).split(",")
    if args.quick:
        args.reps, args.warmup = min(args.reps, 2), min(args.warmup, 1)
        shapes = [("quick", QUICK_GRID)]
    else:
        shapes = [parse_grid(s.strip()) for s in args.shape.split(",") if s.strip()]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; {args.dtype}; t = 2 with recompute; "
          f"median of {args.reps} after {args.warmup} warm-up")
    print(HEADER)
    rows = []
    for label, grid in shapes:
        rows += run_shape(label, grid, args, device, dtype)
    print("speedups over the first stock row (step / self-attention forward + backward):")
    for r in rows:
        if "step_speedup" in r:
            print(f"{r['shape']:>10} {r['mode']:>26} {r['step_speedup']:6.2f}x {r['self_attention_speedup']:6.2f}x")
    if args.json:
        write_json(args.json, {"device": name, "torch": torch.__version__, "dtype": args.dtype,
                               "config": TINY_CONFIG if args.tiny_block else CONFIG, "rows": rows})
    if args.md:
        write_atomic(args.md, markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
