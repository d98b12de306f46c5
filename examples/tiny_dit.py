"""A small video diffusion transformer, moving-shape videos, and the attention backends it can use.

Used by finetune_tiny_dit.py. Everything here is generated on the fly from seeds; nothing is downloaded.

- moving_shapes(): videos of squares and discs of a few colours moving with constant velocity (wrapping
  around the frame edges, so the velocity never changes) over a dark background, values in [-1, 1].
- TinyVideoDiT: patchify (1×p×p patches, one token per patch of each frame: a T×H×W latent grid,
  frame-major tokens as VMonarch expects), learned factorised position embeddings, adaLN-Zero timestep
  conditioning, pre-norm blocks of self-attention over all T·H·W tokens (RMS-normed q and k; the
  attention itself is a function passed in) and a GELU MLP, a linear head back to pixels.
- Attention backends (q, k, v: [batch, heads, tokens, head_dim]; grid (T, H, W)): dense softmax through
  torch's scaled_dot_product_attention, and VMonarch through vmonarch.attention where its backward runs
  on the device, else through vmonarch.torch_impl.attention (same algorithm, differentiated by autograd).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import vmonarch
import vmonarch.torch_impl

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Sequence[int]], torch.Tensor]

# Colours of the shapes (RGB in [-1, 1]): red, green, blue, yellow, cyan, white.
PALETTE = torch.tensor([[0.9, -0.8, -0.8], [-0.8, 0.8, -0.8], [-0.7, -0.6, 0.9],
                        [0.9, 0.8, -0.8], [-0.8, 0.8, 0.8], [0.9, 0.9, 0.9]])


def moving_shapes(batch: int, frames: int, size: int, generator: torch.Generator, max_objects: int = 3,
                  device="cpu") -> torch.Tensor:
    """[batch, 3, frames, size, size] videos: 1..max_objects shapes (square or disc, radius size/10..size/5,
    a palette colour) at a random start position moving size/16..size/6 pixels per frame in a random
    direction, wrapping around the edges (torus distance); anti-aliased one-pixel edges; painted in order
    over a dark background of random tint."""
    g = generator
    u = lambda *shape: torch.rand(*shape, generator=g)
    count = torch.randint(1, max_objects + 1, (batch,), generator=g)
    active = torch.arange(max_objects)[None, :] < count[:, None]                     # [B, O]
    is_disc = u(batch, max_objects) < 0.5
    radius = size * (0.1 + 0.1 * u(batch, max_objects))
    colour = PALETTE[torch.randint(0, len(PALETTE), (batch, max_objects), generator=g)]   # [B, O, 3]
    start = size * u(batch, max_objects, 2)
    angle = 2 * math.pi * u(batch, max_objects)
    speed = size * (1 / 16 + (1 / 6 - 1 / 16) * u(batch, max_objects))
    velocity = torch.stack([speed * torch.cos(angle), speed * torch.sin(angle)], -1)  # pixels per frame
    background = -0.9 + 0.2 * u(batch, 3)

    to = lambda x: x.to(device)
    start, velocity, radius, colour, is_disc, active = map(to, (start, velocity, radius, colour, is_disc, active))
    f = torch.arange(frames, device=device, dtype=torch.float32)
    centre = (start[:, :, None, :] + velocity[:, :, None, :] * f[None, None, :, None]) % size   # [B, O, F, 2]
    pix = torch.arange(size, device=device, dtype=torch.float32) + 0.5
    wrap = lambda d: (d + size / 2) % size - size / 2                                   # torus distance
    dy = wrap(pix[None, None, None, :, None] - centre[..., 0, None, None])              # [B, O, F, S, 1]
    dx = wrap(pix[None, None, None, None, :] - centre[..., 1, None, None])              # [B, O, F, 1, S]
    dist = torch.where(is_disc[:, :, None, None, None], torch.sqrt(dy ** 2 + dx ** 2),
                       torch.maximum(dy.abs(), dx.abs()))                               # [B, O, F, S, S]
    cover = (radius[:, :, None, None, None] + 0.5 - dist).clamp(0, 1) * active[:, :, None, None, None]
    video = to(background)[:, :, None, None, None].expand(batch, 3, frames, size, size).clone()
    for o in range(max_objects):
        c = cover[:, o, None]                                                           # [B, 1, F, S, S]
        video = video * (1 - c) + colour[:, o, :, None, None, None] * c
    return video


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (scaled to 0..1000), [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], -1)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.RMSNorm(dim // heads, eps=1e-6)
        self.k_norm = nn.RMSNorm(dim // heads, eps=1e-6)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_ratio * dim, dim))
        self.modulation = nn.Linear(dim, 6 * dim)   # adaLN-Zero: shift, scale, gate for attention and MLP
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, attention: Attention, grid) -> torch.Tensor:
        B, N, D = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(c))[:, None].chunk(6, -1)
        h = self.norm1(x) * (1 + scale1) + shift1
        q, k, v = self.qkv(h).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = attention(self.q_norm(q), self.k_norm(k), v, grid)                       # [B, heads, N, hd]
        x = x + gate1 * self.proj(a.transpose(1, 2).reshape(B, N, D).to(x.dtype))
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


class TinyVideoDiT(nn.Module):
    """Predicts the rectified-flow velocity of a noisy video [B, 3, frames, size, size] at time t [B]."""

    def __init__(self, frames: int, size: int, patch: int = 2, dim: int = 128, depth: int = 4, heads: int = 2,
                 channels: int = 3):
        super().__init__()
        if size % patch:
            raise ValueError(f"TinyVideoDiT: size {size} is not a multiple of patch {patch}")
        if dim % heads:
            raise ValueError(f"TinyVideoDiT: dim {dim} is not a multiple of heads {heads}")
        self.patch, self.channels = patch, channels
        self.grid = (frames, size // patch, size // patch)
        T, H, W = self.grid
        self.embed = nn.Linear(channels * patch * patch, dim)
        self.pos_t = nn.Parameter(0.02 * torch.randn(T, 1, 1, dim))
        self.pos_h = nn.Parameter(0.02 * torch.randn(1, H, 1, dim))
        self.pos_w = nn.Parameter(0.02 * torch.randn(1, 1, W, dim))
        self.time = nn.Sequential(nn.Linear(64, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation_out = nn.Linear(dim, 2 * dim)
        self.head = nn.Linear(dim, channels * patch * patch)
        for layer in (self.modulation_out, self.head):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def patchify(self, video: torch.Tensor) -> torch.Tensor:
        B, C, T, S, _ = video.shape
        p, (_, H, W) = self.patch, self.grid
        x = video.reshape(B, C, T, H, p, W, p).permute(0, 2, 3, 5, 1, 4, 6)        # [B, T, H, W, C, p, p]
        return x.reshape(B, T * H * W, C * p * p)                                    # frame-major tokens

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        p, C, (T, H, W) = self.patch, self.channels, self.grid
        x = x.reshape(B, T, H, W, C, p, p).permute(0, 4, 1, 2, 5, 3, 6)
        return x.reshape(B, C, T, H * p, W * p)

    def forward(self, video: torch.Tensor, t: torch.Tensor, attention: Attention) -> torch.Tensor:
        x = self.embed(self.patchify(video))
        x = x + (self.pos_t + self.pos_h + self.pos_w).reshape(1, -1, x.shape[-1])
        c = self.time(timestep_embedding(t, 64))
        for block in self.blocks:
            x = block(x, c, attention, self.grid)
        shift, scale = self.modulation_out(F.silu(c))[:, None].chunk(2, -1)
        return self.unpatchify(self.head(self.norm_out(x) * (1 + scale) + shift))


# --- attention backends ------------------------------------------------------------------------------
def attention_dtype(x: torch.Tensor) -> torch.dtype:
    """Attention runs in bfloat16 on CUDA (the CUDA kernels take bfloat16/float16 only; under autocast q and
    k leave their RMS norms in float32 while v is bfloat16) and in q's dtype elsewhere."""
    return torch.bfloat16 if x.device.type == "cuda" else x.dtype


