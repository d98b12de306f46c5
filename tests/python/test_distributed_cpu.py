"""vmonarch.distributed on the CPU: gloo process groups of 2 and 4 ranks (one process each) against the
single-process operator at float64, the diffusers context-parallel path of vmonarch.wan, and the
xDiT / yunchang hooks."""
from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.distributed as dist

import vmonarch
import vmonarch.distributed as vd
from conftest import make_qkv, rel_l2
from distributed_helpers import free_port, run_job
from distributed_jobs import COMPILE_CASES, GRAD_CASES, OP_CASES
from distributed_joint_jobs import JOINT_CASES, JOINT_GRAD_CASES

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
ROUND_OFF = 1e-12


@pytest.fixture(scope="module", params=[2, 4])
def world(request):
    return request.param


@pytest.fixture(scope="module")
def results(world):
    """Each rank's results of distributed_jobs.all_jobs: one process group per world size for all tests."""
    return run_job("all_jobs", world)


@pytest.fixture(scope="module")
def op_results(results):
    return [r["op"] for r in results]


def test_matches_single_process(op_results, world):
    """Odd T, prime HW, T = 1, uneven and padded shards, an empty shard, heads not divisible by P (some
    ranks without heads at P = 4), batch 2, both layouts, dv != d, chunked pipelines, options, lse."""
    for rank, rows in enumerate(op_results):
        for row in rows[:len(OP_CASES)]:
            assert row["err"] < ROUND_OFF, (world, rank, row)
            assert row["dtype"] == torch.float64
            assert row["pad_zero"], (world, rank, row)
            if "lse_err" in row:
                assert row["lse_err"] < ROUND_OFF and row["lse_pad_inf"], (world, rank, row)
    # the padded case really padded something: the last rank holds more rows than tokens
    held = [rows[1]["held"] for rows in op_results]
    assert sum(held) > 35


def test_wrong_token_count_names_the_rank(op_results, world):
    for rank, rows in enumerate(op_results):
        message = rows[-1]["error"]
        assert message is not None and f"on rank {rank} of {world}" in message and "shards='split'" in message


def test_gradients_flow_through_the_exchange(results, world):
    """With a differentiable local attention (the fp64 reference), the gradients of q, k, v on every rank's
    tokens equal the single-process gradients: the exchange's backward is the reverse exchange."""
    for rank, rows in enumerate(r["grad"] for r in results):
        assert len(rows) == len(GRAD_CASES)
        for row in rows:
            assert row["out_err"] < ROUND_OFF, (world, rank, row)
            assert max(row["grad_errs"]) < ROUND_OFF, (world, rank, row)
            assert row["pad_grad_zero"]


def test_joint_form_matches_single_process(results, world):
    """ulysses_joint_attention against vmonarch.joint_attention: text last and first, replicated and sharded
    text (split, padded, explicit counts with empty shards), uneven video shards and heads (ranks without
    heads at P = 4), odd T, prime HW, T = 1, text lens < L (one 0), sink frames and a window, dv != d, no
    text; every rank's rows, zeros (lse -inf) on padding rows."""
    for rank, rows in enumerate(r["joint_op"] for r in results):
        assert len(rows) == len(JOINT_CASES) + 1
        for row in rows[:len(JOINT_CASES)]:
            assert row["rows"] > 0 or row["pad_rows"] > 0, row
            assert row["err"] < ROUND_OFF, (world, rank, row)
            assert row["dtype"] == torch.float64 and row["pad_zero"], (world, rank, row)
            if "lse_err" in row:
                assert row["lse_err"] < ROUND_OFF and row["lse_pad_inf"], (world, rank, row)
        message = rows[-1]["error"]
        assert message is not None and f"on rank {rank} of {world}" in message and "text_shards=None" in message
    # padded shards really padded something somewhere
    assert sum(row["pad_rows"] for r in results for row in r["joint_op"][:len(JOINT_CASES)]) > 0


def test_joint_form_gradients(results, world):
    """With the differentiable fp64 reference as the local attention: sharded text exactly; replicated text by
    the replicated convention (whole text gradient on every rank); video gradients as in one process."""
    for rank, rows in enumerate(r["joint_grad"] for r in results):
        assert len(rows) == len(JOINT_GRAD_CASES)
        for row in rows:
            assert row["out_err"] < ROUND_OFF and max(row["grad_errs"]) < ROUND_OFF, (world, rank, row)
            assert row["pad_grad_zero"], (world, rank, row)


