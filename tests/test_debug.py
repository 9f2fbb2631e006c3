"""first_divergence names the first node whose compiled output differs from the reference."""

import numpy as np
from tvm import te

import sbc.codegen.lower as lower
from sbc.debug import first_divergence
from sbc.ir import Graph, TensorType


def graph():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (4, 8)))
    h = g.add1("Relu", g.add1("Sub", x, g.add1("Constant", value=np.float32(0.5))), name="the_relu")
    g.set_outputs([g.add1("Exp", h)], ["y"])
    return g


def test_no_divergence_when_everything_agrees():
    x = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    assert first_divergence(graph(), {"x": x}) is None


def test_names_a_deliberately_broken_lowering(monkeypatch):
    broken = lower.Rule(lambda ctx, node, x: te.compute(x.shape, lambda *i: x[i] * 2.0), ())
    monkeypatch.setitem(lower.RULES, "Relu", broken)
    x = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    found = first_divergence(graph(), {"x": x})
    assert found is not None and found.node.name == "the_relu"
    assert "first divergence at node 'the_relu' (Relu)" in str(found)
