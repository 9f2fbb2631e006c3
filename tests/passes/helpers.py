"""Shared checks for pass tests. `check_pass` makes the three checks every pass test needs:
the IR after the pass (returned for the test to inspect), numerical equality with the graph
before the pass (reference interpreter, random inputs) and the verifier."""

from __future__ import annotations

import copy

import numpy as np

from sbc.ir import Graph, numpy_dtype
from sbc.ir.dims import Sym
from sbc.ir.interpreter import run
from sbc.ir.printer import print_graph
from sbc.ir.verifier import verify


def sym(name: str) -> Sym:
    return Sym.var(name)


def random_feeds(graph: Graph, sizes: dict[str, int] | None = None, seed: int = 0) -> dict:
    """Random arrays for the graph's inputs; each single-symbol dim gets sizes[name] (or 3)."""
    sizes = sizes or {}
    rng = np.random.default_rng(seed)
    feeds = {}
    for v in graph.inputs:
        shape = [d if isinstance(d, int) else sizes.get(str(d), 3) for d in v.shape]
        dtype = numpy_dtype(v.dtype)
        if dtype.kind == "f":
            feeds[v.name] = rng.normal(size=shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[v.name] = rng.random(size=shape) < 0.5
        else:
            feeds[v.name] = rng.integers(0, 5, size=shape).astype(dtype)
    return feeds


def check_pass(pass_, graph: Graph, feeds: dict | None = None, sizes: dict | None = None,
               tolerance: float = 1e-6):
    """Run `pass_` on `graph`; check it verifies and computes what it did before.

    Returns (text of the IR before, the graph after, modified). Numerics are compared on
    `feeds` (random by default) exactly up to float rounding (passes only move work around;
    fusions that reorder sums pass a larger `tolerance`).
    """
    before = copy.deepcopy(graph)
    verify(before)  # a test graph that is broken to begin with proves nothing
    feeds = feeds if feeds is not None else random_feeds(before, sizes)
    expected = run(before, feeds)
    result = pass_.run(graph)
    verify(result.graph)
    got = run(result.graph, feeds)
    assert list(got) == list(expected), "graph output names changed"
    for name in expected:
        assert got[name].dtype == expected[name].dtype, name
        np.testing.assert_allclose(got[name], expected[name], rtol=tolerance, atol=tolerance,
                                   err_msg=name)
    return print_graph(before), result.graph, result.modified


run_pass = check_pass  # the older name, kept for tests of other passes


def assert_stable(pass_, graph: Graph) -> None:
    """Running the pass again changes nothing: what the fixed-point loop relies on."""
    assert not pass_.run(graph).modified


def ops(graph: Graph) -> dict[str, int]:
    return graph.op_counts()
