#!/usr/bin/env python3
"""Fine-tuning demonstration: a small video DiT trained with dense attention, switched to VMonarch.

Protocol, for each seed (default 3):
  1. pretrain the TinyVideoDiT (tiny_dit.py) with dense attention (torch SDPA) as a rectified-flow
     denoiser on generated moving-shape videos;
  2. evaluate it on held-out videos at fixed noise levels with dense attention and, training-free, with
     VMonarch attention: the gap;
  3. from the same weights and optimizer state, fine-tune three arms for the same steps on the same data:
     VMonarch with the paper's gradient (cL constant), VMonarch with the exact gradient, and dense
     attention continued (the control).
Success criterion (issue: at most 300 steps): the fine-tuned VMonarch model closes at least half of the
training-free gap to dense, i.e. mean(VMonarch − dense control after fine-tuning) <= 0.5 · mean(VMonarch
training-free − dense pretrained), means over the seeds.

    python examples/finetune_tiny_dit.py                  # GPU default (cuda when available)
    python examples/finetune_tiny_dit.py --tiny           # small CPU run (CI), well under 2 minutes
    python examples/finetune_tiny_dit.py --plot out/finetune_tiny_dit/finetune_tiny_dit.json   # PNG again

Writes <out-dir>/finetune_tiny_dit.json (every number) and <out-dir>/finetune_tiny_dit.png (loss curves;
needs matplotlib, else the JSON only and a note how to draw it later with --plot).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import pathlib
import platform
import sys
import tempfile
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import tiny_dit  # noqa: E402

NOISE_LEVELS = (0.25, 0.5, 0.75)
ARMS = ("vmonarch_paper", "vmonarch_exact", "dense_control")
EVAL_SEED = 987_654_321        # held-out videos: a seed no training batch uses

# Sizes: the GPU default (grid 8×16×16 = 2048 tokens, head_dim 64 so the CUDA kernels apply) and --tiny.
CONFIGS = {
    "default": dict(frames=8, size=32, patch=2, dim=256, depth=4, heads=4, batch=8, pretrain_steps=1500,
                    finetune_steps=300, eval_every=25, pretrain_evals=10, eval_videos=64, lr=5e-4),
    "tiny": dict(frames=4, size=8, patch=2, dim=32, depth=2, heads=2, batch=8, pretrain_steps=150,
                 finetune_steps=30, eval_every=10, pretrain_evals=3, eval_videos=16, lr=2e-3),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="small CPU configuration (what CI runs)")
    p.add_argument("--device", default=None, help="cuda when available, else cpu")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds")
    p.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds − 1")
    p.add_argument("--out-dir", default="out/finetune_tiny_dit")
    p.add_argument("--plot", metavar="JSON", default=None, help="only draw the PNG of an earlier run's JSON")
    p.add_argument("--merge", metavar="JSON", nargs="+", default=None,
                   help="combine the seeds of earlier runs with one configuration (e.g. one seed per process, "
                        "--first-seed) into <out-dir>/finetune_tiny_dit.json and .png")
    for name in CONFIGS["default"]:
        kind = float if name == "lr" else int
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                       help=f"default {CONFIGS['default'][name]} (--tiny: {CONFIGS['tiny'][name]})")
    p.add_argument("--finetune-lr", type=float, default=None, help="default 0.3 × lr (constant)")
    p.add_argument("--iterations", type=int, default=2, help="VMonarch iterations t")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of torch (default: 1 with --tiny, which on a busy 2-core machine is much "
                        "faster than 2 spinning threads; else torch's default)")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error(f"argument --threads: {args.threads}, expected >= 1")
    if args.seeds < 1:
        p.error(f"argument --seeds: {args.seeds}, expected >= 1")
    cfg = dict(CONFIGS["tiny" if args.tiny else "default"])
    for name in cfg:
        if getattr(args, name) is not None:
            cfg[name] = getattr(args, name)
    for name, value in cfg.items():
        if value <= 0 and name not in ("pretrain_steps", "finetune_steps"):
            p.error(f"argument --{name.replace('_', '-')}: {value}, expected > 0")
        if value < 0:
            p.error(f"argument --{name.replace('_', '-')}: {value}, expected >= 0")
    if cfg["size"] % cfg["patch"]:
        p.error(f"argument --size: {cfg['size']} is not a multiple of --patch {cfg['patch']}")
    if cfg["dim"] % cfg["heads"]:
        p.error(f"argument --dim: {cfg['dim']} is not a multiple of --heads {cfg['heads']}")
    cfg["finetune_lr"] = args.finetune_lr if args.finetune_lr is not None else 0.3 * cfg["lr"]
    cfg["iterations"] = args.iterations
    return args, cfg


# --- data, loss, evaluation --------------------------------------------------------------------------
def batch_generator(seed: int, phase: int, step: int) -> torch.Generator:
    """Training batches are a function of (seed, phase, step): every fine-tuning arm sees the same data."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + phase) * 10_000_019 + step) % (2**63))


