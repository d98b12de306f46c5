"""What a careless or hostile caller can do to the package: a badly linked build, mixed devices,
forward-mode AD, loosely typed arguments and overflowing sizes must each end in a clear error (or, for
the build, a refused install), never in a crash or a silently wrong result."""
from __future__ import annotations

import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import vmonarch
import vmonarch._ops
from conftest import REPO_ROOT, make_qkv

GRID = (2, 2, 3)


def _qkv(dtype=torch.float32, grid=GRID):
    return make_qkv("random", 1, 2, grid, 64, "bshd", dtype=dtype)


# --- the built module and its C++ runtime -----------------------------------------------------------------
def _needed(path: str):
    """DT_NEEDED entries of a shared library, from readelf or objdump."""
    if shutil.which("readelf"):
        text = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True).stdout
        return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", text)
    if shutil.which("objdump"):
        text = subprocess.run(["objdump", "-p", path], capture_output=True, text=True, check=True).stdout
        return re.findall(r"^\s*NEEDED\s+(\S+)", text, re.M)
    pytest.skip("neither readelf nor objdump is installed")


def test_extension_links_the_shared_cxx_runtime_like_torch():
    """A module with its own static copy of libstdc++ next to torch's crashes or formats nothing."""
    needed = _needed(vmonarch._ops.LIBRARY_PATH)
    assert any(n.startswith("libstdc++.so") for n in needed), f"{vmonarch._ops.LIBRARY_PATH} NEEDs {needed}"
    assert not any(n.startswith("libc++.so") for n in needed), needed


def _run_python(code: str, **env):
    full_env = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, timeout=300, cwd=str(REPO_ROOT / "tests" / "python"))


def test_first_calls_work_in_a_fresh_process():
    """One attention and one dense_attention call, and an error message with its numbers, in a child
    process (a crash there fails this test instead of killing pytest)."""
    result = _run_python("""
        import torch, vmonarch
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 12, 2, 64, generator=g) for _ in range(3))
        dense = vmonarch.dense_attention(q, k, v)
        want = torch.softmax(q.transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2) / 8, -1) @ v.transpose(1, 2)
        torch.testing.assert_close(dense, want.transpose(1, 2), rtol=1e-4, atol=1e-5)
        out = vmonarch.attention(q, k, v, grid=(2, 2, 3))
        assert out.shape == q.shape and bool(torch.isfinite(out).all())
        try:
            vmonarch.attention(q, k, v, grid=(2, 2, 2))
        except ValueError as e:
            print("MESSAGE:", e)
        """)
    assert result.returncode == 0, f"rc {result.returncode}\n{result.stdout}\n{result.stderr}"
    message = result.stdout.split("MESSAGE:", 1)[1]
    assert re.search(r"\b12\b", message) and re.search(r"\b8\b", message), message


def test_build_info_names_the_compiler():
    info = vmonarch._ops.BUILD_INFO
    assert info.get("cxx_compiler") and info.get("cxx_compiler_version"), info
    assert "libstdc++" in info.get("cxx_runtime", ""), info