def test_gradients_through_out_and_lse(results, world):
    """return_lse=True under autograd: the gradients of q, k, v through both outputs equal the single-process
    operator's, its own CPU backward as the local attention (a rank without heads at P = 4)."""
    for rank, row in enumerate(r["lse_grad"] for r in results):
        assert row["out_err"] < ROUND_OFF and row["lse_err"] < ROUND_OFF, (world, rank, row)
        assert max(row["grad_errs"]) < ROUND_OFF, (world, rank, row)


def test_compiled_and_checkpointed_match_eager(results, world):
    """torch.compile (aot_eager) and torch.utils.checkpoint (reentrant and not) of ulysses_attention and
    ulysses_joint_attention give the eager outputs and the eager gradients of q, k, v, also where a rank has no
    heads (compiled, the exchange once gave zero gradients; non-reentrant checkpointing once ran mismatched
    collectives there), with the operator's own CPU backward as the local attention."""
    for rank, rows in enumerate(r["compiled"] for r in results):
        assert len(rows) == len(COMPILE_CASES)
        for row in rows:
            assert row["grads_nonzero"], (world, rank, row)
            assert row["out_err"] < ROUND_OFF and max(row["grad_errs"]) < ROUND_OFF, (world, rank, row)
            for form in ("plain", "reentrant"):
                assert max(row[f"checkpoint_{form}_errs"]) < ROUND_OFF, (world, rank, form, row)


@pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="needs diffusers")
def test_wan_training_step_under_context_parallelism(results, world):
    """One training step of a tiny Wan model under ContextParallelConfig(ulysses_degree=P), with and without
    gradient checkpointing (a rank without heads at P = 4): the output and the parameter gradients summed over
    the ranks equal the one-process step's (to float32 round-off: diffusers' cross-attention norm runs in
    float32), and checkpointing changes no gradient bit."""
    for rank, rows in enumerate(r["wan_train"] for r in results):
        assert len(rows) == 2
        for row in rows:
            for key in ("plain", "checkpointed"):
                assert row[f"{key}_out_err"] < ROUND_OFF, (world, rank, row)
                assert row[f"{key}_grad_err"] < 1e-6, (world, rank, row)
            assert row["checkpointing_bitwise"], (world, rank, row)


@pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="needs diffusers")
def test_wan_under_context_parallelism(results, world):
    """enable_parallelism(ContextParallelConfig(ulysses_degree=P)): the model's output equals the same model's
    in one process, each VMonarch call sees all N tokens of its share of the heads, and ring degree > 1
    raises a clear error."""
    for rank, rows in enumerate(r["wan"] for r in results):
        expected_tokens = [24, 48, 28]
        heads = [3, 2 * world, 5]
        for row in rows[:3]:
            case = row["case"]
            assert row["err"] < 1e-10, (world, rank, row)
            assert row["vs_stock"] > 1e-6                 # VMonarch ran (it is not dense attention here)
            share = vd.head_split(heads[case], world)[rank]
            calls = row["local_calls"]
            blocks = 2 if case != 1 else 1                # case 1 keeps block 0 dense
            assert len(calls) == (blocks if share else 0), (world, rank, row)   # a rank may have no heads
            assert all(c[1] == expected_tokens[case] and c[2] == share for c in calls), (world, rank, row)
        assert "ring_degree" in rows[3]["ring_error"] and "every key of a head" in rows[3]["ring_error"]


@pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="needs diffusers")
def test_joint_models_under_context_parallelism(results, world):
    """HunyuanVideo (text last, padded text, a dense block, a sink frame), HunyuanVideo 1.5 (condition tokens),
    CogVideoX (text first, a dense block) and Mochi (padded text) under ContextParallelConfig(ulysses_degree=P)
    with vmonarch's context_parallel_plan(): the output equals the same model's in one process, and each
    VMonarch call sees all N + L tokens of its share of the heads (2 heads: at P = 4 two ranks have none); a mask
    that would need the stock processor and ring degree > 1 raise clear errors."""
    vmonarch_layers = {"hunyuan_video": 2, "hunyuan_video15": 2, "cogvideox": 1, "mochi": 2}
    text = {"hunyuan_video": 5, "hunyuan_video15": 9, "cogvideox": 6, "mochi": 5}
    for rank, rows in enumerate(r["joint_models"] for r in results):
        assert [row["model"] for row in rows[:4]] == list(vmonarch_layers)
        share = vd.head_split(2, world)[rank]
        for row in rows[:4]:
            name = row["model"]
            assert row["err"] < 1e-10, (world, rank, row)
            assert row["vs_stock"] > 1e-6, (world, rank, row)       # VMonarch ran (not dense attention)
            want_calls = [(60 + text[name], share, text[name])] * (vmonarch_layers[name] if share else 0)
            assert row["calls"] == want_calls, (world, rank, row)
        assert "not a key-padding prefix" in rows[4]["mask_error"] and "context parallelism" in rows[4]["mask_error"]
        assert "ring_degree" in rows[5]["ring_error"] and "every key of a head" in rows[5]["ring_error"]


