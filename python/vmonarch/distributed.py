"""Ulysses sequence parallelism for VMonarch attention over torch.distributed.

    import torch.distributed as dist, vmonarch.distributed
    dist.init_process_group("nccl")                      # or "gloo" on CPUs
    out = vmonarch.distributed.ulysses_attention(q, k, v, grid=(T, H, W))   # q, k, v: this rank's tokens

VMonarch couples every frame of a head (spec §2-§3: the R-steps attend within each key frame, the L-steps
across all frames of a position), so a head cannot be split along tokens; it can be split across heads.
Each rank holds a contiguous slice of the frame-major token sequence (spec §1) for all heads; one
all-to-all turns that into all N = T*H*W tokens of about heads/P heads, VMonarch runs locally on the full
grid, and a second all-to-all returns the output to the token slices. Ring attention (keys passed around
in blocks) cannot carry VMonarch: the fit needs every key of a head at once.

Shards (`shards=`, the same on every rank):
- "split" (default): rank r holds N // P + (r < N % P) tokens, i.e. torch.tensor_split(x, P, dim=tokens)
  (diffusers' context parallelism, even or "ulysses_anything"); with P | N every rank holds N / P.
- "padded": every rank holds ceil(N / P) tokens; the sequence is padded at its end to P * ceil(N / P)
  (xDiT / Wan's USP scripts: pad, then torch.chunk). Padding rows are never sent; their output rows are 0
  (lse rows -inf).
- a sequence of P token counts (summing to N): any contiguous split.
Heads are split into contiguous blocks of heads // P + (r < heads % P); with heads % P != 0 the ranks with
one more head set the pace, so the attention runs at heads / (P * ceil(heads / P)) of the even split's
efficiency (12 heads on 8 GPUs: 75%; 40 on 16: 83%); a rank with no heads only relays data.

ulysses_joint_attention (module _ulysses_joint) is the joint text+video form (spec §3c): the video tokens
sharded as here, the text replicated or sharded, vmonarch.joint_attention run locally.
"""
from __future__ import annotations

import math
import operator
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist

__all__ = ["ulysses_attention", "ulysses_joint_attention", "head_split", "token_split", "context_parallel_group", "xfuser_attention",
           "install_xfuser", "uninstall_xfuser", "yunchang_local_attention"]

_FN = "vmonarch.distributed.ulysses_attention"
_LAYOUTS = ("bshd", "bhsd")


# --- how heads and tokens are divided -----------------------------------------------------------------
def head_split(heads: int, world: int) -> List[int]:
    """Heads per rank: contiguous blocks, the first heads % world ranks one more."""
    base, extra = divmod(int(heads), int(world))
    return [base + (r < extra) for r in range(world)]


