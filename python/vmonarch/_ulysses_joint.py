"""Ulysses sequence parallelism for joint text+video (MMDiT) attention (spec §3c); see
vmonarch.distributed.ulysses_joint_attention.

Each rank holds a slice of the frame-major video tokens (as in ulysses_attention) and the text tokens:
either all L of them, the same on every rank (text_shards=None, "replicated": how xDiT and the
context-parallel plans of vmonarch's HunyuanVideo / HunyuanVideo 1.5 / CogVideoX / Mochi integrations
treat the encoder states) or a slice of them (text_shards="split" | "padded" | counts: a plan that
shards the encoder states too, as diffusers' Flux plan does). One all-to-all gives every rank all N
video tokens and all L text tokens of its heads (replicated text needs no exchange: each rank takes its
heads' columns), vmonarch.joint_attention runs locally on the full grid, and a second all-to-all gives
each rank the output rows it holds: its video rows and its text rows (replicated text: all L rows, of
every head).

Gradients (when the local attention has a backward): sharded text is differentiated exactly through
the exchanges, like the video. Replicated text follows the replicated-tensor convention (diffusers'
gather of the model output uses it too): every rank is taken to hold the same text-output gradient, the
text-input gradient comes back whole (all heads) on every rank, and a rank's video gradients equal the
single-process ones.
"""
from __future__ import annotations

import operator
from typing import Callable, List, Optional, Sequence, Union

import torch
import torch.distributed as dist

from .distributed import _SavedAnchor, _check, _exchange, _group_of, head_split, token_split

_FN = "vmonarch.distributed.ulysses_joint_attention"


class _TextHeads(torch.autograd.Function):
    """Forward: this rank's heads of replicated text rows x [L, B, heads, dx]. Backward: every rank's head
    block of the gradient gathered (one all-to-all that sends this rank's block to every rank), so the
    replicated input gets its whole gradient on every rank."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, per_rank: List[int], rank: int, group) -> torch.Tensor:
        first = sum(per_rank[:rank])
        ctx.per_rank, ctx.rank, ctx.group, ctx.shape = per_rank, rank, group, x.shape
        return x[:, :, first:first + per_rank[rank]].contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        L, B, _, dx = ctx.shape
        mine = grad.contiguous().reshape(-1)
        world = len(ctx.per_rank)
        send = mine.repeat(world)
        recv_counts = [L * B * h * dx for h in ctx.per_rank]
        recv = grad.new_empty(sum(recv_counts))
        dist.all_to_all_single(recv, send, recv_counts, [mine.numel()] * world, group=ctx.group)
        blocks = [b.view(L, B, h, dx) for b, h in zip(recv.split(recv_counts), ctx.per_rank)]
        return torch.cat(blocks, dim=2), None, None, None


class _AverageGrad(torch.autograd.Function):
    """Identity forward; the backward divides by the world size. Applied to the text output that is sent
    to every rank: the P gradients that come back are copies of one gradient, so their mean is it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, world: int) -> torch.Tensor:
        ctx.world = world
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad / ctx.world, None


def _default_joint_attention(q, k, v, grid, text_len, **options):
    import vmonarch

    return vmonarch.joint_attention(q, k, v, grid, text_len, **options)


def _text_len(text_len) -> int:
    if isinstance(text_len, bool):
        raise TypeError(f"{_FN}: argument 'text_len' is {text_len!r}, expected an int >= 0")
    try:
        value = operator.index(text_len)
    except TypeError:
        raise TypeError(f"{_FN}: argument 'text_len' is a {type(text_len).__name__}, expected an int >= 0") from None
    if value < 0:
        raise ValueError(f"{_FN}: argument 'text_len' is {value}, expected an int >= 0")
    return value


