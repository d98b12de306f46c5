"""Jobs run on every rank by distributed_helpers.run_job: each compares what the rank computes under
sequence parallelism with the single-process result for its own tokens and returns the numbers."""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist

import vmonarch
import vmonarch.distributed as vd
from conftest import load_reference, make_qkv, rel_l2
# run_job looks jobs up in this module
from distributed_joint_jobs import joint_grad_cases, joint_model_cases, joint_op_cases  # noqa: F401

# diffusers 0.42.1's context-parallel hook logs through Logger.warning_once, a method that only transformers
# adds to logging.Logger when it is imported; these tiny models import no transformers (real pipelines do).
if not hasattr(logging.Logger, "warning_once"):
    logging.Logger.warning_once = logging.Logger.warning


def _explicit_shards(N: int, world: int):
    """An uneven contiguous split with an empty shard where world > 2."""
    if world == 2:
        return [7, N - 7]
    return [10, 0] + [0] * (world - 4) + [N - 17, 7]


# grid, batch, heads, d, dv, layout, shards, chunks, kind, options
OP_CASES = [
    ((3, 1, 7), 2, 3, 8, 8, "bshd", "split", 1, "random", {}),                      # odd T, prime HW
    ((5, 1, 7), 1, 5, 16, 8, "bhsd", "padded", 2, "video", dict(iterations=3, clamp=0.3)),   # 35 tokens
    ((1, 3, 5), 1, 2, 8, 8, "bshd", "split", 1, "random", dict(recompute_first_frame=False, scale=0.7)),
    ((4, 3, 3), 2, 6, 8, 8, "bhsd", "explicit", 3, "random", dict(return_lse=True)),
    ((3, 2, 5), 1, 4, 8, 8, "bshd", "padded", 2, "video", dict(return_lse=True, iterations=1)),
    ((7, 1, 11), 1, 7, 8, 8, "bshd", "split", 4, "video", {}),                       # 77 tokens, 7 heads
]


def _local(x, layout, start, stop):
    return x[:, start:stop] if layout == "bshd" else x[:, :, start:stop]


def _shard(x, layout, rank, held, valid, g):
    """This rank's rows of x, padding filled with noise (it must not leak into any output)."""
    start = sum(valid[:rank])
    mine = _local(x, layout, start, start + valid[rank])
    pad = held[rank] - valid[rank]
    if pad:
        shape = list(mine.shape)
        shape[1 if layout == "bshd" else 2] = pad
        noise = torch.randn(*shape, generator=g, dtype=x.dtype)
        mine = torch.cat([mine, noise], dim=1 if layout == "bshd" else 2)
    return mine.contiguous()


def op_cases(rank: int, world: int):
    results = []
    for index, (grid, B, heads, d, dv, layout, shards, chunks, kind, options) in enumerate(OP_CASES):
        N = grid[0] * grid[1] * grid[2]
        q, k, v = make_qkv(kind, B, heads, grid, d, layout, dv=dv, seed=index)
        want = vmonarch.attention(q, k, v, grid=grid, layout=layout, **options)
        want, want_lse = want if options.get("return_lse") else (want, None)
        if shards == "explicit":
            shards = _explicit_shards(N, world)
        held, valid = vd.token_split(N, world, shards)
        g = torch.Generator().manual_seed(100 + rank)
        ql, kl, vl = (_shard(x, layout, rank, held, valid, g) for x in (q, k, v))
        got = vd.ulysses_attention(ql, kl, vl, grid, layout=layout, shards=shards, chunks=chunks, **options)
        got, got_lse = got if options.get("return_lse") else (got, None)
        start = sum(valid[:rank])
        row = dict(case=index, shape=tuple(got.shape), held=held[rank], dtype=got.dtype)
        row["err"] = rel_l2(_local(got, layout, 0, valid[rank]), _local(want, layout, start, start + valid[rank])) \
            if valid[rank] else 0.0
        row["pad_zero"] = bool((_local(got, layout, valid[rank], held[rank]) == 0).all())
        if want_lse is not None:
            row["lse_err"] = rel_l2(got_lse[:, :, :valid[rank]], want_lse[:, :, start:start + valid[rank]]) \
                if valid[rank] else 0.0
            row["lse_pad_inf"] = bool((got_lse[:, :, valid[rank]:] == float("-inf")).all())
        results.append(row)
    # every rank passes one token too few: each raises before any collective (no hang)
    q, k, v = make_qkv("random", 1, 2, (3, 1, 7), 8, "bshd")
    held, _ = vd.token_split(21, world)
    try:
        vd.ulysses_attention(*(x[:, :held[rank] - 1] for x in (q, k, v)), (3, 1, 7))
        results.append(dict(error=None))
    except ValueError as e:
        results.append(dict(error=str(e)))
    return results


