"""The reference interpreter: runs graphs, checks inputs, lets observers see every node."""

import numpy as np
import pytest

from sbc.ir import Graph, SignatureError, Sym, TensorType
from sbc.ir.interpreter import run


def graph():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (Sym.var("batch"), 3)))
    y = g.add1("Relu", g.add1("Sub", x, g.add_param("c", np.float32([1, 2, 3]))))
    g.set_outputs([y], ["y"])
    return g


def test_runs_at_any_batch_size():
    for batch in (1, 4):
        x = np.random.default_rng(batch).normal(size=(batch, 3)).astype(np.float32)
        np.testing.assert_array_equal(run(graph(), {"x": x})["y"], np.maximum(x - [1, 2, 3], 0))


def test_observer_sees_every_node_in_order():
    seen = []
    run(graph(), {"x": np.zeros((2, 3), np.float32)}, observe=lambda n, outs: seen.append(n.op))
    assert seen == ["Sub", "Relu"]


@pytest.mark.parametrize("feeds, message", [
    ({"y": np.zeros((2, 3), np.float32)}, "missing \\['x'\\]"),
    ({"x": np.zeros((2, 3), np.float64)}, "dtype f32"),
    ({"x": np.zeros((2, 4), np.float32)}, "shape \\[batch, 3\\]"),
    ({"x": np.zeros((2,), np.float32)}, "rank 2"),
])
def test_bad_inputs_are_named(feeds, message):
    with pytest.raises(SignatureError, match=message):
        run(graph(), feeds)
