"""How often a backward of vmonarch.attention reruns the forward (spec §7): lean mode reruns it once, inside
attention_backward; the saved state never; the plain operator without its LSE output once, as the training
forward with the state kept, so that attention_backward does not rerun it a second time. Observed at the
dispatcher (the operators the backward calls, and whether attention_backward gets a saved state)."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import vmonarch
from conftest import has_cuda_kernels, make_qkv

FORWARDS = ("attention", "attention_train", "attention_exact_groups", "attention_exact_train")


class OperatorLog(TorchDispatchMode):
    """Names of the vmonarch operators called, with ("attention_backward", has_saved_state) for the backward."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        if name.startswith("vmonarch::"):
            short = name.split("::", 1)[1]
            if short in ("attention_backward", "attention_exact_backward"):
                index = 15 if short == "attention_backward" else 20
                saved = kwargs.get("saved", args[index] if len(args) > index else None)
                self.calls.append((short, saved is not None and saved.numel() > 0))
            else:
                self.calls.append((short, None))
        return func(*args, **kwargs)


def backward_calls(device, forward):
    dtype = torch.float64 if device == "cpu" else torch.bfloat16
    grid = (3, 2, 5)
    q, k, v = make_qkv("random", 1, 2, grid, 64 if device == "cuda" else 8, "bshd", dtype=dtype, device=device,
                       seed=4)
    leaves = [x.requires_grad_(True) for x in (q, k, v)]
    out = forward(leaves, grid)
    log = OperatorLog()
    with log:
        torch.autograd.grad(out.float().sum(), leaves)
    return log.calls


def forward_reruns(calls):
    """Forward passes a backward runs: its forward operators, plus one inside a lean attention_backward."""
    reruns = sum(1 for name, _ in calls if name in FORWARDS)
    return reruns + sum(1 for name, saved in calls
                        if name in ("attention_backward", "attention_exact_backward") and not saved)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not has_cuda_kernels(),
                                                                 reason="needs a CUDA device and kernels"))]


@pytest.mark.parametrize("device", DEVICES)
def test_lean_mode_reruns_the_forward_once(device):
    calls = backward_calls(device, lambda x, grid: vmonarch.attention(*x, grid=grid))
    assert calls == [("attention_backward", False)]
    assert forward_reruns(calls) == 1


@pytest.mark.parametrize("device", DEVICES)
def test_saved_state_reruns_nothing(device):
    calls = backward_calls(device, lambda x, grid: vmonarch.attention(*x, grid=grid, save_state=True))
    assert calls == [("attention_backward", True)]
    assert forward_reruns(calls) == 0


@pytest.mark.parametrize("device", DEVICES)
def test_plain_operator_without_lse_reruns_the_forward_once(device):
    def plain(x, grid):
        return torch.ops.vmonarch.attention(*x, list(grid), 2, 0.1, True, None, "bshd", False)[0]

    calls = backward_calls(device, plain)
    assert forward_reruns(calls) == 1, calls
    assert ("attention_backward", True) in calls


@pytest.mark.parametrize("device", DEVICES)
def test_plain_operator_with_lse_uses_it(device):
    def plain(x, grid):
        return torch.ops.vmonarch.attention(*x, list(grid), 2, 0.1, True, None, "bshd", True)[0]

    calls = backward_calls(device, plain)
    assert calls == [("attention_backward", False)]


@pytest.mark.parametrize("device", DEVICES)
def test_plain_exact_groups_operator_without_lse_reruns_the_forward_once(device):
    def plain(x, grid):
        return torch.ops.vmonarch.attention_exact_groups(*x, list(grid), 2, 0.1, True, None, "bshd", False, 1)[0]

    calls = backward_calls(device, plain)
    assert ("attention_exact_backward", True) in calls, calls
    assert forward_reruns(calls) == 1, calls
