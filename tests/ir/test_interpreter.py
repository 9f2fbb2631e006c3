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


def test_only_plain_symbols_are_bound_from_input_shapes():
    """An input whose dim is an expression (min(seq, 8), a chunk count) is checked against
    the symbols the other inputs bind; it binds nothing itself, in whichever order."""
    from sbc.ir.dims import parse_dim
    from sbc.ir.types import bind_symbols
    for order in (1, -1):
        inputs = [("head", TensorType("f32", (parse_dim("min(seq, 8)"),))),
                  ("chunks", TensorType("f32", (parse_dim("(seq + 3) // 4"),))),
                  ("x", TensorType("f32", (Sym.var("seq"),)))][::order]
        feeds = {"x": np.zeros(10), "head": np.zeros(8), "chunks": np.zeros(3)}
        feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
        assert bind_symbols(inputs, feeds) == {"seq": 10}
        with pytest.raises(SignatureError, match=r"'head' must have shape \[min\(seq, 8\)\] with seq=10"):
            bind_symbols(inputs, {**feeds, "head": np.zeros(10, np.float32)})
