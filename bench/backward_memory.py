#!/usr/bin/env python3
"""Memory of one attention layer's backward (spec §7): what the forward keeps for the backward and the
backward's workspace, for VMonarch (lean and saved mode) against torch SDPA (cuDNN and flash).

    python3 bench/backward_memory.py [--device cuda|cpu] [--quick] [--json FILE]

Per layer and variant:
  saved      bytes of the tensors autograd keeps for the backward (torch.autograd.graph.saved_tensors_hooks,
             each storage counted once), q, k, v and the output included; "extra" is what is saved beyond
             q, k, v and O.
  FA set     what FlashAttention keeps: q, k, v, O and the LSE (float32, one per row): 4·N·d elements plus
             N floats per (batch, head). The lean mode's claim: saved <= FA set + c·N floats.
  workspace  CUDA only: peak torch.cuda memory during the backward minus the steady state after the forward
             (what the forward left allocated); "beyond grads" subtracts dq, dk, dv, which the backward
             returns. The CPU backward's scratch is host memory outside torch's allocator (not measured).
  formula    the library's sizes: saved_state_bytes (the state attention_train allocates, header
             included) and, for CUDA tensors, the backward workspace of src/cuda/bwd/backward_plan.hpp.

Shapes (batch 1, d 128, bf16, t = 2 with the frame-0 recompute): 16x28x52 with 12 heads and 24x44x80 with
40 heads; --quick on CPU: tiny awkward grids. A variant the installed package refuses (NotImplementedError,
e.g. save_state on CUDA before the CUDA training op is wired) or that torch cannot run is skipped with the
reason. No assertions: numbers only (tests/python/test_backward_memory_cpu.py checks the lean-mode claim).
"""
from __future__ import annotations

import argparse
import os
import math
import sys
from types import SimpleNamespace

import torch

import vmonarch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exact_groups_common import cuda_kernels_missing, write_atomic, write_json  # noqa: E402
from train_bench_common import check_outputs, saved_storages, sdpa_forward, storage_key  # noqa: E402

FULL_SHAPES = [((16, 28, 52), 12, 128), ((24, 44, 80), 40, 128)]
CPU_QUICK_SHAPES = [((3, 5, 7), 2, 64), ((4, 6, 9), 3, 128)]
ITERATIONS = 2
LSE_BYTES = 4          # float32 log-sum-exp per row (FlashAttention and VMonarch alike)
ALIGN = 256            # region alignment of the CUDA saved state and workspace


def _align(x: int) -> int:
    return (x + ALIGN - 1) // ALIGN * ALIGN


# --- the library's sizes ---------------------------------------------------------------------------------
def saved_state_formula(shape_bshd, dtype, device_type: str, iterations: int = ITERATIONS):
    """saved_state_bytes of the C++ API for a forward on these shapes (as vmonarch._backward computes it for
    the fake kernels); device_type picks the CPU or the CUDA layout. None when the package has no such
    function."""
    from vmonarch import _backward

    fn = getattr(_backward, "saved_state_bytes", None)
    if fn is None:
        return None
    stand_in = SimpleNamespace(shape=tuple(shape_bshd), dtype=dtype, device=torch.device(device_type))
    return int(fn(stand_in, stand_in, iterations, "bshd"))