@pytest.mark.skipif(importlib.util.find_spec("yunchang") is None, reason="needs yunchang (pip install yunchang)")
def test_yunchang_ulysses_with_vmonarch_local_attention(results):
    for row in (r["yunchang"] for r in results):
        assert row["err"] < ROUND_OFF, row


# --- single process ---------------------------------------------------------------------------------------
@pytest.fixture()
def single_rank_group():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_world_size_one_is_the_operator(single_rank_group):
    grid = (3, 2, 5)
    for layout in ("bshd", "bhsd"):
        q, k, v = make_qkv("video", 2, 3, grid, 8, layout)
        want = vmonarch.attention(q, k, v, grid=grid, layout=layout, iterations=3)
        assert torch.equal(vd.ulysses_attention(q, k, v, grid, layout=layout, iterations=3), want)
        # the exchange itself at one rank (what the GPU test runs on one device)
        held, valid = vd.token_split(30, 1)
        for chunks in (2, 3):     # 3 heads in 2 chunks: uneven packing; in 3: the one-copy even packing
            got = vd._ulysses(q, k, v, grid, dist.group.WORLD, layout, held, valid, chunks, vd._default_attention,
                              dict(iterations=3))
            assert rel_l2(got, want) < ROUND_OFF


def test_joint_world_size_one(single_rank_group):
    """At one rank the joint form is vmonarch.joint_attention; the exchange itself (what the GPU test runs on
    one device) gives the same, for replicated and sharded text."""
    from vmonarch._ulysses_joint import _default_joint_attention, _ulysses_joint

    grid, L = (3, 1, 5), 4
    for layout, text_first in (("bshd", False), ("bhsd", True)):
        q, k, v = make_qkv("video", 2, 3, (1, 1, 15 + L), 8, layout, seed=5)
        options = dict(text_first=text_first, text_lens=[4, 1], layout=layout, iterations=3)
        want = vmonarch.joint_attention(q, k, v, grid, L, **options)
        assert torch.equal(vd.ulysses_joint_attention(q, k, v, grid, L, **options), want)
        call = dict(text_first=text_first, text_lens=[4, 1], iterations=3)
        for replicated in (True, False):
            got = _ulysses_joint(q, k, v, grid, L, dist.group.WORLD, layout, [15], [15], [L], [L], replicated,
                                 _default_joint_attention, call)
            assert rel_l2(got, want) < ROUND_OFF


def test_joint_argument_errors(single_rank_group):
    grid, L = (3, 1, 7), 4
    q, k, v = make_qkv("random", 1, 2, (1, 1, 21 + L), 8, "bshd")
    f = vd.ulysses_joint_attention
    with pytest.raises(ValueError, match="ulysses_joint_attention: argument 'text_len' is -1, expected an int >= 0"):
        f(q, k, v, grid, -1)
    with pytest.raises(TypeError, match="argument 'text_len' is a float"):
        f(q, k, v, grid, 4.0)
    with pytest.raises(TypeError, match="argument 'text_first' is 1, expected a bool"):
        f(q, k, v, grid, L, text_first=1)
    with pytest.raises(ValueError, match="argument 'text_shards' is 'even'"):
        f(q, k, v, grid, L, text_shards="even")
    with pytest.raises(ValueError, match=r"argument 'text_shards' is \[3\], expected 1 non-negative token counts.*L = "
                                         "text_len = 4"):
        f(q, k, v, grid, L, text_shards=[3])
    with pytest.raises(ValueError, match="ulysses_joint_attention: argument 'q' has 25 tokens on rank 0 of 1, expected "
                                         "26 = 21 video"):
        f(q, k, v, grid, L + 1)
    with pytest.raises(ValueError, match="ulysses_joint_attention: argument 'grid' is"):
        f(q, k, v, (3, 7), L)


@pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="needs diffusers")
def test_joint_processor_routing_under_a_parallel_config(single_rank_group):
    """The joint processors' decision under a (stand-in) ContextParallelConfig: the Ulysses group, VMonarch or
    exact for a dense layer, and clear errors for a wrong token count, a missing grid and ring degree > 1."""
    from vmonarch._joint import JointSchedule
    from vmonarch.mochi import VMonarchMochiAttnProcessor

    class Mesh:
        @staticmethod
        def get_group():
            return dist.group.WORLD

    class Config:   # the fields of diffusers' ContextParallelConfig that matter
        ring_degree, ulysses_degree, _ulysses_mesh = 1, 2, Mesh()

    schedule = JointSchedule(dense_layers=[1])
    schedule.grid = (3, 2, 5)
    processors = [VMonarchMochiAttnProcessor(schedule, layer=i) for i in (0, 1)]
    for p in processors:
        p._parallel_config = Config()
    assert processors[0].route(30) == ((3, 2, 5), dist.group.WORLD, False)
    assert processors[1].route(30) == ((3, 2, 5), dist.group.WORLD, True)      # a dense layer: exact, via Ulysses
    with pytest.raises(ValueError, match="vmonarch.mochi: attention on rank 0 of 1 .* 29 video tokens, expected 30"):
        processors[0].route(29)
    with pytest.raises(ValueError, match="a text mask with a hole: the stock processor would be needed"):
        processors[0].warn_fallback("mask", "a text mask with a hole")
    schedule.grid = None
    with pytest.raises(ValueError, match="no latent grid under context parallelism"):
        processors[0].route(30)
    Config.ring_degree = 2
    with pytest.raises(ValueError, match="vmonarch.mochi: ContextParallelConfig has ring_degree 2"):
        processors[0].route(30)
    processors[0]._parallel_config = None                                          # no parallelism: as before
    schedule.grid = (3, 2, 5)
    assert processors[0].route(30) == ((3, 2, 5), None, False)


def test_argument_errors(single_rank_group):
    q, k, v = make_qkv("random", 1, 2, (3, 1, 7), 8, "bshd")
    f = vd.ulysses_attention
    with pytest.raises(ValueError, match="argument 'layout' is 'sbhd'"):
        f(q, k, v, (3, 1, 7), layout="sbhd")
    with pytest.raises(ValueError, match=r"argument 'grid' is \(3, 7\)"):
        f(q, k, v, (3, 7))
    with pytest.raises(ValueError, match=r"argument 'grid' is \(3, 0, 7\), expected \(T, H, W\), three positive ints"):
        f(q, k, v, (3, 0, 7))
    with pytest.raises(ValueError, match=r"argument 'grid' is \(3.0, 1, 7\)"):
        f(q, k, v, (3.0, 1, 7))
    with pytest.raises(ValueError, match="argument 'q' has 20 tokens on rank 0 of 1, expected 21"):
        f(q[:, :20], k[:, :20], v[:, :20], (3, 1, 7))
    with pytest.raises(ValueError, match="argument 'k' has .* expected"):
        f(q, k[:, :, :1], v, (3, 1, 7))
    with pytest.raises(TypeError, match="argument 'v' is torch.float32"):
        f(q, k, v.float(), (3, 1, 7))
    with pytest.raises(ValueError, match="argument 'shards' is \\[10, 10\\]"):
        f(q, k, v, (3, 1, 7), shards=[10, 10])
    with pytest.raises(ValueError, match="argument 'shards' is 'chunked'"):
        f(q, k, v, (3, 1, 7), shards="chunked")
    with pytest.raises(ValueError, match="argument 'chunks' is 0"):
        f(q, k, v, (3, 1, 7), chunks=0)
    with pytest.raises(TypeError, match="argument 'q' is a list"):
        f([1], k, v, (3, 1, 7))


def test_needs_an_initialized_process_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialized")
    q, k, v = make_qkv("random", 1, 2, (3, 1, 7), 8, "bshd")
    with pytest.raises(RuntimeError, match="init_process_group"):
        vd.ulysses_attention(q, k, v, (3, 1, 7))


def test_splits():
    assert vd.head_split(12, 8) == [2, 2, 2, 2, 1, 1, 1, 1]
    assert vd.head_split(3, 4) == [1, 1, 1, 0]
    assert vd.token_split(45, 4) == ([12, 11, 11, 11], [12, 11, 11, 11])   # torch.tensor_split's sizes
    assert [len(c) for c in torch.arange(45).tensor_split(4)] == [12, 11, 11, 11]
    assert vd.token_split(9, 4, "padded") == ([3, 3, 3, 3], [3, 3, 3, 0])
    assert vd.token_split(10, 4, "padded") == ([3, 3, 3, 3], [3, 3, 3, 1])