def token_split(tokens: int, world: int, shards: Union[str, Sequence[int]] = "split", fn: str = _FN,
                argument: str = "shards", total: str = "N = T*H*W") -> Tuple[List[int], List[int]]:
    """(held, valid) token counts per rank for a shard convention (see the module docstring): `held` is the
    length of each rank's tensors, `valid` how many of those rows are real tokens (the rest is padding).
    fn, argument, total: how an error names the caller, the argument and the token count."""
    if isinstance(shards, str):
        if shards == "split":
            held = head_split(tokens, world)
            return held, list(held)
        if shards == "padded":
            size = -(-tokens // world)
            return [size] * world, [max(0, min(size, tokens - r * size)) for r in range(world)]
        raise ValueError(f"{fn}: argument '{argument}' is {shards!r}, expected 'split', 'padded' or a sequence of "
                         f"{world} token counts")
    counts = [int(c) for c in shards]
    if len(counts) != world or any(c < 0 for c in counts) or sum(counts) != tokens:
        raise ValueError(f"{fn}: argument '{argument}' is {list(shards)!r}, expected {world} non-negative token counts "
                         f"(one per rank) summing to {total} = {tokens}")
    return counts, list(counts)


# --- the exchange ---------------------------------------------------------------------------------------
class _AllToAll(torch.autograd.Function):
    """all_to_all_single on flat buffers with per-rank element counts; its gradient is the reverse exchange."""

    @staticmethod
    def forward(ctx, send: torch.Tensor, send_counts: List[int], recv_counts: List[int], group) -> torch.Tensor:
        ctx.counts, ctx.group = (send_counts, recv_counts), group
        recv = send.new_empty(sum(recv_counts))
        dist.all_to_all_single(recv, send, recv_counts, send_counts, group=group)
        return recv

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        send_counts, recv_counts = ctx.counts
        back = grad.new_empty(sum(send_counts))
        dist.all_to_all_single(back, grad.contiguous(), send_counts, recv_counts, group=ctx.group)
        return back, None, None, None


class _SavedAnchor(torch.autograd.Function):
    """The identity, with its input saved for the backward: on a rank without heads it stands where the other
    ranks' local attention stands, whose backward unpacks saved tensors. Non-reentrant activation checkpointing
    reruns the checkpointed forward (its exchanges included) at the first unpack of a saved tensor, so with the
    anchor every rank reruns it at the same point of its backward; without it the ranks' collectives mismatch
    (gloo aborts, NCCL hangs)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clone()   # x is empty here (no heads): the copy costs nothing

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ctx.saved_tensors  # the unpack is the point (see above)
        return grad


class _Pending:
    """An exchange in flight: recv is valid after wait()."""

    def __init__(self, recv: torch.Tensor, work=None, send: Optional[torch.Tensor] = None):
        self.recv, self.work, self.send = recv, work, send   # send stays referenced until the exchange ends

    def wait(self) -> torch.Tensor:
        if self.work is not None:
            self.work.wait()
            self.work = self.send = None
        return self.recv


def _exchange(send: torch.Tensor, send_counts: List[int], recv_counts: List[int], group, differentiable: bool):
    """Starts the exchange: asynchronous when no gradient is needed (so it overlaps later compute), else
    through _AllToAll (synchronous, differentiable)."""
    if differentiable:
        return _Pending(_AllToAll.apply(send, send_counts, recv_counts, group))
    recv = send.new_empty(sum(recv_counts))
    work = dist.all_to_all_single(recv, send, recv_counts, send_counts, group=group, async_op=True)
    return _Pending(recv, work, send)


# --- the operator ---------------------------------------------------------------------------------------
def _default_attention(q, k, v, grid, **options):
    import vmonarch

    return vmonarch.attention(q, k, v, grid=grid, layout="bshd", **options)


def _check(q, k, v, grid, layout, chunks, fn=_FN):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: argument '{name}' is a {type(t).__name__}, expected a torch.Tensor")
        if t.dim() != 4:
            raise ValueError(f"{fn}: argument '{name}' has {t.dim()} dimensions (shape {list(t.shape)}), expected 4")
    if not isinstance(layout, str) or layout not in _LAYOUTS:
        raise ValueError(f"{fn}: argument 'layout' is {layout!r}, expected 'bshd' ([batch, tokens, heads, head_dim]) or "
                         "'bhsd' ([batch, heads, tokens, head_dim])")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype or t.device != q.device:
            raise TypeError(f"{fn}: argument '{name}' is {t.dtype} on {t.device}, expected {q.dtype} on {q.device} like q")
    tok, hd = (1, 2) if layout == "bshd" else (2, 1)
    want = (q.shape[0], q.shape[tok], q.shape[hd])
    for name, t in (("k", k), ("v", v)):
        got = (t.shape[0], t.shape[tok], t.shape[hd])
        if got != want:
            raise ValueError(f"{fn}: argument '{name}' has (batch, tokens, heads) = {got} (shape {list(t.shape)}, layout "
                             f"{layout!r}), expected {want} like q")
    if k.shape[3] != q.shape[3]:
        raise ValueError(f"{fn}: argument 'k' has head_dim {k.shape[3]}, expected {q.shape[3]} like q")
    given = grid
    try:
        grid = tuple(operator.index(g) for g in grid)
    except TypeError:
        grid = None
    if grid is None or len(grid) != 3 or any(isinstance(g, bool) or g <= 0 for g in given):
        raise ValueError(f"{fn}: argument 'grid' is {given!r}, expected (T, H, W), three positive ints")
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
        raise ValueError(f"{fn}: argument 'chunks' is {chunks!r}, expected an int >= 1")
    return grid, tok, hd


def _group_of(group, fn=_FN):
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(f"{fn}: torch.distributed is not initialized; call "
                           "torch.distributed.init_process_group first")
    return dist.group.WORLD if group is None else group


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: Sequence[int], group=None,
                      layout: str = "bshd", shards: Union[str, Sequence[int]] = "split", chunks: int = 1,
                      attention_fn: Optional[Callable[..., torch.Tensor]] = None, **options):
    """VMonarch attention over a video whose tokens are sharded across the ranks of `group`.

    Args:
        q, k, v: this rank's tokens, [B, n_r, heads, d] ("bshd") or [B, heads, n_r, d] ("bhsd"); v may have its
            own head_dim. Every rank passes all heads; n_r follows `shards`.
        grid: (T, H, W) of the whole video (N = T*H*W tokens over all ranks), the same on every rank.
        group: the process group (default: the world). NCCL for CUDA tensors, gloo for CPU tensors.
        shards: "split" | "padded" | P token counts (module docstring).
        chunks: split each rank's heads into this many groups and pipeline them: the exchange of group c + 1
            runs while group c is attended (asynchronous collectives; only when no gradient is needed).
        attention_fn: the local attention, called as attention_fn(q, k, v, grid, **options) on [B, N, h, d]
            ("bshd", possibly strided) views; default vmonarch.attention.
        options: passed to the local attention: iterations, clamp, recompute_first_frame, scale,
            return_lse, ... (vmonarch.attention's keywords).

    Returns the output for this rank's tokens in q's layout and dtype, [B, n_r, heads, dv] or
    [B, heads, n_r, dv] (rows of padding are zero), or (out, lse) with return_lse=True, lse [B, heads, n_r].
    Differentiable through the exchanges (gradients flow where the local attention has a backward).
    Every rank must call it with the same grid, shards, chunks and options.
    """
    grid, tok, hd = _check(q, k, v, grid, layout, chunks)
    group = _group_of(group)
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    N = grid[0] * grid[1] * grid[2]
    held, valid = token_split(N, world, shards)
    if q.shape[tok] != held[rank]:
        convention = shards if isinstance(shards, str) else "explicit counts"
        raise ValueError(f"{_FN}: argument 'q' has {q.shape[tok]} tokens on rank {rank} of {world}, expected {held[rank]} "
                         f"(shards={convention!r} of N = T*H*W = {N} for grid {grid}: {held})")
    fn = attention_fn if attention_fn is not None else _default_attention
    if world == 1:
        if attention_fn is None:
            import vmonarch

            return vmonarch.attention(q, k, v, grid=grid, layout=layout, **options)
        bshd = (lambda x: x) if layout == "bshd" else (lambda x: x.transpose(1, 2))
        res = fn(bshd(q), bshd(k), bshd(v), grid, **options)
        if options.get("return_lse", False):
            return bshd(res[0]), res[1]
        return bshd(res)
    return _ulysses(q, k, v, grid, group, layout, held, valid, chunks, fn, options)


# Outside any torch.compile graph: dynamo cannot trace the asynchronous collectives, and a compiled graph of the
# differentiable exchange (_AllToAll) gave q, k, v zero gradients (tests/python/test_distributed_cpu.py,
# test_compiled_and_checkpointed_match_eager). Eager, the exchanges and the local attention keep their autograd.
@torch.compiler.disable
def _ulysses(q, k, v, grid, group, layout, held, valid, chunks, fn, options):
    """The exchange proper (also run at world size 1 by the GPU tests, to check the packed views)."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    tok = 1 if layout == "bshd" else 2
    B, heads, d, dv = q.shape[0], q.shape[3 - tok], q.shape[3], v.shape[3]
    N = sum(valid)
    return_lse = bool(options.get("return_lse", False))
    differentiable = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))

    # heads of rank s, chunk c: global offset and count
    per_rank = head_split(heads, world)
    starts = [sum(per_rank[:s]) for s in range(world)]
    plan = []                                   # plan[c][s] = (first head, count)
    for c in range(chunks):
        row = []
        for s in range(world):
            counts = head_split(per_rank[s], chunks)
            row.append((starts[s] + sum(counts[:c]), counts[c]))
        plan.append(row)

    def tokens_first(x, first, count):
        """[v_me, B, count, dx] view of this rank's valid tokens for heads [first, first + count)."""
        if layout == "bshd":
            return x[:, :valid[rank], first:first + count].permute(1, 0, 2, 3)
        return x[:, first:first + count, :valid[rank]].permute(2, 0, 1, 3)

    # Even split (P | heads, C | heads/P): chunk c of rank s is heads s*h0 + c*hc + [0, hc), a regular
    # stride, so one copy per tensor packs (or unpacks) every destination at once.
    h0 = heads // world
    even = heads % world == 0 and h0 % chunks == 0
    hc = h0 // chunks if even else 0

    def all_destinations(x, c):
        """[P, v_me, B, hc, dx] view of this rank's valid tokens, chunk c's heads of every rank (even split)."""
        if layout == "bshd":
            return x[:, :valid[rank]].unflatten(2, (world, h0))[:, :, :, c * hc:(c + 1) * hc].permute(2, 1, 0, 3, 4)
        return x[:, :, :valid[rank]].unflatten(1, (world, h0))[:, :, c * hc:(c + 1) * hc].permute(1, 3, 0, 2, 4)

    def pack_inputs(c):
        """One flat buffer per chunk: for each destination s, [v_me, B, h*(2d + dv)] rows of q | k | v."""
        widths = [h * (2 * d + dv) for _, h in plan[c]]
        send_counts = [valid[rank] * B * w for w in widths]
        buf = q.new_empty(sum(send_counts))
        mine = widths[rank]
        recv_counts = [valid[r] * B * mine for r in range(world)]
        if even:
            rows = buf.view(world, valid[rank], B, widths[0])
            rows[..., :hc * d].unflatten(-1, (hc, d)).copy_(all_destinations(q, c))
            rows[..., hc * d:2 * hc * d].unflatten(-1, (hc, d)).copy_(all_destinations(k, c))
            rows[..., 2 * hc * d:].unflatten(-1, (hc, dv)).copy_(all_destinations(v, c))
            return _exchange(buf, send_counts, recv_counts, group, differentiable)
        offset = 0
        for s, (first, h) in enumerate(plan[c]):
            rows = buf[offset:offset + send_counts[s]].view(valid[rank], B, widths[s])
            rows[:, :, :h * d].unflatten(-1, (h, d)).copy_(tokens_first(q, first, h))
            rows[:, :, h * d:2 * h * d].unflatten(-1, (h, d)).copy_(tokens_first(k, first, h))
            rows[:, :, 2 * h * d:].unflatten(-1, (h, dv)).copy_(tokens_first(v, first, h))
            offset += send_counts[s]
        return _exchange(buf, send_counts, recv_counts, group, differentiable)

    def attend(c, recv):
        """Unpacks [N, B, h(2d + dv)] into strided [B, N, h, d] views and runs the local attention."""
        h = plan[c][rank][1]
        if h == 0:
            # Nothing to attend. The empty results are views of recv, so that under autograd this rank's graph
            # holds the same exchanges as every other rank's (each backward exchange needs all ranks), with the
            # operator's dtypes (every rank exchanges the same type).
            lse_dtype = torch.float64 if (q.device.type == "cpu" and q.dtype == torch.float64) else torch.float32
            if differentiable:
                recv = _SavedAnchor.apply(recv)
            return recv.view(B, N, 0, dv), recv.view(B, 0, N).to(lse_dtype)
        rows = recv.view(N, B, h * (2 * d + dv))
        ql = rows[:, :, :h * d].unflatten(-1, (h, d)).permute(1, 0, 2, 3)
        kl = rows[:, :, h * d:2 * h * d].unflatten(-1, (h, d)).permute(1, 0, 2, 3)
        vl = rows[:, :, 2 * h * d:].unflatten(-1, (h, dv)).permute(1, 0, 2, 3)
        res = fn(ql, kl, vl, grid, **options)
        return (res[0], res[1]) if return_lse else (res, None)

    def send_outputs(c, out, lse):
        """Returns every rank its tokens: [v_r, B, h, dv] blocks (and [v_r, B, h] of lse)."""
        h = plan[c][rank][1]
        flat = out.permute(1, 0, 2, 3).reshape(-1)       # a view when B == 1 and out is contiguous
        send_counts = [valid[r] * B * h * dv for r in range(world)]
        recv_counts = [valid[rank] * B * hs * dv for _, hs in plan[c]]
        pending = [_exchange(flat.contiguous(), send_counts, recv_counts, group, differentiable)]
        if return_lse:
            flat_lse = lse.permute(2, 0, 1).reshape(-1).contiguous()
            pending.append(_exchange(flat_lse, [valid[r] * B * h for r in range(world)],
                                     [valid[rank] * B * hs for _, hs in plan[c]], group, differentiable))
        return pending

    # Pipeline: all input exchanges are queued first (the collective stream runs them back to back), each
    # chunk's attention starts when its inputs arrive, and its output exchange is queued behind it.
    inputs = [pack_inputs(c) for c in range(chunks)]
    outputs = []
    for c in range(chunks):
        out, lse = attend(c, inputs[c].wait())
        inputs[c] = None
        outputs.append(send_outputs(c, out, lse))

    n_me, v_me = held[rank], valid[rank]
    shape = (B, n_me, heads, dv) if layout == "bshd" else (B, heads, n_me, dv)
    result = q.new_zeros(shape) if n_me > v_me else q.new_empty(shape)
    result_lse = None
    for c in range(chunks):
        recv = outputs[c][0].wait()
        if even:   # blocks [P, v_me, B, hc, dv] into chunk c's heads of every rank, one copy
            block = recv.view(world, v_me, B, hc, dv)
            if layout == "bshd":
                result[:, :v_me].unflatten(2, (world, h0))[:, :, :, c * hc:(c + 1) * hc].copy_(
                    block.permute(2, 1, 0, 3, 4))
            else:
                result[:, :, :v_me].unflatten(1, (world, h0))[:, :, c * hc:(c + 1) * hc].copy_(
                    block.permute(2, 0, 3, 1, 4))
        offset = 0
        for first, h in (() if even else plan[c]):
            size = v_me * B * h * dv
            block = recv[offset:offset + size].view(v_me, B, h, dv)
            if layout == "bshd":
                result[:, :v_me, first:first + h].copy_(block.permute(1, 0, 2, 3))
            else:
                result[:, first:first + h, :v_me].copy_(block.permute(1, 2, 0, 3))
            offset += size
        if return_lse:
            recv_lse = outputs[c][1].wait()
            if result_lse is None:
                result_lse = recv_lse.new_full((B, heads, n_me), float("-inf"))
            offset = 0
            for first, h in plan[c]:
                size = v_me * B * h
                result_lse[:, first:first + h, :v_me].copy_(recv_lse[offset:offset + size].view(v_me, B, h)
                                                           .permute(1, 2, 0))
                offset += size
    return (result, result_lse) if return_lse else result


