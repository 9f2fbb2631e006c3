"""Find the first node where the compiled model diverges from the reference interpreter.

The graph is compiled once more with every run-time value as an extra output; both sides run
on the same inputs and the values are compared in topological order.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from sbc.ir import Graph, Node
from sbc.ir.interpreter import run as interpret


@dataclass
class Divergence:
    node: Node
    output: str
    max_abs_diff: float
    compiled: np.ndarray
    reference: np.ndarray

    def __str__(self):
        return (f"first divergence at {self.node.where()} output %{self.output}: "
                f"max |diff| {self.max_abs_diff:.3g}")


def _close(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "fc":
        return bool(np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True))
    return bool(np.array_equal(a, b))


def first_divergence(graph: Graph, feeds: dict[str, np.ndarray], *, rtol=1e-4, atol=1e-4
                     ) -> Divergence | None:
    """None when every intermediate value agrees within tolerance."""
    import sbc
    probe = copy.deepcopy(graph)
    values = [v for n in probe.nodes for v in n.outputs if v.data is None]
    probe.set_outputs(values, [f"probe:{v.name}" for v in values])
    # the reference first: it checks the inputs (names, shapes, token ids in range) and says
    # what is wrong in one line before the slow compile, and before compiled code reads them
    reference = interpret(probe, feeds)
    compiled = sbc.compile(probe, passes=[]).run(feeds)
    for v in values:
        key = f"probe:{v.name}"
        got, want = compiled[key], reference[key]
        if not _close(got, want, rtol, atol):
            diff = np.abs(got.astype(np.float64) - want) if got.shape == want.shape else np.array(np.inf)
            return Divergence(v.producer, v.name, float(np.nanmax(diff)) if diff.size else 0.0, got, want)
    return None
