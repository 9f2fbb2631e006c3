"""Helpers shared by op declarations: broadcasting, axis handling, known input values."""

from __future__ import annotations

import numpy as np

from sbc.ir.assumptions import require
from sbc.ir.dims import Dim, Sym
from sbc.ir.registry import OpError
from sbc.ir.types import TensorType


def broadcast_shapes(*shapes) -> tuple[Dim, ...]:
    """NumPy broadcasting over possibly symbolic dims (equal, or one of them is 1)."""
    rank = max(len(s) for s in shapes)
    out = []
    for dims in zip(*[(1,) * (rank - len(s)) + tuple(s) for s in shapes]):
        result: Dim = 1
        for d in dims:
            if d == 1:
                continue
            if result == 1:
                result = d
            elif not require(d, "==", result, "broadcast dims differ (a run-time 1 would "
                             "need a broadcast the kernel was not compiled for)"):
                raise OpError(f"shapes {[list(map(str, s)) for s in shapes]} do not broadcast")
            elif isinstance(result, Sym) and not isinstance(d, Sym):
                result = d  # a concrete size is the better-known one
        out.append(result)
    return tuple(out)


def normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise OpError(f"axis {axis} is out of range for rank {rank}")
    return axis % max(rank, 1)


def known(value, what: str) -> np.ndarray:
    """The compile-time value of an input (a shape, axes, ...); raise if it is not known."""
    if value is None or value.data is None:
        raise OpError(f"{what} must be known at compile time (computed from shapes or "
                      f"constants), but depends on run-time data")
    return value.data


def known_ints(value, what: str) -> list:
    """A known 1-D integer input as a list of ints / symbolic dims."""
    return [d if isinstance(d, Sym) else int(d) for d in np.asarray(known(value, what)).reshape(-1)]


def same_type(node) -> list[TensorType]:
    return [node.inputs[0].type]