def test_smoke_module_passes_on_this_build():
    result = subprocess.run([sys.executable, "-m", "vmonarch._smoke", "--device", "cpu"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "vmonarch.attention" in result.stdout and "vmonarch.dense_attention" in result.stdout


def test_smoke_reports_a_crash_with_the_compiler():
    """The parent survives a child that dies on a signal and names the call, the signal and the compiler."""
    from vmonarch import _smoke

    crash = "import os, signal\nprint('calling vmonarch.attention on cpu', flush=True)\nos.kill(os.getpid(), signal.SIGSEGV)\n"
    ok, report = _smoke.run_child(crash, devices=["cpu"])
    assert not ok
    assert "SIGSEGV" in report and "vmonarch.attention on cpu" in report, report
    assert vmonarch._ops.BUILD_INFO.get("cxx_compiler", "?") in report and "CXX=g++" in report, report


# --- the build refuses a toolchain that links libstdc++ statically ----------------------------------------
def _probe(tmp_path, compiler, torch_runtime=""):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    return subprocess.run(
        [cmake, f"-DCMAKE_CXX_COMPILER={compiler}", f"-DVMONARCH_TORCH_CXX_RUNTIME={torch_runtime}",
         f"-DVMONARCH_PROBE_DIR={tmp_path}", "-P", str(REPO_ROOT / "python" / "cmake" / "probe_cxx_runtime.cmake")],
        capture_output=True, text=True, timeout=300)


def _wrapper(tmp_path, name, body):
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def _torch_cxx_runtime():
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "libstdc++.so" in line:
                return line.split()[-1]
    pytest.skip("torch's libstdc++ is not mapped into this process")


def _gxx():
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not installed")
    return gxx


def test_probe_accepts_a_compiler_that_links_libstdcxx_dynamically(tmp_path):
    result = _probe(tmp_path, _gxx())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "links libstdc++ dynamically" in result.stdout + result.stderr


def test_probe_repairs_a_static_libstdcxx_with_torchs_runtime(tmp_path):
    static = _wrapper(tmp_path, "static-c++", f'exec {_gxx()} "$@" -static-libstdc++')
    result = _probe(tmp_path, static, _torch_cxx_runtime())
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "statically" in out and "links torch's" in out, out


def test_probe_refuses_a_compiler_that_cannot_link_libstdcxx_dynamically(tmp_path):
    # Drops any shared libstdc++ it is given and forces the static one: nothing can repair it.
    body = ('args=""\nfor a in "$@"; do case "$a" in *libstdc++.so*) ;; *) args="$args \'$a\'" ;; esac; done\n'
            f'eval exec {_gxx()} $args -static-libstdc++')
    stubborn = _wrapper(tmp_path, "stubborn-c++", body)
    result = _probe(tmp_path, stubborn, _torch_cxx_runtime())
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert str(stubborn) in out and "CXX=g++" in out and "statically" in out, out


def test_post_build_check_deletes_a_module_with_a_static_libstdcxx(tmp_path):
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    source = REPO_ROOT / "python" / "cmake" / "cxx_runtime_probe.cpp"
    script = REPO_ROOT / "python" / "cmake" / "check_module_runtime.cmake"
    for name, flags, want_ok in [("dynamic.so", [], True), ("static.so", ["-static-libstdc++"], False)]:
        module = tmp_path / name
        subprocess.run([_gxx(), "-fPIC", "-shared", str(source), "-o", str(module), *flags], check=True)
        result = subprocess.run(["cmake", f"-DMODULE={module}", "-DCOMPILER=test-compiler 1.0", "-P", str(script)],
                                capture_output=True, text=True, timeout=120)
        out = result.stdout + result.stderr
        assert (result.returncode == 0) == want_ok, out
        assert module.exists() == want_ok
        if not want_ok:
            assert "test-compiler 1.0" in out and "libstdc++" in out and "CXX=g++" in out, out


# --- mixed devices ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("meta", ["q", "k", "v"])
@pytest.mark.parametrize("op", ["attention", "dense_attention"])
def test_a_meta_tensor_among_cpu_tensors_raises(op, meta):
    tensors = dict(zip("qkv", _qkv()))
    tensors[meta] = tensors[meta].to("meta")
    call = (lambda q, k, v: vmonarch.attention(q, k, v, GRID)) if op == "attention" else vmonarch.dense_attention
    with pytest.raises(ValueError, match=r"is on (meta|cpu), expected (cpu|meta)"):
        call(tensors["q"], tensors["k"], tensors["v"])


def test_a_meta_tensor_among_cpu_tensors_raises_through_torch_ops():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="k is on meta, expected cpu like q"):
        torch.ops.vmonarch.attention(q, k.to("meta"), v, list(GRID))
    with pytest.raises(ValueError, match="v is on meta, expected cpu like q"):
        torch.ops.vmonarch.dense_attention(q, k, v.to("meta"))


@pytest.mark.parametrize("op", ["attention", "attention_train", "attention_exact_groups", "joint_attention"])
def test_fake_kernels_report_a_short_grid_as_the_operators_do(op):
    """The fake (meta) kernels' check of the grid's length has the C++ operators' message, word for word."""
    q, k, v = _qkv()
    call = getattr(torch.ops.vmonarch, op)
    extra = [0] if op == "joint_attention" else []   # text_len
    messages = []
    for device in ("cpu", "meta"):
        with pytest.raises(ValueError) as e:
            call(*(x.to(device) for x in (q, k, v)), [2, 6], *extra)
        messages.append(str(e.value))
    assert messages[0] == messages[1]
    assert "argument 'grid' is [2, 6] (2 entries), expected 3 entries" in messages[0]


def test_all_meta_inputs_still_give_shapes():
    q, k, v = (x.to("meta") for x in _qkv())
    out, lse = vmonarch.attention(q, k, v, GRID, return_lse=True)
    assert out.device.type == "meta" and out.shape == q.shape and lse.shape == (1, 2, 12)
    assert vmonarch.dense_attention(q, k, v).shape == q.shape


# --- forward-mode AD --------------------------------------------------------------------------------------
def _ops():
    q, k, v = _qkv()
    return [("vmonarch.attention", lambda q, k, v: vmonarch.attention(q, k, v, GRID)),
            ("vmonarch.dense_attention", vmonarch.dense_attention)], (q, k, v)


@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize("argnum", [0, 1, 2])
def test_forward_ad_raises(which, argnum):
    import torch.autograd.forward_ad as fwAD

    (name, fn), args = _ops()[0][which], _ops()[1]
    with fwAD.dual_level():
        duals = list(args)
        duals[argnum] = fwAD.make_dual(args[argnum], torch.randn_like(args[argnum]))
        with pytest.raises(NotImplementedError, match=re.escape(name) + ".*forward-mode"):
            fn(*duals)


@pytest.mark.parametrize("which", [0, 1])
def test_torch_func_jvp_raises(which):
    (name, fn), (q, k, v) = _ops()[0][which], _ops()[1]
    with pytest.raises(NotImplementedError, match=re.escape(name) + ".*forward-mode"):
        torch.func.jvp(lambda q: fn(q, k, v), (q,), (torch.randn_like(q),))


def test_forward_ad_without_tangents_on_the_op_still_runs():
    """A dual level that gives vmonarch's inputs no tangent is not forward AD through vmonarch."""
    import torch.autograd.forward_ad as fwAD

    q, k, v = _qkv()
    with fwAD.dual_level():
        out = vmonarch.attention(q, k, v, GRID)
    torch.testing.assert_close(out, vmonarch.attention(q, k, v, GRID))


def test_reverse_mode_is_unchanged():
    # reverse mode (tests/python/test_backward_cpu.py) still works beside the forward-mode refusal
    q, k, v = (x.requires_grad_() for x in _qkv())
    vmonarch.attention(q, k, v, GRID).sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0 for t in (q, k, v))