def flow_loss(model, attention, video, t, noise, autocast):
    """Rectified flow: x_t = (1 − t)·x_0 + t·ε; the model predicts the velocity ε − x_0 (MSE)."""
    tb = t[:, None, None, None, None]
    with autocast():
        pred = model((1 - tb) * video + tb * noise, t, attention)
    return (pred.float() - (noise - video)).square().mean(dim=(1, 2, 3, 4))


class HeldOut:
    """Fixed held-out videos and noise: the loss at each noise level in NOISE_LEVELS."""

    def __init__(self, cfg, device):
        g = torch.Generator().manual_seed(EVAL_SEED)
        self.videos = tiny_dit.moving_shapes(cfg["eval_videos"], cfg["frames"], cfg["size"], g).to(device)
        self.noise = torch.randn((len(NOISE_LEVELS),) + tuple(self.videos.shape), generator=g).to(device)
        self.batch = cfg["batch"]

    @torch.no_grad()
    def evaluate(self, model, attention, autocast):
        model.eval()
        levels = []
        for i, level in enumerate(NOISE_LEVELS):
            total = 0.0
            for s in range(0, len(self.videos), self.batch):
                v, n = self.videos[s:s + self.batch], self.noise[i, s:s + self.batch]
                t = torch.full((len(v),), level, device=v.device)
                total += float(flow_loss(model, attention, v, t, n, autocast).sum())
            levels.append(total / len(self.videos))
        model.train()
        return {"mean": sum(levels) / len(levels), "levels": levels}


def train(model, opt, attention, cfg, seed, phase, steps, lr_at, device, autocast, on_eval=None, eval_every=0):
    """`steps` AdamW steps; on_eval(step) after every eval_every steps (and at step 0)."""
    losses = []
    if on_eval:
        on_eval(0)
    for step in range(steps):
        g = batch_generator(seed, phase, step)
        video = tiny_dit.moving_shapes(cfg["batch"], cfg["frames"], cfg["size"], g).to(device)
        t = torch.sigmoid(torch.randn(cfg["batch"], generator=g)).to(device)   # logit-normal times
        noise = torch.randn(video.shape, generator=g).to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = flow_loss(model, attention, video, t, noise, autocast).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"training loss became {losses[-1]} at step {step} (phase {phase})")
        if on_eval and eval_every and (step + 1) % eval_every == 0:
            on_eval(step + 1)
    return losses


def pretrain_lr(cfg):
    warmup, total, lr = max(1, cfg["pretrain_steps"] // 20), max(1, cfg["pretrain_steps"]), cfg["lr"]

    def at(step):  # linear warm-up, then cosine decay to 0.2·lr
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * (0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))

    return at