def dense_attention(q, k, v, grid):
    dtype = attention_dtype(q)
    return F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype))


def probe_operator_backward(device: torch.device, head_dim: int, entropy_grad: bool) -> Tuple[bool, str]:
    """Whether vmonarch.attention runs forward and backward on `device` with this gradient variant: one
    tiny call. Returns (works, why not)."""
    g = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = (torch.randn(1, 2, 4, head_dim, generator=g).to(device, dtype).requires_grad_(True) for _ in range(3))
    options = {"entropy_grad": True} if entropy_grad else {}
    try:
        out = vmonarch.attention(q, k, v, (2, 1, 2), layout="bhsd", **options)
        out.float().square().sum().backward()
    except (NotImplementedError, TypeError, ValueError) as e:   # no backward here / no such option / size
        return False, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    if not all(x.grad is not None and torch.isfinite(x.grad).all() for x in (q, k, v)):
        return False, "the operator's backward gave no or non-finite gradients"
    return True, ""


def operator_forward_for_eval(device: torch.device, head_dim: int) -> bool:
    """Evaluation (no gradients) goes through the operator's CUDA kernels where they apply; on the CPU the
    composition is as exact (the tests hold it to the operator at fp64 round-off) and, at these sizes,
    faster than the operator's per-head loop."""
    return device.type == "cuda" and vmonarch.cuda_available() and head_dim in (64, 128)


class VMonarchAttention:
    """VMonarch attention for training and evaluation: the operator where its backward runs (the probe),
    and for evaluation on CUDA; otherwise vmonarch.torch_impl.attention."""

    def __init__(self, device: torch.device, head_dim: int, entropy_grad: bool, iterations: int = 2):
        self.entropy_grad, self.iterations = entropy_grad, iterations
        self.op_backward, self.why_not = probe_operator_backward(device, head_dim, entropy_grad)
        self.op_forward = operator_forward_for_eval(device, head_dim)

    @property
    def training_path(self) -> str:
        return "vmonarch.attention" if self.op_backward else "vmonarch.torch_impl.attention"

    def __call__(self, q, k, v, grid):
        needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
        dtype = attention_dtype(q)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        if self.op_backward or (self.op_forward and not needs_grad):
            options = {"entropy_grad": True} if (self.entropy_grad and needs_grad) else {}
            return vmonarch.attention(q, k, v, tuple(grid), layout="bhsd", iterations=self.iterations, **options)
        return vmonarch.torch_impl.attention(q, k, v, tuple(grid), layout="bhsd", iterations=self.iterations,
                                             entropy_grad=self.entropy_grad)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