# --- argument types and ranges ----------------------------------------------------------------------------
def _attn(**kw):
    q, k, v = _qkv()
    return vmonarch.attention(q, k, v, **kw)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(grid=GRID, recompute_first_frame="False"), TypeError, r"'recompute_first_frame' is 'False' \(str\), expected a bool"),
    (dict(grid=GRID, recompute_first_frame=0), TypeError, "recompute_first_frame"),
    (dict(grid=GRID, return_lse=1), TypeError, "return_lse"),
    (dict(grid=GRID, iterations=2.7), TypeError, r"'iterations' is 2.7 \(float\), expected an int"),
    (dict(grid=GRID, iterations=2.0), TypeError, "iterations"),
    (dict(grid=GRID, iterations="2"), TypeError, "iterations"),
    (dict(grid=GRID, iterations=True), TypeError, "iterations"),
    (dict(grid=GRID, iterations=0), ValueError, "iterations"),
    (dict(grid=GRID, iterations=2**70), ValueError, "iterations"),
    (dict(grid=(2.0, 2, 3)), TypeError, r"'grid' is \(2.0, 2, 3\).*expected"),
    (dict(grid=("2", 2, 3)), TypeError, "grid"),
    (dict(grid=(True, 2, 6)), TypeError, "grid"),
    (dict(grid=(2, 2)), ValueError, "grid"),
    (dict(grid=5), TypeError, "grid"),
    (dict(grid=(-2, -2, 3)), ValueError, "grid"),
    (dict(grid=(2**62, 2**62, 4)), ValueError, "grid"),
    (dict(grid=(2**64, 1, 1)), ValueError, "grid"),
    (dict(grid=GRID, clamp="0.1"), TypeError, "clamp"),
    (dict(grid=GRID, clamp=True), TypeError, "clamp"),
    (dict(grid=GRID, clamp=math.nan), ValueError, "clamp"),
    (dict(grid=GRID, clamp=math.inf), ValueError, "clamp"),
    (dict(grid=GRID, scale="1"), TypeError, "scale"),
    (dict(grid=GRID, scale=False), TypeError, "scale"),
    (dict(grid=GRID, scale=math.nan), ValueError, "scale"),
    (dict(grid=GRID, scale=0.0), ValueError, "scale"),
    (dict(grid=GRID, layout=b"bshd"), ValueError, "layout"),
])
def test_attention_argument_types(kw, exc, match):
    with pytest.raises(exc, match=match):
        _attn(**kw)