def ulysses_joint_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: Sequence[int], text_len: int,
                            text_first: bool = False, text_lens=None, group=None, layout: str = "bshd",
                            shards: Union[str, Sequence[int]] = "split",
                            text_shards: Optional[Union[str, Sequence[int]]] = None,
                            attention_fn: Optional[Callable[..., torch.Tensor]] = None, **options):
    """vmonarch.joint_attention over a joint sequence whose tokens are sharded across the ranks of `group`.

    Args:
        q, k, v: this rank's tokens, [B, n_r + l_r, heads, d] ("bshd") or [B, heads, n_r + l_r, d] ("bhsd"):
            its n_r video tokens (the `shards` convention of ulysses_attention over N = T*H*W) and its l_r
            text tokens, the text first (text_first=True, CogVideoX) or last (HunyuanVideo, Mochi). Every
            rank passes all heads; v may have its own head_dim.
        grid: (T, H, W) of the whole video, the same on every rank.
        text_len: L, the text tokens of the whole sequence.
        text_lens: valid text prefix length per batch element over the whole text (list or int tensor [B]);
            options may carry text_mask instead (bool [B, L], a prefix), as for vmonarch.joint_attention.
        text_shards: None (default): the text is replicated, l_r = L on every rank, and every rank gets the
            whole text output; "split" | "padded" | P counts summing to L: the text is sharded like the
            video (padding rows: output 0, lse -inf).
        attention_fn: the local attention, called as attention_fn(q, k, v, grid, text_len, text_first=,
            text_lens=, layout="bshd", **options) on [B, N + L, h, d] views (possibly strided) in the
            sequence's order; default vmonarch.joint_attention.
        options: iterations, clamp, recompute_first_frame, scale, return_lse, sink_frames, window_radius,
            text_mask (vmonarch.joint_attention's keywords).

    Returns this rank's output rows in q's layout and arrangement, [B, n_r + l_r, heads, dv] (or the bhsd
    form), or (out, lse) with return_lse=True, lse [B, heads, n_r + l_r]. Every rank must call it with the
    same grid, text_len, text_first, text_lens, shards, text_shards and options.
    """
    grid, tok, _ = _check(q, k, v, grid, layout, 1, fn=_FN)
    L = _text_len(text_len)
    if not isinstance(text_first, bool):
        raise TypeError(f"{_FN}: argument 'text_first' is {text_first!r}, expected a bool")
    group = _group_of(group, fn=_FN)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    N = grid[0] * grid[1] * grid[2]
    held, valid = token_split(N, world, shards, fn=_FN)
    if text_shards is None:
        t_held, t_valid = [L] * world, [L] * world
    else:
        t_held, t_valid = token_split(L, world, text_shards, fn=_FN, argument="text_shards", total="L = text_len")
    if q.shape[tok] != held[rank] + t_held[rank]:
        raise ValueError(f"{_FN}: argument 'q' has {q.shape[tok]} tokens on rank {rank} of {world}, expected "
                         f"{held[rank] + t_held[rank]} = {held[rank]} video (shards={_name(shards)} of N = T*H*W = {N} "
                         f"for grid {grid}) + {t_held[rank]} text (text_shards={_name(text_shards)} of L = {L})")
    fn = attention_fn if attention_fn is not None else _default_joint_attention
    call = dict(text_first=text_first, text_lens=text_lens, **options)
    if world == 1:
        if layout == "bshd" or attention_fn is None:
            return fn(q, k, v, grid, L, layout=layout, **call)
        res = fn(*(x.transpose(1, 2) for x in (q, k, v)), grid, L, layout="bshd", **call)
        return (res[0].transpose(1, 2), res[1]) if options.get("return_lse", False) else res.transpose(1, 2)
    return _ulysses_joint(q, k, v, grid, L, group, layout, held, valid, t_held, t_valid, text_shards is None, fn,
                          call)


def _name(shards) -> str:
    return repr(shards) if shards is None or isinstance(shards, str) else "explicit counts"


