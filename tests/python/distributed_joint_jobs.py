"""Jobs for the joint text+video form of Ulysses (vmonarch.distributed.ulysses_joint_attention), run on every
rank by distributed_helpers.run_job (through distributed_jobs.all_jobs): each compares what the rank computes
with the single-process vmonarch.joint_attention for its own rows and returns the numbers."""
from __future__ import annotations

import time

import torch

import vmonarch
import vmonarch.distributed as vd
from conftest import load_reference, make_qkv, rel_l2


def explicit_shards(total: int, world: int):
    """An uneven contiguous split with an empty shard where world > 2."""
    if world == 2:
        return [min(3, total), total - min(3, total)]
    return [2, 0] + [0] * (world - 4) + [total - 3, 1]


# grid, batch, heads, d, dv, layout, video shards, L, text_first, text_lens, text_shards, kind, options
JOINT_CASES = [
    ((3, 1, 7), 2, 3, 8, 8, "bshd", "split", 5, False, [5, 2], None, "video", {}),          # odd T, prime HW
    ((5, 1, 7), 1, 5, 16, 8, "bhsd", "padded", 4, True, None, "split", "video",
     dict(iterations=3, return_lse=True)),                                                  # dv != d
    ((1, 3, 5), 2, 2, 8, 8, "bshd", "explicit", 6, True, [0, 6], "padded", "random",
     dict(sink_frames=1, return_lse=True, recompute_first_frame=False)),                    # T = 1, a lens 0
    ((4, 3, 3), 1, 6, 8, 8, "bhsd", "split", 3, False, [2], "explicit", "video",
     dict(window_radius=1, sink_frames=1, scale=0.4)),
    ((7, 1, 11), 1, 7, 8, 8, "bshd", "split", 9, False, [4], None, "video",
     dict(clamp=0.3, return_lse=True)),                                                     # 77 tokens, 7 heads
    ((2, 2, 3), 1, 3, 8, 8, "bshd", "padded", 0, True, None, None, "random", {}),          # no text
]


def _rows(x, layout, start, stop):
    return x[:, start:stop] if layout == "bshd" else x[:, :, start:stop]


def _with_noise(x, layout, rows, g):
    """x followed by `rows` rows of noise (padding: it must not leak into any output)."""
    if rows == 0:
        return x
    shape = list(x.shape)
    shape[1 if layout == "bshd" else 2] = rows
    return torch.cat([x, torch.randn(*shape, generator=g, dtype=x.dtype)], dim=1 if layout == "bshd" else 2)


def local_rows(x, layout, rank, N, L, text_first, split, text_split, replicated, g):
    """This rank's tensor of a joint sequence x (text first or last): its video rows then its text rows (or
    the reverse with the text first), each padded to its held count with noise."""
    (held, valid), (t_held, t_valid) = split, text_split
    video_start, text_start = (L, 0) if text_first else (0, N)
    a = video_start + sum(valid[:rank])
    video = _with_noise(_rows(x, layout, a, a + valid[rank]), layout, held[rank] - valid[rank], g)
    b = text_start + (0 if replicated else sum(t_valid[:rank]))
    text = _with_noise(_rows(x, layout, b, b + t_valid[rank]), layout, t_held[rank] - t_valid[rank], g)
    parts = [text, video] if text_first else [video, text]
    return torch.cat(parts, dim=1 if layout == "bshd" else 2).contiguous()


def _splits(N, L, world, shards, text_shards):
    split = vd.token_split(N, world, shards)
    text_split = ([L] * world, [L] * world) if text_shards is None else vd.token_split(L, world, text_shards)
    return split, text_split


def _local_positions(rank, N, L, text_first, split, text_split, replicated):
    """(positions in the whole sequence of this rank's valid rows, their positions in its tensor, its padding
    positions in its tensor)."""
    (held, valid), (t_held, t_valid) = split, text_split
    video_start, text_start = (L, 0) if text_first else (0, N)
    video_global = list(range(video_start + sum(valid[:rank]), video_start + sum(valid[:rank]) + valid[rank]))
    t0 = text_start + (0 if replicated else sum(t_valid[:rank]))
    text_global = list(range(t0, t0 + t_valid[rank]))
    video_local0, text_local0 = (t_held[rank], 0) if text_first else (0, held[rank])
    video_local = list(range(video_local0, video_local0 + valid[rank]))
    text_local = list(range(text_local0, text_local0 + t_valid[rank]))
    pad = [i for i in range(held[rank] + t_held[rank]) if i not in set(video_local + text_local)]
    return video_global + text_global, video_local + text_local, pad