def test_accepted_argument_forms():
    """Plain ints in any sequence, numpy integers, ints for floats, torch.Size."""
    np = pytest.importorskip("numpy")
    q, k, v = _qkv()
    want = vmonarch.attention(q, k, v, GRID, iterations=2, clamp=0.1, scale=0.125)
    for grid, iterations, clamp, scale in [([2, 2, 3], 2, 0.1, 0.125), (torch.Size(GRID), np.int64(2), 0.1, 0.125),
                                           (tuple(np.array(GRID)), 2, np.float64(0.1), np.float32(0.125))]:
        got = vmonarch.attention(q, k, v, grid, iterations=iterations, clamp=clamp, scale=scale)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(vmonarch.attention(q, k, v, GRID, clamp=0), vmonarch.attention(q, k, v, GRID, clamp=0.0))


@pytest.mark.parametrize("kw,exc,match", [
    (dict(return_lse="yes"), TypeError, "return_lse"),
    (dict(scale="0.1"), TypeError, "scale"),
    (dict(scale=-1.0), ValueError, "scale"),
])
def test_dense_attention_argument_types(kw, exc, match):
    q, k, v = _qkv()
    with pytest.raises(exc, match=match):
        vmonarch.dense_attention(q, k, v, **kw)


# --- flops: types, ranges and overflow --------------------------------------------------------------------
@pytest.mark.parametrize("args,kw,exc,match", [
    (((4, 8, 8), 0, 2), {}, ValueError, r"'head_dim' is 0, expected >= 1"),
    (((4, 8, 8), 64, -3), {}, ValueError, r"'heads' is -3, expected >= 1"),
    (((4, 8, 8), 64, 2), dict(batch=0), ValueError, r"'batch' is 0, expected >= 1"),
    (((4, 8, 8), 64, 2), dict(iterations=0), ValueError, r"'iterations' is 0, expected 1\.\.8"),
    (((4, 8, 8), 64, 2), dict(iterations=9), ValueError, "iterations"),
    (((4, 8, 8), 64, 2), dict(iterations=2.5), TypeError, "iterations"),
    (((4, 8, 8), 64.0, 2), {}, TypeError, "head_dim"),
    (((4, 8, 8), 64, "2"), {}, TypeError, "heads"),
    (((4, 8, 8), 64, 2), dict(recompute_first_frame="False"), TypeError, "recompute_first_frame"),
    (((4.0, 8, 8), 64, 2), {}, TypeError, "grid"),
    (((0, 8, 8), 64, 2), {}, ValueError, "grid"),
    (((-4, -8, 8), 64, 2), {}, ValueError, "grid"),
    (((2**31, 2**31, 2**31), 64, 2), {}, ValueError, "overflows int64"),
    (((2**20, 2**20, 2**20), 128, 40), dict(batch=2**10), ValueError, "overflows int64"),
])
def test_flops_rejects_bad_arguments(args, kw, exc, match):
    with pytest.raises(exc, match=match):
        vmonarch.flops(*args, **kw)


