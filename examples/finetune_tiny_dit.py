"""Fine-tuning a tiny video DiT with VMonarch attention (spec §7: the backward pass), on the CPU.

What it does, per seed:
  1. trains a small video diffusion transformer with dense attention on generated moving-shape videos
     (rectified-flow objective: predict noise - video from a noisy video and its noise level);
  2. switches its self-attention to VMonarch without training: the training-free loss gap;
  3. fine-tunes three copies from there: VMonarch with the paper's gradient (cL constant), VMonarch with
     the exact gradient (entropy_grad=True), and dense attention continued (the control);
and writes the evaluation-loss curves (mean over seeds) as a PNG and the numbers as JSON.

    python examples/finetune_tiny_dit.py --out finetune_out            # the full demonstration (CPU, long)
    python examples/finetune_tiny_dit.py --tiny --out /tmp/ft           # seconds: what CI runs

The VMonarch backward runs on the CPU only in this version (the CUDA backward is not written yet), so
the whole demonstration runs on the CPU.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import struct
import time
import zlib

import torch
import torch.nn as nn
import torch.nn.functional as F

import vmonarch


# --- data: moving shapes ---------------------------------------------------------------------------------
def moving_shapes(n, frames, size, generator):
    """n videos [n, frames, 3, size, size] in [-1, 1]: 1-3 squares or discs with constant velocity."""
    ys = torch.arange(size, dtype=torch.float32).view(1, size, 1)
    xs = torch.arange(size, dtype=torch.float32).view(1, 1, size)
    videos = torch.full((n, frames, 3, size, size), -1.0)
    for b in range(n):
        for _ in range(int(torch.randint(1, 4, (1,), generator=generator))):
            color = torch.rand(3, generator=generator) * 2 - 1
            radius = float(torch.rand(1, generator=generator)) * size / 6 + size / 10
            pos = torch.rand(2, generator=generator) * size
            vel = (torch.rand(2, generator=generator) * 2 - 1) * size / (2 * frames)
            disc = bool(torch.rand(1, generator=generator) < 0.5)
            for t in range(frames):
                cy, cx = (pos + t * vel).tolist()
                if disc:
                    mask = (ys - cy) ** 2 + (xs - cx) ** 2 <= radius ** 2
                else:
                    mask = ((ys - cy).abs() <= radius) & ((xs - cx).abs() <= radius)
                videos[b, t] = torch.where(mask, color.view(3, 1, 1), videos[b, t])
    return videos


def patchify(video, patch):
    """[B, T, C, H, W] -> [B, T*(H/p)*(W/p), C*p*p], tokens frame-major (n = i*h*w + y*w + x)."""
    B, T, C, H, W = video.shape
    h, w = H // patch, W // patch
    x = video.reshape(B, T, C, h, patch, w, patch).permute(0, 1, 3, 5, 2, 4, 6)
    return x.reshape(B, T * h * w, C * patch * patch)


# --- model ---------------------------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.mod = nn.Linear(width, 2 * width)  # timestep -> scale and shift of the attention input

    def forward(self, x, temb, attend):
        B, N, D = x.shape
        scale, shift = self.mod(temb).unsqueeze(1).chunk(2, -1)
        h = self.norm1(x) * (1 + scale) + shift
        q, k, v = self.qkv(h).view(B, N, 3, self.heads, D // self.heads).unbind(2)  # [B, N, heads, d] views
        x = x + self.proj(attend(q, k, v).reshape(B, N, D))
        return x + self.mlp(self.norm2(x))


class TinyDiT(nn.Module):
    def __init__(self, tokens, patch_dim, width, depth, heads):
        super().__init__()
        self.embed = nn.Linear(patch_dim, width)
        self.pos = nn.Parameter(torch.randn(1, tokens, width) * 0.02)
        self.time = nn.Sequential(nn.Linear(64, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, patch_dim))

    def forward(self, x, t, attend):
        freqs = torch.exp(-math.log(1000.0) * torch.arange(32, dtype=x.dtype) / 32)
        temb = self.time(torch.cat([torch.sin(t[:, None] * 1000 * freqs), torch.cos(t[:, None] * 1000 * freqs)], -1))
        h = self.embed(x) + self.pos
        for block in self.blocks:
            h = block(h, temb, attend)
        return self.out(h)


def dense_attend(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def vmonarch_attend(grid, entropy_grad):
    def attend(q, k, v):
        return vmonarch.attention(q, k, v, grid=grid, layout="bshd", entropy_grad=entropy_grad)
    return attend


def flow_loss(model, x0, attend, t=None, noise=None, generator=None):
    """Rectified flow: x_t = (1 - t)·x0 + t·noise; the model predicts noise - x0."""
    if t is None:
        t = torch.rand(x0.shape[0], generator=generator)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator)
    xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
    return F.mse_loss(model(xt, t, attend), noise - x0)


# --- the experiment -----------------------------------------------------------------------------------
def run_seed(seed, cfg, log):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    size, patch, frames = cfg["size"], cfg["patch"], cfg["frames"]
    grid = (frames, size // patch, size // patch)
    tokens = grid[0] * grid[1] * grid[2]
    patch_dim = 3 * patch * patch
    train = patchify(moving_shapes(cfg["train_videos"], frames, size, g), patch)
    evalset = patchify(moving_shapes(cfg["eval_videos"], frames, size, g), patch)
    eval_t = torch.rand(evalset.shape[0], generator=g)
    eval_noise = torch.randn(evalset.shape, generator=g)

    def evaluate(model, attend):
        with torch.no_grad():
            return float(flow_loss(model, evalset, attend, eval_t, eval_noise))

    def train_steps(model, attend, steps, lr, curve=None, label=""):
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        for step in range(1, steps + 1):
            idx = torch.randint(0, train.shape[0], (cfg["batch"],), generator=g)
            loss = flow_loss(model, train[idx], attend, generator=g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if curve is not None and (step % cfg["eval_every"] == 0 or step == steps):
                curve.append((step, evaluate(model, curve_attend[label])))
        return model

    model = TinyDiT(tokens, patch_dim, cfg["width"], cfg["depth"], cfg["heads"])
    params = sum(p.numel() for p in model.parameters())
    curve_attend = {"vmonarch": vmonarch_attend(grid, False), "vmonarch_exact": vmonarch_attend(grid, True),
                    "dense": dense_attend}
    start = time.time()
    train_steps(model, dense_attend, cfg["pretrain_steps"], cfg["lr"])
    dense0 = evaluate(model, dense_attend)
    vm0 = evaluate(model, curve_attend["vmonarch"])
    log(f"seed {seed}: {params:,} parameters, grid {grid}; after {cfg['pretrain_steps']} dense steps "
        f"eval loss dense {dense0:.4f}, VMonarch training-free {vm0:.4f} ({time.time() - start:.0f} s)")
    curves = {}
    for label in ("vmonarch", "vmonarch_exact", "dense"):
        copy = TinyDiT(tokens, patch_dim, cfg["width"], cfg["depth"], cfg["heads"])
        copy.load_state_dict(model.state_dict())
        curve = [(0, vm0 if label != "dense" else dense0)]
        train_steps(copy, curve_attend[label], cfg["finetune_steps"], cfg["finetune_lr"], curve, label)
        curves[label] = curve
        log(f"seed {seed}: fine-tuned {label}: eval loss {curve[-1][1]:.4f} ({time.time() - start:.0f} s)")
    return {"seed": seed, "parameters": params, "grid": grid, "dense_pretrained": dense0,
            "vmonarch_training_free": vm0, "curves": curves}


def gap_closed(result, label):
    """Fraction of the training-free gap (VMonarch - dense) closed after fine-tuning, against the control."""
    gap0 = result["vmonarch_training_free"] - result["dense_pretrained"]
    gap = result["curves"][label][-1][1] - result["curves"]["dense"][-1][1]
    return 1 - gap / gap0 if gap0 > 0 else float("nan")


# --- a PNG of the curves, without plotting libraries -------------------------------------------------
def write_png(path, rgb):
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + bytes(rgb[y].flatten().tolist()) for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) +
                chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def plot_curves(path, curves, reference_levels, width=640, height=400):
    """Mean eval-loss curves (one colour each) with dashed horizontal reference levels."""
    img = torch.full((height, width, 3), 255, dtype=torch.uint8)
    pad = 40
    values = [v for c in curves.values() for _, v in c] + list(reference_levels.values())
    lo, hi = min(values), max(values)
    hi = hi if hi > lo else lo + 1
    steps = max(s for c in curves.values() for s, _ in c) or 1

    def to_px(step, value):
        x = pad + (width - 2 * pad) * step / steps
        y = height - pad - (height - 2 * pad) * (value - lo) / (hi - lo)
        return x, y

    def line(p0, p1, color, dashed=False):
        n = int(max(abs(p1[0] - p0[0]), abs(p1[1] - p0[1]))) + 1
        for i in range(n + 1):
            if dashed and (i // 6) % 2:
                continue
            x = round(p0[0] + (p1[0] - p0[0]) * i / n)
            y = round(p0[1] + (p1[1] - p0[1]) * i / n)
            img[max(0, y - 1):y + 1, max(0, x - 1):x + 1] = torch.tensor(color, dtype=torch.uint8)

    line((pad, height - pad), (width - pad, height - pad), (0, 0, 0))
    line((pad, pad), (pad, height - pad), (0, 0, 0))
    colors = {"vmonarch": (200, 40, 40), "vmonarch_exact": (230, 140, 0), "dense": (30, 90, 200)}
    for label, level in reference_levels.items():
        line(to_px(0, level), to_px(steps, level), colors.get(label, (120, 120, 120)), dashed=True)
    for label, curve in curves.items():
        for (s0, v0), (s1, v1) in zip(curve, curve[1:]):
            line(to_px(s0, v0), to_px(s1, v1), colors[label])
    write_png(path, img.numpy())


def mean_curves(results):
    labels = results[0]["curves"].keys()
    return {label: [(s, sum(r["curves"][label][i][1] for r in results) / len(results))
                    for i, (s, _) in enumerate(results[0]["curves"][label])] for label in labels}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="finetune_out", help="folder for curves.png and results.json")
    ap.add_argument("--tiny", action="store_true", help="a seconds-long run (CI): tiny model, few steps, 1 seed")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    ap.add_argument("--pretrain-steps", type=int, default=800)
    ap.add_argument("--finetune-steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override a setting of the configuration, e.g. --set width=96 depth=4 frames=5 size=16")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = dict(size=24, patch=4, frames=9, width=192, depth=6, heads=6, batch=16, lr=3e-4, finetune_lr=1e-4,
               train_videos=512, eval_videos=64, eval_every=25, pretrain_steps=args.pretrain_steps,
               finetune_steps=args.finetune_steps)
    seeds = args.seeds
    if args.tiny:
        cfg.update(size=8, patch=4, frames=3, width=32, depth=2, heads=2, batch=4, train_videos=16, eval_videos=4,
                   eval_every=2, pretrain_steps=4, finetune_steps=4)
        seeds = 1
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in cfg or not value:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(cfg))}")
        cfg[key] = type(cfg[key])(value)
    if cfg["size"] % cfg["patch"] or cfg["width"] % cfg["heads"]:
        raise SystemExit(f"size {cfg['size']} must be a multiple of patch {cfg['patch']} and width "
                         f"{cfg['width']} of heads {cfg['heads']}")
    os.makedirs(args.out, exist_ok=True)
    log_path = os.path.join(args.out, "log.txt")
    with open(log_path, "w") as logf:
        def log(msg):
            print(msg, flush=True)
            logf.write(msg + "\n")
            logf.flush()

        results = [run_seed(s, cfg, log) for s in range(args.first_seed, args.first_seed + seeds)]
        closed = {label: sum(gap_closed(r, label) for r in results) / len(results)
                  for label in ("vmonarch", "vmonarch_exact")}
        log("mean fraction of the training-free gap closed after fine-tuning: " +
            ", ".join(f"{k} {v:.2f}" for k, v in closed.items()))
    curves = mean_curves(results)
    levels = {"dense": sum(r["dense_pretrained"] for r in results) / len(results)}
    plot_curves(os.path.join(args.out, "curves.png"), curves, levels)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"config": cfg, "seeds": results, "mean_curves": curves, "gap_closed": closed}, f, indent=1)
    return {"results": results, "gap_closed": closed, "mean_curves": curves}


if __name__ == "__main__":
    main()
