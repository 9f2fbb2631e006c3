"""dce: unused nodes and params go (whole dead chains in one run); everything feeding an
output, and every output, stays."""

import numpy as np

from sbc.ir import Graph, TensorType
from sbc.passes.dce import DeadCodeElimination
from tests.passes.helpers import assert_stable, check_pass


def test_removes_dead_nodes_and_params():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (3,)))
    g.add1("Exp", g.add1("Add", x, g.add_param("unused", np.ones(3, np.float32))))
    g.set_outputs([g.add1("Relu", x)])
    before, after, modified = check_pass(DeadCodeElimination(), g)
    assert modified and "Exp" in before and "param %unused" in before
    assert after.op_counts() == {"Relu": 1} and after.params == []
    assert "Exp" not in str(after) and "unused" not in str(after)
    assert_stable(DeadCodeElimination(), after)


def test_removes_a_dead_chain_in_one_run():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (2, 3)))
    dead = x
    for _ in range(5):
        dead = g.add1("Tanh", dead)
    g.set_outputs([g.add1("Sigmoid", x)])
    _, after, modified = check_pass(DeadCodeElimination(), g)
    assert modified and after.op_counts() == {"Sigmoid": 1}


def test_drops_only_unused_params():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (3,)))
    w = g.add_param("w", np.full(3, 2, np.float32))
    g.add_param("stale", np.zeros(3, np.float32))
    g.set_outputs([g.add1("Mul", x, w)])
    _, after, modified = check_pass(DeadCodeElimination(), g)
    assert modified and [p.name for p in after.params] == ["w"]


def test_keeps_everything_live():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (3,)))
    a = g.add1("Relu", x)
    g.set_outputs([a, g.add1("Exp", a)], ["a", "b"])
    _, after, modified = check_pass(DeadCodeElimination(), g)
    assert not modified and after.op_counts() == {"Exp": 1, "Relu": 1}


def test_keeps_a_multi_output_node_if_one_output_is_used_and_outputs_that_are_inputs():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (4, 2)))
    first, _second = g.add("Split", [x], {"axis": 0, "num_outputs": 2}).outputs
    g.set_outputs([first, x], ["half", "same"])
    _, after, modified = check_pass(DeadCodeElimination(), g)
    assert not modified and after.op_counts() == {"Split": 1}
    assert after.output_names == ["half", "same"]