# --- the joint text+video form (spec §3c), in its own module ---------------------------------------------
from ._ulysses_joint import ulysses_joint_attention  # noqa: E402  (it builds on the exchange above)


# --- diffusers ------------------------------------------------------------------------------------------
def context_parallel_group(parallel_config, caller: str = "vmonarch.wan"):
    """The Ulysses process group of diffusers' ParallelConfig / ContextParallelConfig, or None without context
    parallelism. Raises ValueError for ring_degree > 1, which VMonarch cannot run under."""
    if parallel_config is None:
        return None
    cp = getattr(parallel_config, "context_parallel_config", parallel_config)
    if cp is None or not hasattr(cp, "ulysses_degree"):
        return None
    ring = cp.ring_degree or 1
    if ring > 1:
        raise ValueError(
            f"{caller}: ContextParallelConfig has ring_degree {ring}, expected 1: ring attention passes the keys "
            "around in blocks, and VMonarch's fit needs every key of a head at once. Use "
            f"ContextParallelConfig(ulysses_degree={ring * (cp.ulysses_degree or 1)}) (heads are split instead)")
    if (cp.ulysses_degree or 1) <= 1:
        return None
    mesh = getattr(cp, "_ulysses_mesh", None)
    if mesh is None:
        raise RuntimeError(f"{caller}: the ContextParallelConfig has not been set up; call "
                           "model.enable_parallelism(config=...) first")
    return mesh.get_group()