def cuda_workspace_formula(rows: int, d: int, dv: int, iterations: int = ITERATIONS, recompute: bool = True,
                           entropy_grad: bool = False, lean: bool = True, elem: int = 2, frames: int = 1,
                           concurrent: bool = False) -> int:
    """backward_workspace_bytes for CUDA tensors: the regions of src/cuda/bwd/backward_plan.hpp, each 256-byte
    aligned, rows = batch·heads·tokens: D (f32), the f32 accumulators of dq, dk, dv, dAL and dY (input dtype),
    [dcL with the exact gradient], the R-step row gradient (f32), min(t − 1, 2) f32 daR buffers, [the concurrent
    schedule (VMONARCH_BACKWARD_SCHEDULE=concurrent, or auto in deterministic mode) with the recompute: the recompute's own f32 dq of frame 0's
    rows (rows / frames) and dk, dv of every row] and, in lean mode, room for the rerun forward's state (the
    saved-state layout without its header)."""
    total = _align(rows * 4)
    total += 2 * _align(rows * d * 4) + _align(rows * dv * 4)
    total += _align(rows * d * elem) + _align(rows * dv * elem)
    if entropy_grad:
        total += _align(rows * 4)
    total += _align(rows * 4)
    total += min(iterations - 1, 2) * _align(rows * d * 4)
    if concurrent and recompute:
        total += _align(rows // frames * d * 4) + _align(rows * d * 4) + _align(rows * dv * 4)
    if lean:
        vec_d, vec_dv, scalar = _align(rows * d * elem), _align(rows * dv * elem), _align(rows * 4)
        total += iterations * (vec_d + 2 * scalar) + (iterations - 1) * (vec_d + scalar) + vec_dv
    return total


def flash_saved_set_bytes(batch: int, tokens: int, heads: int, d: int, dv: int, elem: int) -> int:
    """FlashAttention's saved set: q, k, v, O (input dtype) and the float32 LSE of every row."""
    rows = batch * heads * tokens
    return rows * (2 * d + dv + dv) * elem + rows * LSE_BYTES


# --- measurements ------------------------------------------------------------------------------------------
def saved_tensor_bytes(forward, inputs):
    """Runs forward(*inputs) under saved_tensors_hooks; returns (output, total bytes of the distinct storages
    autograd saved, bytes of those storages that are not the inputs' or the output's, the saved tensors)."""
    out, seen = saved_storages(lambda: forward(*inputs))
    first = out[0] if isinstance(out, tuple) else out
    own = {storage_key(t) for t in (*inputs, first)}
    total = sum(v["bytes"] for v in seen.values())
    extra = sum(v["bytes"] for key, v in seen.items() if key not in own)
    return first, total, extra, list(seen.values())


def backward_workspace(forward, inputs, dout):
    """CUDA: (peak memory during the backward minus the steady state after the forward, the same minus the
    gradients' bytes)."""
    out = forward(*inputs)
    out = out[0] if isinstance(out, tuple) else out
    torch.cuda.synchronize()
    steady = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    grads = torch.autograd.grad(out, inputs, dout)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - steady
    grad_bytes = sum(g.numel() * g.element_size() for g in grads)
    del out, grads
    return peak, peak - grad_bytes


# --- variants ----------------------------------------------------------------------------------------------
def vmonarch_variant(grid, **options):
    def forward(q, k, v):
        return vmonarch.attention(q, k, v, grid=grid, layout="bshd", iterations=ITERATIONS, **options)

    return forward, "bshd"


def sdpa_variant(backend):
    return sdpa_forward(backend), "bhsd"


def variants(grid, device_type):
    from torch.nn.attention import SDPBackend

    rows = [("vmonarch lean", vmonarch_variant(grid), dict(lean=True, entropy_grad=False)),
            ("vmonarch saved", vmonarch_variant(grid, save_state=True), dict(lean=False, entropy_grad=False)),
            ("vmonarch lean exact-grad", vmonarch_variant(grid, entropy_grad=True), dict(lean=True, entropy_grad=True))]
    if device_type == "cuda":
        rows.append(("sdpa cudnn", sdpa_variant(SDPBackend.CUDNN_ATTENTION), None))
    rows.append(("sdpa flash", sdpa_variant(SDPBackend.FLASH_ATTENTION), None))
    return rows


def leaves(shape_bshd, layout, dtype, device, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    q, k, v, dout = (torch.randn(shape_bshd, device=device, dtype=dtype, generator=gen) for _ in range(4))
    if layout == "bhsd":
        q, k, v, dout = (x.transpose(1, 2).contiguous() for x in (q, k, v, dout))
    return [x.requires_grad_(True) for x in (q, k, v)], dout


def measure_shape(grid, heads, d, dtype, device):
    """One row per variant for one layer shape (batch 1, dv = d)."""
    tokens = math.prod(grid)
    shape = (1, tokens, heads, d)
    elem = torch.empty((), dtype=dtype).element_size()
    rows_bh = heads * tokens
    fa_set = flash_saved_set_bytes(1, tokens, heads, d, d, elem)
    label = f"{grid[0]}x{grid[1]}x{grid[2]}x{heads}h d{d}"
    out_rows = []
    for name, (forward, layout), vm in variants(grid, device.type):
        row = {"shape": label, "grid": list(grid), "heads": heads, "head_dim": d, "tokens": tokens, "name": name,
               "fa_set_bytes": fa_set}
        try:
            inputs, dout = leaves(shape, layout, dtype, device)
            out, total, extra, saved = saved_tensor_bytes(forward, inputs)
            del out
            row.update(saved_bytes=total, saved_extra_bytes=extra, saved_tensors=saved,
                       saved_minus_fa_bytes=total - fa_set,
                       saved_minus_fa_floats_per_row=(total - fa_set) / 4 / rows_bh,
                       saved_bytes_per_token_head=total / rows_bh)
            if device.type == "cuda":
                ws, beyond = backward_workspace(forward, inputs, dout)
                row.update(workspace_bytes=ws, workspace_beyond_grads_bytes=beyond)
            else:  # the backward runs (so a refused backward is reported), its scratch is not measured
                torch.autograd.grad(forward(*inputs), inputs, dout)
            del inputs, dout
        except (NotImplementedError, RuntimeError) as e:
            row["skipped"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if vm is not None:
            state = saved_state_formula(shape, dtype, device.type) if not vm["lean"] else 0
            row["formula_saved_state_bytes"] = state
            if device.type == "cuda":
                row["formula_workspace_bytes"] = cuda_workspace_formula(
                    rows_bh, d, d, lean=vm["lean"], entropy_grad=vm["entropy_grad"], elem=elem, frames=grid[0],
                    concurrent=os.environ.get("VMONARCH_BACKWARD_SCHEDULE", "") == "concurrent")
        out_rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out_rows


def mib(x):
    return f"{'-':>10}" if x is None else f"{x / 2**20:10.2f}"


def print_table(rows):
    print(f"{'shape':>20} {'variant':>25} {'saved MiB':>10} {'extra MiB':>10} {'FA set MiB':>10} "
          f"{'-FA fl/row':>10} {'ws MiB':>10} {'ws-grads':>10} {'formula st':>10} {'formula ws':>10}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['shape']:>20} {r['name']:>25}  skipped: {r['skipped']}")
            continue
        print(f"{r['shape']:>20} {r['name']:>25} {mib(r['saved_bytes'])} {mib(r['saved_extra_bytes'])} "
              f"{mib(r['fa_set_bytes'])} {r['saved_minus_fa_floats_per_row']:10.3f} {mib(r.get('workspace_bytes'))} "
              f"{mib(r.get('workspace_beyond_grads_bytes'))} {mib(r.get('formula_saved_state_bytes'))} "
              f"{mib(r.get('formula_workspace_bytes'))}")


def print_lean_claim(rows, floats_per_row=2):
    """The lean mode's claim per shape: saved <= FlashAttention's set + floats_per_row floats per row."""
    for r in rows:
        if r["name"] != "vmonarch lean" or "skipped" in r:
            continue
        bound = r["fa_set_bytes"] + floats_per_row * 4 * r["heads"] * r["tokens"]
        verdict = "holds" if r["saved_bytes"] <= bound else "FAILS"
        print(f"{r['shape']}: lean saved {r['saved_bytes']} B <= FA set {r['fa_set_bytes']} B + {floats_per_row} "
              f"floats per row: {verdict} ({r['saved_minus_fa_floats_per_row']:+.3f} floats per row)")


def markdown(rows, dtype_name):
    """The README's table (Training: memory) for these rows."""
    lines = [f"| shape ({dtype_name}) | variant | saved for backward | beyond FA's set | "
             "backward workspace (measured / formula) |", "|---|---|---|---|---|"]

    def m(x):
        return "—" if x is None else f"{x / 2**20:.2f} MiB"
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['shape']} | {r['name']} | skipped: {r['skipped']} | | |")
            continue
        beyond = f"{m(r['saved_minus_fa_bytes'])} ({r['saved_minus_fa_floats_per_row']:+.2f} floats per row)"
        ws = f"{m(r.get('workspace_bytes'))} (beyond dq, dk, dv: {m(r.get('workspace_beyond_grads_bytes'))})"
        if r.get("formula_workspace_bytes") is not None:
            ws += f" / {m(r['formula_workspace_bytes'])}"
        lines.append(f"| {r['shape']} | {r['name']} | {m(r['saved_bytes'])} | {beyond} | {ws} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="CUDA: the small shape only; CPU: tiny grids")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    parser.add_argument("--json", help="write the rows here (written whole or not at all)")
    parser.add_argument("--md", help="write the README's markdown table here (written whole or not at all)")
    args = parser.parse_args()
    check_outputs(parser, json=args.json, md=args.md)
    device = torch.device(args.device)
    if cuda_kernels_missing("backward_memory", device):
        return 2
    dtype = getattr(torch, args.dtype)
    if device.type == "cpu":
        shapes = CPU_QUICK_SHAPES if args.quick else FULL_SHAPES[:1]
    else:
        shapes = FULL_SHAPES[:1] if args.quick else FULL_SHAPES
    rows = []
    for grid, heads, d in shapes:
        rows += measure_shape(grid, heads, d, dtype, device)
    print_table(rows)
    print_lean_claim(rows)
    if args.md:
        write_atomic(args.md, markdown(rows, args.dtype))
    if args.json:
        name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
        write_json(args.json, {"device": name, "torch": torch.__version__, "dtype": args.dtype,
                               "iterations": ITERATIONS, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
