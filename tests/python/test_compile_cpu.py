"""torch.compile(fullgraph=True) traces through the operators (fake kernels) on the CPU."""
from __future__ import annotations

import pytest
import torch

import vmonarch
from conftest import make_qkv


class TinyVideoAttention(torch.nn.Module):
    def __init__(self, dim=128, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.out = torch.nn.Linear(dim, dim)

    def forward(self, x, grid):
        q, k, v = (t.unflatten(-1, (self.heads, -1)) for t in self.qkv(x).chunk(3, dim=-1))
        o, lse = vmonarch.attention(q, k, v, grid=grid, return_lse=True)
        d = vmonarch.dense_attention(q, k, v, layout="bshd")
        return self.out(o.flatten(2)) + 0.5 * d.flatten(2), lse


@pytest.mark.parametrize("backend", ["inductor", "aot_eager"])
def test_compile_fullgraph(backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = TinyVideoAttention().eval()
    x = torch.randn(2, 3 * 2 * 5, 128)
    with torch.no_grad():
        want, want_lse = model(x, (3, 2, 5))
        compiled = torch.compile(model, fullgraph=True, backend=backend)
        got, got_lse = compiled(x, (3, 2, 5))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_lse, want_lse, rtol=1e-5, atol=1e-5)


def test_compile_dynamic_shapes():
    torch._dynamo.reset()
    q, k, v = make_qkv("random", 1, 2, (3, 2, 2), 64, "bhsd", dtype=torch.float32)

    def f(q, k, v, T, H, W):
        return vmonarch.attention(q * 1.0, k, v, grid=(T, H, W), layout="bhsd", iterations=1) + 1

    compiled = torch.compile(f, fullgraph=True, dynamic=True, backend="aot_eager")
    for grid in [(3, 2, 2), (5, 1, 3), (1, 2, 7)]:
        q, k, v = make_qkv("random", 1, 2, grid, 64, "bhsd", dtype=torch.float32, seed=sum(grid))
        torch.testing.assert_close(compiled(q, k, v, *grid), f(q, k, v, *grid))


def test_compile_reports_argument_errors():
    torch._dynamo.reset()
    q, k, v = make_qkv("random", 1, 2, (2, 2, 2), 64, "bshd", dtype=torch.float32)
    compiled = torch.compile(lambda q, k, v: vmonarch.attention(q, k, v, grid=(3, 2, 2)), fullgraph=True,
                             backend="aot_eager")
    with pytest.raises(Exception, match="grid|tokens"):
        compiled(q, k, v)