def test_flops_through_torch_ops_checks_too():
    with pytest.raises(ValueError, match="overflows int64"):
        torch.ops.vmonarch.flops([2**31, 2**31, 2**31], 64, 1, 1, 2, True)
    with pytest.raises(ValueError, match="head_dim"):
        torch.ops.vmonarch.flops([4, 8, 8], 0, 1, 1, 2, True)


def test_flops_at_the_largest_sizes_that_fit_are_positive_and_consistent():
    f = vmonarch.flops((2**20, 2**10, 2**10), 128, 8, batch=2)
    assert f.dense > f.vmonarch > 0 and f.r_steps > 0 and f.l_steps > 0 and f.recompute > 0
    assert f.r_steps + f.l_steps + f.recompute == pytest.approx(f.vmonarch, rel=1e-12)


# --- vmonarch.wan.enable checks at the call ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model():
    pytest.importorskip("diffusers")
    from wan_helpers import tiny_wan

    return tiny_wan(layers=3)


@pytest.mark.parametrize("options,exc,match", [
    (dict(iterations=0), ValueError, r"'iterations' is 0, expected an int in 1\.\.8"),
    (dict(iterations=2.7), TypeError, "iterations"),
    (dict(iterations="2"), TypeError, "iterations"),
    (dict(clamp=-1.0), ValueError, "clamp"),
    (dict(clamp=math.nan), ValueError, "clamp"),
    (dict(recompute_first_frame="False"), TypeError, "recompute_first_frame"),
    (dict(dense_steps=-1), ValueError, "dense_steps"),
    (dict(dense_steps=1.5), TypeError, "dense_steps"),
    (dict(dense_layers=[99]), ValueError, r"'dense_layers' contains 99, expected block indices 0\.\.2"),
    (dict(dense_layers=[-1]), ValueError, "dense_layers"),
    (dict(dense_layers=[0.0]), TypeError, "dense_layers"),
    (dict(dense_layers=3), TypeError, "dense_layers"),
    (dict(attention_fn="reference"), TypeError, "attention_fn"),
    (dict(cast_float32_on_cuda=torch.int8), ValueError, "cast_float32_on_cuda"),
    (dict(cast_float32_on_cuda="bf16"), TypeError, "cast_float32_on_cuda"),
])
def test_wan_enable_checks_its_options(tiny_model, options, exc, match):
    import vmonarch.wan

    with pytest.raises(exc, match=match):
        vmonarch.wan.enable(tiny_model, **options)
    assert not hasattr(tiny_model, "_vmonarch_state")   # nothing half-installed


def test_wan_enable_checks_a_given_schedule_against_the_model(tiny_model):
    import vmonarch.wan

    schedule = vmonarch.wan.VMonarchSchedule(dense_layers=[1, 5])
    with pytest.raises(ValueError, match="'dense_layers' contains 5"):
        vmonarch.wan.enable(tiny_model, schedule)
    assert not hasattr(tiny_model, "_vmonarch_state")
    vmonarch.wan.enable(tiny_model, dense_layers=[0, 2])
    vmonarch.wan.disable(tiny_model)