# --- xDiT (xfuser) --------------------------------------------------------------------------------------
def xfuser_attention(query, key, value, dropout_p=0.0, is_causal=False, attention_kwargs=None, fallback=None,
                     **options):
    """An xfuser attention backend function: xfuser's USP has already exchanged the tokens, so q, k, v are
    [B, h, N_pad, d] (all tokens, this rank's heads); attention_kwargs["thw"] is the grid (xfuser's Wan
    transformer sets it). Self-attention over the grid runs VMonarch on the first T*H*W tokens (trailing
    padding gets zero rows); anything else (cross-attention, no thw) goes to `fallback`. Returns (out, None)."""
    thw = (attention_kwargs or {}).get("thw")
    N = None if thw is None else int(math.prod(thw))
    # self-attention over the grid: N keys (trailing padding trimmed) or as many keys as queries (padded)
    self_attention = N is not None and query.shape[2] >= N and key.shape[2] in (N, query.shape[2])
    if not self_attention:
        if fallback is None:
            raise ValueError(f"vmonarch.distributed.xfuser_attention: attention over {key.shape[2]} keys with thw "
                             f"{thw} is not VMonarch self-attention and no fallback backend was given")
        return fallback(query, key, value, dropout_p=dropout_p, is_causal=is_causal,
                        attention_kwargs=attention_kwargs)
    if is_causal or dropout_p:
        raise ValueError(f"vmonarch.distributed.xfuser_attention: is_causal={is_causal}, dropout_p={dropout_p}; "
                         "expected non-causal attention without dropout")
    _xfuser_check_no_ring()
    import vmonarch

    out = vmonarch.attention(query[:, :, :N], key[:, :, :N], value[:, :, :N], grid=tuple(int(x) for x in thw),
                             layout="bhsd", **options)
    if query.shape[2] > N:
        out = torch.cat([out, out.new_zeros(*out.shape[:2], query.shape[2] - N, out.shape[3])], dim=2)
    return out, None