@torch.compiler.disable  # as vmonarch.distributed._ulysses: outside compiled graphs
def _ulysses_joint(q, k, v, grid, L, group, layout, held, valid, t_held, t_valid, replicated: bool, fn, call):
    """The exchanges (also run at world size 1 by the GPU tests, to check the packing)."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    text_first = call["text_first"]
    B, heads, d, dv = q.shape[0], q.shape[2 if layout == "bshd" else 1], q.shape[3], v.shape[3]
    N = sum(valid)
    return_lse = bool(call.get("return_lse", False))
    differentiable = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    per_rank = head_split(heads, world)
    starts = [sum(per_rank[:s]) for s in range(world)]
    h_me = per_rank[rank]
    # where this rank's video and text rows lie in its tensors
    video_at, text_at = (t_held[rank], 0) if text_first else (0, held[rank])

    def rows(x, start, count, first=0, h=heads):
        """[count, B, h, dx] view (tokens first) of x's rows [start, start + count), heads [first, first + h)."""
        if layout == "bshd":
            return x[:, start:start + count, first:first + h].permute(1, 0, 2, 3)
        return x[:, first:first + h, start:start + count].permute(2, 0, 1, 3)

    # --- to heads: destination s gets this rank's valid video rows (and sharded text rows) of its heads
    sent_text = [0 if replicated else t_valid[r] for r in range(world)]
    width = [h * (2 * d + dv) for h in per_rank]
    n_send = valid[rank] + sent_text[rank]
    send_counts = [n_send * B * w for w in width]
    recv_counts = [(valid[r] + sent_text[r]) * B * width[rank] for r in range(world)]
    buf = q.new_empty(sum(send_counts))
    offset = 0
    for s, h in enumerate(per_rank):
        if h:
            block = buf[offset:offset + send_counts[s]].view(n_send, B, width[s])
            for x, dx, at in ((q, d, 0), (k, d, h * d), (v, dv, 2 * h * d)):
                dst = block[:, :, at:at + h * dx].unflatten(-1, (h, dx))
                dst[:valid[rank]].copy_(rows(x, video_at, valid[rank], starts[s], h))
                if sent_text[rank]:
                    dst[valid[rank]:].copy_(rows(x, text_at, sent_text[rank], starts[s], h))
        offset += send_counts[s]
    recv = _exchange(buf, send_counts, recv_counts, group, differentiable).wait()

    # --- the joint sequence of this rank's heads, [N + L, B, h_me (2d + dv)] in the sequence's order
    blocks = [b.view(valid[r] + sent_text[r], B, width[rank]) for r, b in enumerate(recv.split(recv_counts))]
    video = torch.cat([b[:valid[r]] for r, b in enumerate(blocks)])
    if replicated:
        pick = (lambda x: _TextHeads.apply(x, per_rank, rank, group)) if differentiable else \
            (lambda x: x[:, :, starts[rank]:starts[rank] + h_me])
        text = torch.cat([pick(rows(x, text_at, L)).flatten(2) for x in (q, k, v)], dim=2)
    else:
        text = torch.cat([b[valid[r]:] for r, b in enumerate(blocks)])
    seq = torch.cat([text, video] if text_first else [video, text])

    if h_me:
        ql, kl, vl = (seq[:, :, a:b].unflatten(-1, (h_me, -1)).permute(1, 0, 2, 3)
                      for a, b in ((0, h_me * d), (h_me * d, 2 * h_me * d), (2 * h_me * d, seq.shape[2])))
        res = fn(ql, kl, vl, grid, L, layout="bshd", **call)
        out, lse = (res[0], res[1]) if return_lse else (res, None)
    else:
        # Nothing to attend. The empty results are views of seq, so that under autograd this rank's graph
        # holds the same collectives as every other rank's, with the operator's dtypes.
        lse_dtype = torch.float64 if (q.device.type == "cpu" and q.dtype == torch.float64) else torch.float32
        if differentiable:  # where the local attention's backward unpacks its saved tensors on the other ranks
            seq = _SavedAnchor.apply(seq)
        out, lse = seq.reshape(B, N + L, 0, dv), seq.reshape(B, 0, N + L).to(lse_dtype)

    # --- back to tokens: rank s gets its valid video rows and its text rows (replicated: all L) of these heads
    video_from, text_from = (L, 0) if text_first else (0, N)
    back_text = [L if replicated else t_valid[s] for s in range(world)]
    text_starts = [0 if replicated else sum(t_valid[:s]) for s in range(world)]

    def pieces(x, per_token):
        """Rows for every destination, flat, tokens first: x [B, N + L, h_me(, dv)] -> one buffer."""
        x = x.transpose(0, 1)                                  # [N + L, B, h_me(, dv)]
        text_part = x[text_from:text_from + L]
        if replicated and differentiable:
            text_part = _AverageGrad.apply(text_part, world)
        parts = []
        for s in range(world):
            first = video_from + sum(valid[:s])
            parts.append(x[first:first + valid[s]].reshape(-1))
            parts.append(text_part[text_starts[s]:text_starts[s] + back_text[s]].reshape(-1))
        counts = [(valid[s] + back_text[s]) * B * h_me * per_token for s in range(world)]
        back = [(valid[rank] + back_text[rank]) * B * h * per_token for h in per_rank]
        return _exchange(torch.cat(parts), counts, back, group, differentiable)

    pending = [pieces(out, dv)] + ([pieces(lse.transpose(1, 2), 1)] if return_lse else [])

    def assemble(recv, per_token, fill):
        """[B, held + t_held, heads(, dv)] in this rank's arrangement, padding rows = fill."""
        n = valid[rank] + back_text[rank]
        shape = (n, B) + ((per_token,) if per_token > 1 else ())
        got = [b.view(shape[:2] + (h,) + shape[2:]) for b, h in zip(recv.split([n * B * h * per_token
                                                                               for h in per_rank]), per_rank)]
        whole = torch.cat(got, dim=2)                          # [n, B, heads(, dv)]
        pad = lambda rows_, count: rows_ if count == 0 else torch.cat(
            [rows_, rows_.new_full((count,) + rows_.shape[1:], fill)])
        vid = pad(whole[:valid[rank]], held[rank] - valid[rank])
        txt = pad(whole[valid[rank]:], t_held[rank] - back_text[rank])
        seq_rows = torch.cat([txt, vid] if text_first else [vid, txt])
        if per_token == 1:                                     # lse: [B, heads, n]
            return seq_rows.permute(1, 2, 0)
        return seq_rows.permute(1, 0, 2, 3) if layout == "bshd" else seq_rows.permute(1, 2, 0, 3)

    result = assemble(pending[0].wait(), dv, 0.0).contiguous()
    if return_lse:
        return result, assemble(pending[1].wait(), 1, float("-inf")).contiguous()
    return result
