"""Argument checks of the Python API, in the C++ library's style: "fn: argument 'x' is 2.7 (float),
expected an int in 1..8". Types raise TypeError, values ValueError.

bool arguments take True/False only; int arguments take ints (numpy integers too) but not bools, floats
or strings; float arguments take ints and floats (numpy too) but not bools or strings. Under
torch.compile, symbolic ints and floats (torch.SymInt, torch.SymFloat) pass the type checks and their
values are left to the operator's own checks (the fake kernel and the C++ library).
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple

import torch

INT64_MAX = 2**63 - 1
# Alternating R/L steps t (spec §3): the C++ library accepts 1..8.
ITERATIONS = (1, 8)


def _shown(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def _symbolic(value) -> bool:
    return isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool))


def check_bool(fn: str, name: str, value) -> bool:
    if isinstance(value, torch.SymBool) or isinstance(value, bool):
        return value
    raise TypeError(f"{fn}: argument '{name}' is {_shown(value)}, expected a bool (True or False)")


def check_int(fn: str, name: str, value, lo: int = -INT64_MAX - 1, hi: int = INT64_MAX, what: str = ""):
    """An int in lo..hi (what: how the range reads in messages, default "an int in lo..hi")."""
    expected = what or (f"an int in {lo}..{hi}" if hi != INT64_MAX else f"an int >= {lo}")
    if isinstance(value, torch.SymInt):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{fn}: argument '{name}' is {_shown(value)}, expected {expected}")
    value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"{fn}: argument '{name}' is {value}, expected {expected}")
    return value


def check_float(fn: str, name: str, value, lo: Optional[float] = None, lo_open: bool = False, what: str = ""):
    """A finite float (ints accepted) >= lo (> lo when lo_open)."""
    bound = "" if lo is None else f" {'>' if lo_open else '>='} {lo:g}"
    expected = what or f"a finite float{bound}"
    if isinstance(value, (torch.SymFloat, torch.SymInt)):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fn}: argument '{name}' is {_shown(value)}, expected {expected}")
    value = float(value)
    if not math.isfinite(value) or (lo is not None and (value <= lo if lo_open else value < lo)):
        raise ValueError(f"{fn}: argument '{name}' is {value!r}, expected {expected}")
    return value


def check_scale(fn: str, scale):
    """The softmax scale: None (1/sqrt(d)) or a finite float > 0."""
    if scale is None:
        return None
    return check_float(fn, "scale", scale, lo=0.0, lo_open=True, what="a finite float > 0 or None (1/sqrt(d))")


def check_options(fn: str, iterations, clamp, recompute_first_frame, scale) -> Tuple:
    """(iterations, clamp, recompute_first_frame, scale), the options of spec §3, checked: t = iterations
    alternating R/L steps in 1..8, the clamp of cR >= 0 (0 disables it), a bool, and check_scale's scale."""
    return (check_int(fn, "iterations", iterations, *ITERATIONS),
            check_float(fn, "clamp", clamp, lo=0.0, what="a finite float >= 0 (0 disables the clamp)"),
            check_bool(fn, "recompute_first_frame", recompute_first_frame),
            check_scale(fn, scale))


def check_grid(fn: str, grid) -> Tuple:
    """(T, H, W): three ints >= 1, each fitting int64. Whether T*H*W overflows is the C++ library's
    check (vmonarch::VideoGrid::tokens), reached through the operator."""
    expected = "(T, H, W): three ints >= 1 (frames, height and width in tokens)"
    if isinstance(grid, (str, bytes)) or not hasattr(grid, "__len__") or not hasattr(grid, "__iter__"):
        raise TypeError(f"{fn}: argument 'grid' is {_shown(grid)}, expected {expected}")
    grid = tuple(grid)
    if len(grid) != 3:
        raise ValueError(f"{fn}: argument 'grid' is {grid!r} ({len(grid)} entries), expected {expected}")
    checked = []
    for value in grid:
        if isinstance(value, torch.SymInt):
            checked.append(value)
        elif isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{fn}: argument 'grid' is {grid!r}, expected {expected}; "
                            f"{_shown(value)} is not an int")
        elif not 1 <= int(value) <= INT64_MAX:
            raise ValueError(f"{fn}: argument 'grid' is {grid!r}, expected {expected}")
        else:
            checked.append(int(value))
    return tuple(checked)