def test_ring_config_is_refused():
    class Config:   # the fields of diffusers' ContextParallelConfig that matter
        ring_degree, ulysses_degree = 2, 2

    with pytest.raises(ValueError, match="ring_degree 2, expected 1.*ulysses_degree=4"):
        vd.context_parallel_group(Config())
    assert vd.context_parallel_group(None) is None


def test_yunchang_local_attention_refuses_what_vmonarch_cannot_do():
    grid = (2, 2, 3)
    q, k, v = make_qkv("random", 1, 2, grid, 8, "bshd")
    local = vd.yunchang_local_attention(grid)
    assert rel_l2(local(q, k, v, softmax_scale=8 ** -0.5), vmonarch.attention(q, k, v, grid=grid)) < ROUND_OFF
    with pytest.raises(ValueError, match="causal is True"):
        local(q, k, v, causal=True)
    with pytest.raises(ValueError, match="ring attention"):
        local(q, k[:, :6], v[:, :6])


def test_xfuser_backend_function():
    """The function xfuser's USP calls after its own exchange: [B, h, N_pad, d], attention_kwargs["thw"]."""
    grid = (3, 2, 3)
    q, k, v = make_qkv("video", 1, 2, grid, 8, "bhsd")
    want = vmonarch.attention(q, k, v, grid=grid, layout="bhsd")
    ring = []

    def fallback(query, key, value, dropout_p=0.0, is_causal=False, attention_kwargs=None):
        return torch.zeros_like(query), None

    import sys
    import types

    # a stand-in for xfuser.core.distributed (importing xfuser itself takes ~20 s); the real one is tested below
    fake = types.ModuleType("xfuser.core.distributed")
    fake.get_ring_parallel_world_size = lambda: ring[0] if ring else 1
    saved = {m: sys.modules.get(m) for m in ("xfuser", "xfuser.core", "xfuser.core.distributed")}
    if "xfuser" not in sys.modules:
        sys.modules.update({"xfuser": types.ModuleType("xfuser"), "xfuser.core": types.ModuleType("xfuser.core")})
    sys.modules["xfuser.core.distributed"] = fake
    try:
        pad = torch.randn(1, 2, 2, 8, dtype=torch.float64)
        out, lse = vd.xfuser_attention(torch.cat([q, pad], 2), k, v, attention_kwargs={"thw": grid}, fallback=fallback)
        assert lse is None and rel_l2(out[:, :, :18], want) < ROUND_OFF and (out[:, :, 18:] == 0).all()
        text = torch.randn(1, 2, 7, 8, dtype=torch.float64)
        out, _ = vd.xfuser_attention(q, text, text, attention_kwargs={"thw": grid}, fallback=fallback)
        assert (out == 0).all()                          # cross-attention: the fallback
        with pytest.raises(ValueError, match="no fallback"):
            vd.xfuser_attention(q, text, text, attention_kwargs={"thw": grid})
        ring.append(2)
        with pytest.raises(ValueError, match="ring_degree is 2"):
            vd.xfuser_attention(q, k, v, attention_kwargs={"thw": grid}, fallback=fallback)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


@pytest.mark.skipif(importlib.util.find_spec("xfuser") is None, reason="needs xfuser (heavy: not in setup_python.sh)")
def test_install_xfuser_registers_and_restores():
    from xfuser.core.distributed.attention_backend import ATTENTION_FUNCTION_REGISTRY, AttentionBackendType

    before = dict(ATTENTION_FUNCTION_REGISTRY)
    vd.install_xfuser(iterations=3)
    vd.install_xfuser(iterations=3)                      # twice: still wraps each original once
    for key, fn in ATTENTION_FUNCTION_REGISTRY.items():
        assert fn is not before[key] and fn._vmonarch_original is before[key]
    # a cross-attention call reaches the original backend function (here SDPA's, on the CPU)
    grid = (2, 2, 3)
    q, k, v = make_qkv("random", 1, 2, grid, 8, "bhsd")
    text = torch.randn(1, 2, 5, 8, dtype=torch.float64)
    out, _ = ATTENTION_FUNCTION_REGISTRY[AttentionBackendType.SDPA](q, text, text, attention_kwargs={"thw": grid})
    want = torch.softmax(q @ text.transpose(-1, -2) * 8 ** -0.5, -1) @ text
    assert rel_l2(out, want) < 1e-10
    vd.uninstall_xfuser()
    assert ATTENTION_FUNCTION_REGISTRY == before