def _xfuser_check_no_ring():
    from xfuser.core.distributed import get_ring_parallel_world_size

    ring = get_ring_parallel_world_size()
    if ring > 1:
        raise ValueError(f"vmonarch.distributed.xfuser_attention: ring_degree is {ring}, expected 1: ring attention "
                         "passes the keys around in blocks, and VMonarch's fit needs every key of a head at once; "
                         "run xDiT with --ulysses_degree only")


def install_xfuser(backend=None, **options):
    """Routes xfuser's attention backends through VMonarch where a call is self-attention over the grid:
    `backend` (an xfuser AttentionBackendType) or, by default, every registered backend (xfuser picks one per
    machine: FLASH_3, CUDNN, SDPA, ...). Other calls keep each backend's original function. options go to
    vmonarch.attention. Installing twice wraps the originals once."""
    from xfuser.core.distributed.attention_backend import ATTENTION_FUNCTION_REGISTRY

    for key in ([backend] if backend is not None else list(ATTENTION_FUNCTION_REGISTRY)):
        current = ATTENTION_FUNCTION_REGISTRY[key]
        base = getattr(current, "_vmonarch_original", current)

        def vmonarch_backend(query, key_, value, dropout_p=0.0, is_causal=False, attention_kwargs=None, _base=base):
            return xfuser_attention(query, key_, value, dropout_p=dropout_p, is_causal=is_causal,
                                    attention_kwargs=attention_kwargs, fallback=_base, **options)

        vmonarch_backend._vmonarch_original = base
        ATTENTION_FUNCTION_REGISTRY[key] = vmonarch_backend


