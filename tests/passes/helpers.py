"""The three checks every pass test makes: structure after, numerics equal to before, verifier."""

import copy

import numpy as np

from sbc.ir import Graph
from sbc.ir.dims import Sym
from sbc.ir.interpreter import run
from sbc.ir.printer import print_graph
from sbc.ir.verifier import verify


def random_feeds(graph: Graph, sizes=None, seed=0):
    sizes = sizes or {}
    rng = np.random.default_rng(seed)
    feeds = {}
    for v in graph.inputs:
        shape = [d if isinstance(d, int) else sizes.get(str(d), 3) for d in v.shape]
        feeds[v.name] = rng.normal(size=shape).astype(np.dtype({"f32": "float32"}.get(v.dtype, v.dtype)))
    return feeds


def run_pass(pass_, graph: Graph):
    """Run `pass_` on a copy; check verifier and numerics; return (before_text, after, modified)."""
    before = copy.deepcopy(graph)
    feeds = random_feeds(before)
    expected = run(before, feeds)
    result = pass_.run(graph)
    verify(result.graph)
    got = run(result.graph, feeds)
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-6)
    return print_graph(before), result.graph, result.modified


def sym(name):
    return Sym.var(name)