def joint_op_cases(rank: int, world: int):
    results = []
    for index, (grid, B, heads, d, dv, layout, shards, L, text_first, text_lens, text_shards, kind,
                options) in enumerate(JOINT_CASES):
        N = grid[0] * grid[1] * grid[2]
        q, k, v = make_qkv(kind, B, heads, (1, 1, N + L), d, layout, dv=dv, seed=20 + index)
        want = vmonarch.joint_attention(q, k, v, grid, L, text_first=text_first, text_lens=text_lens, layout=layout,
                                        **options)
        want, want_lse = want if options.get("return_lse") else (want, None)
        shards = explicit_shards(N, world) if shards == "explicit" else shards
        text_shards = explicit_shards(L, world) if text_shards == "explicit" else text_shards
        split, text_split = _splits(N, L, world, shards, text_shards)
        g = torch.Generator().manual_seed(100 + rank)
        local = [local_rows(x, layout, rank, N, L, text_first, split, text_split, text_shards is None, g)
                 for x in (q, k, v)]
        got = vd.ulysses_joint_attention(*local, grid, L, text_first=text_first, text_lens=text_lens, layout=layout,
                                         shards=shards, text_shards=text_shards, **options)
        got, got_lse = got if options.get("return_lse") else (got, None)
        glob, loc, pad = _local_positions(rank, N, L, text_first, split, text_split, text_shards is None)
        axis = 1 if layout == "bshd" else 2
        row = dict(case=index, shape=tuple(got.shape), dtype=got.dtype, rows=len(loc), pad_rows=len(pad))
        row["err"] = rel_l2(got.index_select(axis, torch.tensor(loc)), want.index_select(axis, torch.tensor(glob))) \
            if loc else 0.0
        row["pad_zero"] = bool((got.index_select(axis, torch.tensor(pad, dtype=torch.long)) == 0).all())
        if want_lse is not None:
            row["lse_err"] = rel_l2(got_lse[:, :, loc], want_lse[:, :, glob]) if loc else 0.0
            row["lse_pad_inf"] = bool((got_lse[:, :, pad] == float("-inf")).all())
        results.append(row)
    # a wrong token count raises on every rank before any collective (no hang), naming both parts
    q, k, v = make_qkv("random", 1, 2, (1, 1, 21 + 4), 8, "bshd")
    try:
        vd.ulysses_joint_attention(q, k, v, (3, 1, 7), 4)
        results.append(dict(error=None))
    except ValueError as e:
        results.append(dict(error=str(e)))
    return results


def _reference_joint_fn(ref):
    """joint_reference (fp64, differentiable) as the local attention on "bshd" views."""

    def fn(q, k, v, grid, text_len, text_first=False, text_lens=None, layout="bshd", **options):
        out = ref.joint_reference(*(x.transpose(1, 2) for x in (q, k, v)), frames=grid[0], text_len=text_len,
                                  text_first=text_first, text_lens=text_lens, **options)
        return out.transpose(1, 2)

    return fn


# grid, batch, heads, layout, shards, L, text_first, text_lens, text_shards
JOINT_GRAD_CASES = [((3, 1, 5), 2, 3, "bshd", "split", 4, False, [4, 1], None),
                    ((3, 1, 3), 1, 5, "bhsd", "padded", 3, True, None, "split")]