def uninstall_xfuser() -> None:
    """Puts back every original function install_xfuser replaced."""
    from xfuser.core.distributed.attention_backend import ATTENTION_FUNCTION_REGISTRY

    for key, fn in list(ATTENTION_FUNCTION_REGISTRY.items()):
        original = getattr(fn, "_vmonarch_original", None)
        if original is not None:
            ATTENTION_FUNCTION_REGISTRY[key] = original


# --- yunchang -------------------------------------------------------------------------------------------
def yunchang_local_attention(grid: Sequence[int], **options):
    """A local attention for yunchang.UlyssesAttention (set `ulysses.attn_fn = yunchang_local_attention(grid)`):
    yunchang exchanges the tokens itself (heads and tokens divisible by P) and calls this with flash-attn's
    signature on [B, N, h, d]; it runs VMonarch over `grid` (a tuple, or a callable returning the current
    grid). Causal, windowed, dropout, softcap and ALiBi calls raise ValueError; so does a key count other
    than T*H*W (e.g. yunchang's ring attention, which VMonarch cannot run under)."""
    fn = "vmonarch.distributed.yunchang_local_attention"

    def local(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
              alibi_slopes=None, deterministic=False, return_attn_probs=False, *args, **kwargs):
        g = tuple(grid() if callable(grid) else grid)
        unsupported = dict(dropout_p=dropout_p, causal=causal, softcap=softcap, return_attn_probs=return_attn_probs)
        for name, value in unsupported.items():
            if value:
                raise ValueError(f"{fn}: {name} is {value!r}, expected it off (VMonarch is non-causal, no dropout)")
        if tuple(window_size) != (-1, -1) or alibi_slopes is not None:
            raise ValueError(f"{fn}: window_size {tuple(window_size)} / alibi_slopes given, expected neither")
        N = g[0] * g[1] * g[2]
        if k.shape[1] != N or q.shape[1] != N:
            raise ValueError(f"{fn}: q has {q.shape[1]} and k {k.shape[1]} tokens, expected N = T*H*W = {N} for "
                             f"grid {g} (ring attention cannot carry VMonarch: every key of a head is needed)")
        import vmonarch

        return vmonarch.attention(q, k, v, grid=g, layout="bshd", scale=softmax_scale, **options)

    return local