def _reference_fn(ref):
    """The fp64 executable spec as a differentiable local attention on "bshd" views."""

    def fn(q, k, v, grid, iterations=2, clamp=0.1, recompute_first_frame=True):
        out = ref.vmonarch_reference(*(x.transpose(1, 2) for x in (q, k, v)), frames=grid[0], t=iterations,
                                     clamp=clamp, recompute_first_frame=recompute_first_frame)
        return out.transpose(1, 2)

    return fn


# grid, batch, heads, d, layout, shards, chunks (9 tokens padded: at P = 4 the last rank holds only padding)
GRAD_CASES = [((3, 1, 5), 2, 3, 8, "bshd", "split", 1), ((3, 1, 3), 1, 5, 8, "bhsd", "padded", 2)]


def grad_cases(rank: int, world: int):
    ref = load_reference()
    fn = _reference_fn(ref)
    results = []
    for index, (grid, B, heads, d, layout, shards, chunks) in enumerate(GRAD_CASES):
        N = grid[0] * grid[1] * grid[2]
        q, k, v = make_qkv("video", B, heads, grid, d, layout, seed=10 + index)
        weight = torch.randn(q.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        full = [x.clone().requires_grad_() for x in (q, k, v)]
        tok = (lambda x: x) if layout == "bshd" else (lambda x: x.transpose(1, 2))
        out = tok(fn(*(tok(x) for x in full), grid))
        (out * weight).sum().backward()
        held, valid = vd.token_split(N, world, shards)
        g = torch.Generator().manual_seed(100 + rank)
        local = [_shard(x, layout, rank, held, valid, g).requires_grad_() for x in (q, k, v)]
        start = sum(valid[:rank])
        w_local = _shard(weight, layout, rank, held, valid, g)
        got = vd.ulysses_attention(*local, grid, layout=layout, shards=shards, chunks=chunks, attention_fn=fn)
        (got * w_local).sum().backward()
        errs = []
        for x_full, x_local in zip(full, local):
            want = _local(x_full.grad, layout, start, start + valid[rank])
            errs.append(rel_l2(_local(x_local.grad, layout, 0, valid[rank]), want) if valid[rank] else 0.0)
        pad_grad_zero = all(bool((_local(x.grad, layout, valid[rank], held[rank]) == 0).all()) for x in local)
        results.append(dict(case=index, grad_errs=errs, pad_grad_zero=pad_grad_zero,
                            out_err=rel_l2(_local(got, layout, 0, valid[rank]),
                                           _local(out, layout, start, start + valid[rank]))))
    return results


def wan_cases(rank: int, world: int):
    """A tiny random-weight Wan model under ContextParallelConfig against the same model in one process."""
    import vmonarch.wan
    from diffusers import ContextParallelConfig
    from diffusers.utils import logging as dlogging
    from wan_helpers import run, tiny_inputs, tiny_wan

    dlogging.set_verbosity_error()
    results = []
    # frames, height, width, heads, ulysses_anything, options, enable vmonarch before enable_parallelism
    # (uneven token shards need diffusers' ulysses_anything, whose all_gather of unequal sizes gloo lacks;
    # ulysses_attention's own uneven shards are tested in op_cases)
    cases = [(3, 4, 8, 3, False, {}, True),                       # 24 tokens, T = 3, 3 heads: uneven heads
             (4, 6, 8, 2 * world, False, dict(dense_layers=[0]), False),   # 48 tokens; a dense layer
             (4, 2, 14, 5, False, dict(iterations=3), True)]      # 28 tokens, HW = 7, 5 heads
    for index, (frames, height, width, heads, anything, options, vmonarch_first) in enumerate(cases):
        inputs = tiny_inputs(frames=frames, height=height, width=width, seed=index)
        single = tiny_wan(heads=heads, head_dim=8, seed=index)
        vmonarch.wan.enable(single, **options)
        want = run(single, inputs)
        stock = tiny_wan(heads=heads, head_dim=8, seed=index)
        stock_out = run(stock, inputs)

        model = tiny_wan(heads=heads, head_dim=8, seed=index)
        config = ContextParallelConfig(ulysses_degree=world, ulysses_anything=anything)
        calls = []
        counting = lambda q, k, v, grid, **kw: calls.append(q.shape) or vmonarch.attention(q, k, v, grid, **kw)
        if vmonarch_first:
            vmonarch.wan.enable(model, attention_fn=counting, **options)
            model.enable_parallelism(config=config)
        else:
            model.enable_parallelism(config=config)
            vmonarch.wan.enable(model, attention_fn=counting, **options)
        got = run(model, inputs)
        results.append(dict(case=index, err=rel_l2(got, want), vs_stock=rel_l2(got, stock_out),
                            local_calls=[tuple(c) for c in calls]))
    # ring attention cannot carry VMonarch: a clear error on every rank (before any collective)
    model = tiny_wan(heads=2, head_dim=8)
    vmonarch.wan.enable(model)
    model.enable_parallelism(config=ContextParallelConfig(ring_degree=world))
    try:
        run(model, tiny_inputs(frames=2, height=4, width=4))
        results.append(dict(ring_error=None))
    except ValueError as e:
        results.append(dict(ring_error=str(e)))
    return results


def wan_train_cases(rank: int, world: int):
    """One training step of a tiny Wan model under ContextParallelConfig, with and without gradient
    checkpointing, against the same step in one process: the output, and the parameter gradients summed over
    the ranks (what data-parallel reduction would sum). 3 heads leave a rank without heads at P = 4."""
    import vmonarch.wan
    from diffusers import ContextParallelConfig
    from diffusers.utils import logging as dlogging
    from wan_helpers import tiny_inputs, tiny_wan

    dlogging.set_verbosity_error()
    inputs = tiny_inputs(frames=3, height=4, width=8, seed=5)
    weight = torch.randn(1, 4, 3, 4, 8, generator=torch.Generator().manual_seed(9), dtype=torch.float64)

    def step(model):
        model.train()
        out = model(**inputs, return_dict=False)[0]
        (out * weight).sum().backward()
        return out.detach(), {n: p.grad for n, p in model.named_parameters()}

    results = []
    for heads in (3, 2 * world):
        single = tiny_wan(heads=heads, head_dim=8, seed=2)
        vmonarch.wan.enable(single)
        want, want_grads = step(single)
        row = dict(heads=heads)
        grads = {}
        for checkpointing in (False, True):
            model = tiny_wan(heads=heads, head_dim=8, seed=2)
            vmonarch.wan.enable(model)
            model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
            if checkpointing:
                model.enable_gradient_checkpointing()
            got, got_grads = step(model)
            summed = {}
            for n, g in got_grads.items():
                summed[n] = g.clone()
                dist.all_reduce(summed[n])
            key = "checkpointed" if checkpointing else "plain"
            row[f"{key}_out_err"] = rel_l2(got, want)
            # diffusers' FP32LayerNorm (the cross-attention norm) runs in float32, forward and backward: the
            # gradients through it agree to float32 round-off (its per-token sums split over the ranks)
            row[f"{key}_grad_err"] = max(rel_l2(summed[n], want_grads[n]) for n in want_grads)
            grads[key] = got_grads
        row["checkpointing_bitwise"] = all(torch.equal(grads["plain"][n], grads["checkpointed"][n]) for n in grads["plain"])
        results.append(row)
    return results


def yunchang_case(rank: int, world: int):
    """yunchang's UlyssesAttention with VMonarch as its local attention."""
    from yunchang import UlyssesAttention
    from yunchang.kernels import AttnType

    grid, heads = (3, 2, 2 * world), 2 * world           # tokens and heads divisible by P, as yunchang needs
    q, k, v = make_qkv("video", 2, heads, grid, 16, "bshd", seed=3)
    want = vmonarch.attention(q, k, v, grid=grid, iterations=3)
    attn = UlyssesAttention(sequence_process_group=dist.group.WORLD, attn_type=AttnType.TORCH_MATH)
    attn.attn_fn = vd.yunchang_local_attention(grid, iterations=3)
    n = q.shape[1] // world
    got = attn(*(x[:, rank * n:(rank + 1) * n].contiguous() for x in (q, k, v)))
    return dict(err=rel_l2(got, want[:, rank * n:(rank + 1) * n]), shape=tuple(got.shape))


# grid, heads, d, layout, shards, chunks, text (L, text_first, text_shards) or None: torch.compile (aot_eager) and
# torch.utils.checkpoint (both forms) against eager. Ranks without heads: case 1 at P = 4 (and a chunk without
# heads at P = 2), case 2 at P = 4.
COMPILE_CASES = [((3, 2, 5), 4, 16, "bshd", "split", 1, None), ((3, 1, 7), 3, 8, "bhsd", "padded", 2, None),
                 ((3, 1, 5), 2, 8, "bshd", "split", 1, (4, False, "split"))]


def compile_cases(rank: int, world: int):
    """The same call compiled (backend aot_eager: dynamo and AOTAutograd, no code generation), under activation
    checkpointing (reentrant and not) and eager, the operator's f64 CPU backward as the local attention: outputs
    and the gradients of q, k, v."""
    import torch._dynamo
    import torch.utils.checkpoint
    from distributed_joint_jobs import _splits, local_rows

    results = []
    for index, (grid, heads, d, layout, shards, chunks, text) in enumerate(COMPILE_CASES):
        N = grid[0] * grid[1] * grid[2]
        g = torch.Generator().manual_seed(100 + rank)
        if text is None:
            q, k, v = make_qkv("video", 1, heads, grid, d, layout, seed=30 + index)
            held, valid = vd.token_split(N, world, shards)
            local = [_shard(x, layout, rank, held, valid, g) for x in (q, k, v)]

            def call(a, b, c):
                return vd.ulysses_attention(a, b, c, grid, layout=layout, shards=shards, chunks=chunks)
        else:
            L, text_first, text_shards = text
            q, k, v = make_qkv("video", 1, heads, (1, 1, N + L), d, layout, seed=30 + index)
            split = _splits(N, L, world, shards, text_shards)
            local = [local_rows(x, layout, rank, N, L, text_first, *split, text_shards is None, g) for x in (q, k, v)]

            def call(a, b, c):
                return vd.ulysses_joint_attention(a, b, c, grid, L, text_first=text_first, layout=layout,
                                                  shards=shards, text_shards=text_shards)
        weight = torch.randn(local[0].shape, generator=g, dtype=torch.float64)

        def step(fn):
            leaves = [x.clone().requires_grad_() for x in local]
            out = fn(*leaves)
            (out * weight).sum().backward()
            return out.detach(), [x.grad for x in leaves]

        want, want_grads = step(call)
        torch._dynamo.reset()
        got, got_grads = step(torch.compile(call, backend="aot_eager"))
        row = dict(case=index, out_err=rel_l2(got, want),
                   grad_errs=[rel_l2(a, b) for a, b in zip(got_grads, want_grads)],
                   grads_nonzero=all(bool(b.abs().sum() > 0) for b in want_grads))
        for reentrant in (False, True):
            got, got_grads = step(lambda a, b, c: torch.utils.checkpoint.checkpoint(call, a, b, c,
                                                                                   use_reentrant=reentrant))
            row[f"checkpoint_{'reentrant' if reentrant else 'plain'}_errs"] = \
                [rel_l2(got, want)] + [rel_l2(a, b) for a, b in zip(got_grads, want_grads)]
        results.append(row)
    return results


def lse_grad_case(rank: int, world: int):
    """Gradients through both outputs (out and lse, return_lse=True) with the operator's own f64 CPU backward as
    the local attention, against the single-process operator's (3 heads: a rank without heads at P = 4)."""
    grid, heads = (3, 1, 7), 3
    q, k, v = make_qkv("video", 1, heads, grid, 8, "bshd", seed=4)
    full = [x.clone().requires_grad_() for x in (q, k, v)]
    out, lse = vmonarch.attention(*full, grid=grid, return_lse=True)
    w_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    w_lse = torch.randn(lse.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ((out * w_out).sum() + (lse * w_lse).sum()).backward()
    held, valid = vd.token_split(21, world)
    start, stop = sum(valid[:rank]), sum(valid[:rank + 1])
    local = [x[:, start:stop].clone().requires_grad_() for x in (q, k, v)]
    got, got_lse = vd.ulysses_attention(*local, grid, return_lse=True)
    ((got * w_out[:, start:stop]).sum() + (got_lse * w_lse[:, :, start:stop]).sum()).backward()
    return dict(out_err=rel_l2(got, out[:, start:stop].detach()), lse_err=rel_l2(got_lse, lse[:, :, start:stop].detach()),
                grad_errs=[rel_l2(a.grad, b.grad[:, start:stop]) for a, b in zip(local, full)])


def all_jobs(rank: int, world: int):
    """Every job in one process group (starting processes and importing diffusers dominates the test time)."""
    import importlib.util

    results = dict(op=op_cases(rank, world), grad=grad_cases(rank, world), joint_op=joint_op_cases(rank, world),
                   joint_grad=joint_grad_cases(rank, world), compiled=compile_cases(rank, world),
                   lse_grad=lse_grad_case(rank, world))
    if importlib.util.find_spec("diffusers") is not None:
        results["wan"] = wan_cases(rank, world)
        results["wan_train"] = wan_train_cases(rank, world)
        results["joint_models"] = joint_model_cases(rank, world)
    if importlib.util.find_spec("yunchang") is not None:
        results["yunchang"] = yunchang_case(rank, world)
    return results
