"""vmonarch.torch_impl on CUDA (bf16 inputs, float32 compute) against the fp64 reference and the operator.
Runs on a GPU machine: scripts/gpu_python_suite.sh --all (skipped without CUDA)."""
from __future__ import annotations

import pytest
import torch

import vmonarch
import vmonarch.torch_impl as ti
from conftest import has_cuda_kernels, make_qkv, rel_l2, requires_cuda
from test_torch_impl_cpu import reference_with_grads


@requires_cuda
@pytest.mark.parametrize("entropy_grad", [False, True])
@pytest.mark.parametrize("grid,d", [((5, 4, 7), 64), ((4, 6, 6), 128)])
def test_cuda_bf16_gradients_match_reference(grid, d, entropy_grad, ref):
    q, k, v = make_qkv("video", 2, 2, grid, d, "bshd", seed=3)
    q, k, v = (x.to("cuda", torch.bfloat16).requires_grad_(True) for x in (q, k, v))
    out, lse = ti.attention(q, k, v, grid, return_lse=True, entropy_grad=entropy_grad)
    dout, dlse = torch.randn_like(out, dtype=torch.float32), torch.randn_like(lse)
    grads = torch.autograd.grad((out.float() * dout).sum() + (lse * dlse).sum(), (q, k, v))
    want = reference_with_grads(ref, q.cpu(), k.cpu(), v.cpu(), grid, "bshd", dout.double().cpu(),
                                dlse.double().cpu(), entropy_grad=entropy_grad)
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, *grads), want):
        assert rel_l2(a, b) < 1e-2, name
    if has_cuda_kernels():
        with torch.no_grad():
            op = vmonarch.attention(q, k, v, grid)
        assert rel_l2(out, op) < 2e-2