def joint_grad_cases(rank: int, world: int):
    """Gradients through the exchanges with the reference as the local attention: replicated text (every
    rank's loss holds the whole text output; its text gradient comes back whole) and sharded text."""
    fn = _reference_joint_fn(load_reference())
    results = []
    for index, (grid, B, heads, layout, shards, L, text_first, text_lens, text_shards) in enumerate(JOINT_GRAD_CASES):
        N = grid[0] * grid[1] * grid[2]
        q, k, v = make_qkv("video", B, heads, (1, 1, N + L), 8, layout, seed=30 + index)
        weight = torch.randn(q.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        full = [x.clone().requires_grad_() for x in (q, k, v)]
        tok = (lambda x: x) if layout == "bshd" else (lambda x: x.transpose(1, 2))
        out = tok(fn(*(tok(x) for x in full), grid, L, text_first=text_first, text_lens=text_lens))
        (out * weight).sum().backward()
        split, text_split = _splits(N, L, world, shards, text_shards)
        g = torch.Generator().manual_seed(100 + rank)
        replicated = text_shards is None
        local = [local_rows(x, layout, rank, N, L, text_first, split, text_split, replicated, g).requires_grad_()
                 for x in (q, k, v)]
        w_local = local_rows(weight, layout, rank, N, L, text_first, split, text_split, text_shards is None, g)
        got = vd.ulysses_joint_attention(*local, grid, L, text_first=text_first, text_lens=text_lens, layout=layout,
                                         shards=shards, text_shards=text_shards, attention_fn=fn)
        (got * w_local).sum().backward()
        glob, loc, pad = _local_positions(rank, N, L, text_first, split, text_split, text_shards is None)
        axis = 1 if layout == "bshd" else 2
        pick = lambda x, idx: x.index_select(axis, torch.tensor(idx, dtype=torch.long))
        errs = [rel_l2(pick(xl.grad, loc), pick(xf.grad, glob)) for xf, xl in zip(full, local)]
        results.append(dict(case=index, out_err=rel_l2(pick(got, loc), pick(out, glob)), grad_errs=errs,
                            pad_grad_zero=all(bool((pick(x.grad, pad) == 0).all()) for x in local)))
    return results


# --- the joint processors under diffusers' context parallelism -------------------------------------------
def _joint_models():
    """(name, vmonarch module, tiny model factory, inputs, enable options) at 4 x 3 x 5 = 60 video tokens
    (diffusers' even shards need P | N), 2 heads (at P = 4 two ranks have none)."""
    import vmonarch.cogvideox
    import vmonarch.hunyuan_video
    import vmonarch.hunyuan_video15
    import vmonarch.mochi
    import joint_helpers as jh

    return [
        ("hunyuan_video", vmonarch.hunyuan_video, jh.tiny_hunyuan, jh.hunyuan_inputs(frames=4),
         dict(sink_frames=1, dense_layers=[1])),                  # text last, lens (5, 3) of 5; a dense block
        ("hunyuan_video15", vmonarch.hunyuan_video15, jh.tiny_hunyuan15, jh.hunyuan15_inputs(frames=4),
         dict(iterations=3)),                                     # condition tokens after the video, padded
        ("cogvideox", vmonarch.cogvideox, jh.tiny_cogvideox, jh.cogvideox_inputs(frames=4),
         dict(dense_layers=[0])),                                 # text first, a dense block
        ("mochi", vmonarch.mochi, jh.tiny_mochi, jh.mochi_inputs(frames=4), {}),   # text last, lens (5, 2) of 5
    ]


def joint_model_cases(rank: int, world: int):
    """Each tiny random-weight joint model with vmonarch enabled, under ContextParallelConfig(ulysses_degree=P)
    and the module's context_parallel_plan(), against the same model in one process; the stock model for
    scale (VMonarch ran); ring_degree > 1 raises."""
    from diffusers import ContextParallelConfig
    from diffusers.utils import logging as dlogging
    from joint_helpers import run

    dlogging.set_verbosity_error()
    results = []
    for index, (name, module, factory, inputs, options) in enumerate(_joint_models()):
        start = time.perf_counter()
        single = factory(seed=index)
        stock_out = run(single, inputs)
        module.enable(single, **options)
        want = run(single, inputs)
        model = factory(seed=index)
        calls = []

        def counting(q, k, v, grid, text_len, **kw):
            calls.append((q.shape[1], q.shape[2], text_len))
            return vmonarch.joint_attention(q, k, v, grid, text_len, **kw)

        options = dict(options, attention_fn=counting)
        if index % 2:   # both orders: enable_parallelism after and before vmonarch's enable()
            module.enable(model, **options)
            model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world),
                                     cp_plan=module.context_parallel_plan())
        else:
            model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world),
                                     cp_plan=module.context_parallel_plan())
            module.enable(model, **options)
        got = run(model, inputs)
        results.append(dict(model=name, err=rel_l2(got, want), vs_stock=rel_l2(got, stock_out), calls=calls,
                            seconds=time.perf_counter() - start))
    # a text mask with a hole would need the stock processor, which cannot run over sharded tokens: a clear error
    import joint_helpers as jh

    hole = torch.tensor([[1, 0, 1, 1, 1], [1, 1, 0, 0, 0]])
    try:
        run(model, jh.mochi_inputs(frames=4, mask=hole))     # the last model: Mochi under context parallelism
        results.append(dict(mask_error=None))
    except ValueError as e:
        results.append(dict(mask_error=str(e)))
    name, module, factory, inputs, _ = _joint_models()[0]
    model = factory()
    module.enable(model)
    model.enable_parallelism(config=ContextParallelConfig(ring_degree=world), cp_plan=module.context_parallel_plan())
    try:
        run(model, inputs)
        results.append(dict(ring_error=None))
    except ValueError as e:
        results.append(dict(ring_error=str(e)))
    return results