# --- one seed ----------------------------------------------------------------------------------------
def run_seed(seed, cfg, device, held_out, backends, autocast, log):
    torch.manual_seed(seed)
    model = tiny_dit.TinyVideoDiT(cfg["frames"], cfg["size"], cfg["patch"], cfg["dim"], cfg["depth"],
                                  cfg["heads"]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.99), weight_decay=0.0)
    result = {"seed": seed, "pretrain_curve": [], "arms": {}}
    every = max(1, cfg["pretrain_steps"] // max(1, cfg["pretrain_evals"]))

    def pre_eval(step):
        result["pretrain_curve"].append({"step": step, **held_out.evaluate(model, backends["dense"], autocast)})

    start = time.time()
    result["pretrain_train_loss"] = train(model, opt, backends["dense"], cfg, seed, 0, cfg["pretrain_steps"],
                                          pretrain_lr(cfg), device, autocast, pre_eval, every)
    result["pretrain_seconds"] = time.time() - start
    if result["pretrain_curve"][-1]["step"] != cfg["pretrain_steps"]:
        pre_eval(cfg["pretrain_steps"])
    result["dense_pretrained"] = result["pretrain_curve"][-1]
    result["vmonarch_training_free"] = held_out.evaluate(model, backends["vmonarch_paper"], autocast)
    log(f"seed {seed}: pretrained {cfg['pretrain_steps']} steps in {result['pretrain_seconds']:.1f} s; eval loss "
        f"dense {result['dense_pretrained']['mean']:.5f}, VMonarch training-free "
        f"{result['vmonarch_training_free']['mean']:.5f}")

    for arm in ARMS:
        arm_model = copy.deepcopy(model)
        arm_opt = torch.optim.AdamW(arm_model.parameters(), lr=cfg["finetune_lr"], betas=(0.9, 0.99),
                                    weight_decay=0.0)
        arm_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        attention = backends[arm]
        curve = []
        on_eval = lambda step: curve.append({"step": step, **held_out.evaluate(arm_model, attention, autocast)})
        start = time.time()
        train_loss = train(arm_model, arm_opt, attention, cfg, seed, 1, cfg["finetune_steps"],
                           lambda step: cfg["finetune_lr"], device, autocast, on_eval, cfg["eval_every"])
        if curve[-1]["step"] != cfg["finetune_steps"]:
            on_eval(cfg["finetune_steps"])
        result["arms"][arm] = {"curve": curve, "train_loss": train_loss, "seconds": time.time() - start,
                               "final": curve[-1]}
        log(f"seed {seed}: {arm:15s} {cfg['finetune_steps']} steps in {time.time() - start:.1f} s, eval loss "
            f"{curve[0]['mean']:.5f} -> {curve[-1]['mean']:.5f}")
    return result


# --- summary -----------------------------------------------------------------------------------------
def mean_std(values):
    values = [float(v) for v in values]
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": m, "std": sd, "values": values}


def summarise(seeds, cfg):
    def stat(get):
        return {"mean": mean_std(get(s)["mean"] for s in seeds),
                "levels": [mean_std(get(s)["levels"][i] for s in seeds) for i in range(len(NOISE_LEVELS))]}

    summary = {"dense_pretrained": stat(lambda s: s["dense_pretrained"]),
               "vmonarch_training_free": stat(lambda s: s["vmonarch_training_free"]),
               "final": {arm: stat(lambda s, a=arm: s["arms"][a]["final"]) for arm in ARMS}}
    gap0 = mean_std(s["vmonarch_training_free"]["mean"] - s["dense_pretrained"]["mean"] for s in seeds)
    summary["gap_training_free"] = gap0
    summary["closure"] = {}
    for arm in ARMS[:2]:
        gap = mean_std(s["arms"][arm]["final"]["mean"] - s["arms"]["dense_control"]["final"]["mean"] for s in seeds)
        gap_pre = mean_std(s["arms"][arm]["final"]["mean"] - s["dense_pretrained"]["mean"] for s in seeds)
        closed = 1 - gap["mean"] / gap0["mean"] if gap0["mean"] > 0 else float("nan")
        summary["closure"][arm] = {
            "gap_to_dense_control": gap, "gap_to_dense_pretrained": gap_pre,
            "closed_fraction": closed,
            "closed_fraction_vs_pretrained_dense": 1 - gap_pre["mean"] / gap0["mean"] if gap0["mean"] > 0 else float("nan"),
            "steps": cfg["finetune_steps"], "closes_half": bool(closed >= 0.5),
            "steps_to_half": steps_to_half(seeds, arm, gap0["mean"]),
        }
    return summary


def steps_to_half(seeds, arm, gap0):
    """First evaluated fine-tuning step at which the mean (over seeds) gap to the dense control at the same
    step is at most half the training-free gap; None if never."""
    for i, point in enumerate(seeds[0]["arms"][arm]["curve"]):
        gap = sum(s["arms"][arm]["curve"][i]["mean"] - s["arms"]["dense_control"]["curve"][i]["mean"]
                  for s in seeds) / len(seeds)
        if gap0 > 0 and gap <= 0.5 * gap0:
            return point["step"]
    return None


def verdict_lines(report):
    s, cfg = report["summary"], report["config"]
    fmt = lambda x: f"{x['mean']:.5f} ± {x['std']:.5f}"
    lines = [f"eval loss (mean over noise levels {', '.join(map(str, NOISE_LEVELS))}; mean ± std over "
             f"{len(report['seeds'])} seeds):",
             f"  dense, pretrained ({cfg['pretrain_steps']} steps)   {fmt(s['dense_pretrained']['mean'])}",
             f"  VMonarch, training-free              {fmt(s['vmonarch_training_free']['mean'])}"
             f"   gap {fmt(s['gap_training_free'])}"]
    for arm in ARMS:
        lines.append(f"  after {cfg['finetune_steps']} steps: {arm:15s}  {fmt(s['final'][arm]['mean'])}")
    for arm in ARMS[:2]:
        c = s["closure"][arm]
        if not s["gap_training_free"]["mean"] > 0:
            lines.append(f"VERDICT {arm}: no training-free gap to close (VMonarch is not worse than dense here)")
            continue
        verdict = "PASS" if c["closes_half"] else "FAIL"
        lines.append(f"VERDICT {arm}: closes {100 * c['closed_fraction']:.0f} % of the training-free gap to the "
                     f"dense control within {c['steps']} steps (criterion >= 50 %): {verdict}"
                     f" [vs the pretrained dense model: {100 * c['closed_fraction_vs_pretrained_dense']:.0f} %;"
                     f" half reached at step {c['steps_to_half']}]")
    return lines


# --- files -------------------------------------------------------------------------------------------
def write_atomically(path: pathlib.Path, write):
    """write(tmp_path) then rename: a reader never sees a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def plot(report, png_path: pathlib.Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    seeds, cfg, s = report["seeds"], report["config"], report["summary"]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.6))
    for r in seeds:
        c = r["pretrain_curve"]
        ax0.plot([p["step"] for p in c], [p["mean"] for p in c], marker="o", ms=3, label=f"seed {r['seed']}")
    ax0.set(title="pretraining, dense attention", xlabel="step", ylabel="held-out eval loss", yscale="log")
    ax0.legend()
    colours = {"vmonarch_paper": "tab:red", "vmonarch_exact": "tab:purple", "dense_control": "tab:blue"}
    names = {"vmonarch_paper": "VMonarch, paper gradient (cL constant)", "vmonarch_exact": "VMonarch, exact gradient",
             "dense_control": "dense, continued (control)"}
    for arm in ARMS:
        steps = [p["step"] for p in seeds[0]["arms"][arm]["curve"]]
        per_seed = [[p["mean"] for p in r["arms"][arm]["curve"]] for r in seeds]
        m = [sum(v) / len(v) for v in zip(*per_seed)]
        sd = [mean_std(v)["std"] for v in zip(*per_seed)]
        ax1.plot(steps, m, color=colours[arm], label=names[arm])
        ax1.fill_between(steps, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)],
                         color=colours[arm], alpha=0.15)
    ax1.axhline(s["dense_pretrained"]["mean"]["mean"], color="tab:blue", ls=":", lw=1, label="dense, pretrained")
    ax1.set(title=f"fine-tuning (mean ± std of {len(seeds)} seeds)", xlabel="fine-tuning step",
            ylabel="held-out eval loss")
    ax1.legend(fontsize=8)
    closure = s["closure"]
    fig.suptitle(f"tiny video DiT, grid {'×'.join(map(str, report['grid']))}, {report['parameters'] / 1e6:.2f} M "
                 f"parameters, {report['device']}: gap closed {100 * closure['vmonarch_paper']['closed_fraction']:.0f} % "
                 f"(paper gradient), {100 * closure['vmonarch_exact']['closed_fraction']:.0f} % (exact)", fontsize=10)
    fig.tight_layout()
    write_atomically(png_path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return True


def write_report(report, out_dir: pathlib.Path):
    json_path, png_path = out_dir / "finetune_tiny_dit.json", out_dir / "finetune_tiny_dit.png"
    write_atomically(json_path, lambda tmp: pathlib.Path(tmp).write_text(json.dumps(report, indent=1)))
    for line in verdict_lines(report):
        print(line)
    print(f"wrote {json_path} ({report['seconds']:.0f} s in all)")
    if plot(report, png_path):
        print(f"wrote {png_path}")
    else:
        print(f"matplotlib is not installed: no PNG; draw it elsewhere with --plot {json_path}")


def merge(paths, out_dir: pathlib.Path):
    reports = [json.loads(pathlib.Path(p).read_text()) for p in paths]
    for p, r in zip(paths[1:], reports[1:]):
        if r["config"] != reports[0]["config"]:
            sys.exit(f"finetune_tiny_dit: --merge {p} has another configuration than {paths[0]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    if any((out_dir / "finetune_tiny_dit.json").resolve() == pathlib.Path(p).resolve() for p in paths):
        sys.exit(f"finetune_tiny_dit: --merge would overwrite its input {out_dir / 'finetune_tiny_dit.json'}")
    report = dict(reports[0])
    report["seeds"] = sorted((s for r in reports for s in r["seeds"]), key=lambda s: s["seed"])
    report["seconds"] = sum(r["seconds"] for r in reports)
    report["merged_from"] = [str(p) for p in paths]
    report["summary"] = summarise(report["seeds"], report["config"])
    write_report(report, out_dir)
    return 0


def main(argv=None):
    args, cfg = parse_args(argv)
    if args.plot:
        path = pathlib.Path(args.plot)
        report = json.loads(path.read_text())
        png = path.with_suffix(".png")
        if png.exists() and png.samefile(path):
            sys.exit(f"finetune_tiny_dit: --plot {path} would overwrite its own input")
        if not plot(report, png):
            sys.exit("finetune_tiny_dit: --plot needs matplotlib (pip install matplotlib)")
        print(f"wrote {png}")
        return 0
    if args.merge:
        return merge(args.merge, pathlib.Path(args.out_dir))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"finetune_tiny_dit: argument --device is {args.device!r} but torch sees no CUDA device")
    threads = args.threads or (1 if args.tiny else None)
    if threads:
        torch.set_num_threads(threads)
    out_dir = pathlib.Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        sys.exit(f"finetune_tiny_dit: argument --out-dir is {str(out_dir)!r}, an existing file, expected a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    autocast = ((lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda"
                else contextlib.nullcontext)
    log = lambda msg: print(msg, flush=True)

    head_dim = cfg["dim"] // cfg["heads"]
    backends = {"dense": tiny_dit.dense_attention, "dense_control": tiny_dit.dense_attention,
                "vmonarch_paper": tiny_dit.VMonarchAttention(device, head_dim, False, cfg["iterations"]),
                "vmonarch_exact": tiny_dit.VMonarchAttention(device, head_dim, True, cfg["iterations"])}
    paths = {arm: {"training": backends[arm].training_path, "operator_backward_unavailable": backends[arm].why_not}
             for arm in ARMS[:2]}
    grid = (cfg["frames"], cfg["size"] // cfg["patch"], cfg["size"] // cfg["patch"])
    probe = tiny_dit.TinyVideoDiT(cfg["frames"], cfg["size"], cfg["patch"], cfg["dim"], cfg["depth"], cfg["heads"])
    params = tiny_dit.count_parameters(probe)
    log(f"tiny video DiT: {params / 1e6:.2f} M parameters, grid {grid} ({grid[0] * grid[1] * grid[2]} tokens), "
        f"{cfg['heads']} heads × {head_dim}, device {device}; VMonarch training path: "
        + ", ".join(f"{arm} → {p['training']}" for arm, p in paths.items()))
    for arm, p in paths.items():
        if p["operator_backward_unavailable"]:
            log(f"  ({arm}: the operator's backward is not available here: {p['operator_backward_unavailable']})")

    held_out = HeldOut(cfg, device)
    start = time.time()
    seeds = [run_seed(seed, cfg, device, held_out, backends, autocast, log) for seed in range(args.first_seed, args.first_seed + args.seeds)]
    report = {"config": cfg, "grid": list(grid), "parameters": params, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "noise_levels": list(NOISE_LEVELS),
              "attention_paths": paths, "seconds": time.time() - start, "seeds": seeds}
    report["summary"] = summarise(seeds, cfg)
    write_report(report, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
