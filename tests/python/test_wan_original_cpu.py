"""vmonarch.wan_original on a stand-in for the Wan2.1 code base's wan.modules.model.

The stand-in has what the shim relies on: a module-level flash_attention(q, k, v, q_lens, k_lens, ...,
window_size, ...) that the module's attention classes call by name; WanSelfAttention.forward(x, seq_lens,
grid_sizes, freqs) calling it with k_lens=seq_lens; a cross-attention subclass overriding forward; and
WanModel.forward(x, t, ...) with .blocks[i].self_attn.
"""
from __future__ import annotations

import types

import pytest
import torch

import vmonarch
import vmonarch.wan_original as wo
from conftest import reference_attention, rel_l2


def _dense_flash_attention(calls):
    def flash_attention(q, k, v, q_lens=None, k_lens=None, dropout_p=0.0, softmax_scale=None, q_scale=None,
                        causal=False, window_size=(-1, -1), deterministic=False, dtype=torch.bfloat16, version=None):
        calls.append(window_size)
        logits = torch.einsum("bqhd,bkhd->bhqk", q, k) * (softmax_scale or q.shape[-1] ** -0.5)
        if k_lens is not None:
            mask = torch.arange(k.shape[1])[None, :] >= k_lens[:, None]
            logits = logits.masked_fill(mask[:, None, None, :], float("-inf"))
        return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(logits, -1), v).type(q.dtype)
    return flash_attention


def make_fake_wan_module():
    m = types.ModuleType("fake_wan_model")
    m.calls = []
    m.flash_attention = _dense_flash_attention(m.calls)

    class WanSelfAttention(torch.nn.Module):
        def __init__(self, dim, heads, window_size=(-1, -1)):
            super().__init__()
            self.heads, self.window_size = heads, window_size
            self.q, self.k, self.v, self.o = (torch.nn.Linear(dim, dim, dtype=torch.float64) for _ in range(4))

        def forward(self, x, seq_lens, grid_sizes, freqs):
            b, s, n = x.shape[0], x.shape[1], self.heads
            q, k, v = (f(x).view(b, s, n, -1) for f in (self.q, self.k, self.v))
            out = m.flash_attention(q=q, k=k, v=v, k_lens=seq_lens, window_size=self.window_size)
            return self.o(out.flatten(2))

    class WanCrossAttention(WanSelfAttention):
        def forward(self, x, context, context_lens):
            b, n = x.shape[0], self.heads
            q = self.q(x).view(b, -1, n, self.q.out_features // n)
            k = self.k(context).view(b, -1, n, self.q.out_features // n)
            v = self.v(context).view(b, -1, n, self.q.out_features // n)
            return self.o(m.flash_attention(q, k, v, k_lens=context_lens).flatten(2))

    class Block(torch.nn.Module):
        def __init__(self, dim, heads):
            super().__init__()
            self.self_attn = WanSelfAttention(dim, heads)
            self.cross_attn = WanCrossAttention(dim, heads)

    class WanModel(torch.nn.Module):
        def __init__(self, dim=128, heads=2, layers=2):
            super().__init__()
            self.blocks = torch.nn.ModuleList(Block(dim, heads) for _ in range(layers))

        def forward(self, x, t, context, seq_lens, grid_sizes):
            for blk in self.blocks:
                x = x + blk.self_attn(x, seq_lens, grid_sizes, None)
                x = x + blk.cross_attn(x, context, None)
            return x

    m.WanSelfAttention, m.WanCrossAttention, m.WanModel = WanSelfAttention, WanCrossAttention, WanModel
    return m


@pytest.fixture
def fake():
    torch.manual_seed(0)
    m = make_fake_wan_module()
    yield m
    wo.uninstall(m)


def test_self_attention_uses_vmonarch_on_each_sample(fake, ref):
    attn = fake.WanSelfAttention(128, 2)
    grids = torch.tensor([[3, 2, 2], [2, 2, 2]])
    seq_lens = torch.tensor([12, 8])
    x = torch.randn(2, 12, 128, dtype=torch.float64)
    wo.install(module=fake)
    captured = {}
    original_forward = attn.o.forward

    def grab(y):
        captured["attn"] = y.detach().clone()
        return original_forward(y)

    attn.o.forward = grab
    attn(x, seq_lens, grids, None)
    out = captured["attn"].unflatten(-1, (2, 64))
    q, k, v = (f(x).view(2, 12, 2, 64) for f in (attn.q, attn.k, attn.v))
    for b, (grid, n) in enumerate([((3, 2, 2), 12), ((2, 2, 2), 8)]):
        want = reference_attention(ref, q[b:b + 1, :n], k[b:b + 1, :n], v[b:b + 1, :n], grid, "bshd",
                                   return_lse=False)
        assert rel_l2(out[b:b + 1, :n], want) < 1e-10
        assert torch.all(out[b, n:] == 0)
    assert fake.calls == []  # the original flash_attention was not called


def test_cross_attention_and_windowed_calls_stay_original(fake):
    model = fake.WanModel()
    x = torch.randn(1, 12, 128, dtype=torch.float64)
    context = torch.randn(1, 5, 128, dtype=torch.float64)
    args = (x, torch.tensor([500.0]), context, torch.tensor([12]), torch.tensor([[3, 2, 2]]))
    wo.install(model, module=fake)
    model(*args)
    assert len(fake.calls) == 2       # the two cross-attentions
    fake.calls.clear()
    model.blocks[0].self_attn.window_size = (4, 4)
    model(*args)
    assert fake.calls == [(4, 4), (-1, -1), (-1, -1)]


def test_uninstall_restores_the_original(fake):
    model = fake.WanModel()
    args = (torch.randn(1, 12, 128, dtype=torch.float64), torch.tensor([500.0]),
            torch.randn(1, 5, 128, dtype=torch.float64), torch.tensor([12]), torch.tensor([[3, 2, 2]]))
    original = fake.flash_attention
    dense = model(*args)
    wo.install(model, module=fake)
    ours = model(*args)
    wo.uninstall(fake)
    assert fake.flash_attention is original
    assert torch.equal(model(*args), dense)
    assert rel_l2(ours, dense) > 1e-6


def test_dense_steps_and_layers(fake):
    model = fake.WanModel(layers=2)
    ctx = torch.randn(1, 5, 128, dtype=torch.float64)
    x = torch.randn(1, 12, 128, dtype=torch.float64)
    common = (ctx, torch.tensor([12]), torch.tensor([[3, 2, 2]]))
    dense = {t: model(x, torch.tensor([t]), *common) for t in (999.0, 900.0)}
    schedule = wo.install(model, module=fake, dense_steps=1)
    assert torch.equal(model(x, torch.tensor([999.0]), *common), dense[999.0])
    assert not torch.equal(model(x, torch.tensor([900.0]), *common), dense[900.0])
    assert schedule.step == 1
    wo.install(model, module=fake, dense_layers=[0, 1])
    assert torch.equal(model(x, torch.tensor([900.0]), *common), dense[900.0])


def test_mismatched_grid_falls_back_with_a_warning(fake):
    attn = fake.WanSelfAttention(128, 2)
    wo.install(module=fake)
    x = torch.randn(1, 12, 128, dtype=torch.float64)
    with pytest.warns(UserWarning, match="do not match"):
        attn(x, torch.tensor([12]), torch.tensor([[2, 2, 2]]), None)
    assert len(fake.calls) == 1
