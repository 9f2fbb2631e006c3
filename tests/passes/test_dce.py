"""dce: unused nodes and params go; everything feeding an output stays."""

import numpy as np

from sbc.ir import Graph, TensorType
from sbc.passes.dce import DeadCodeElimination
from tests.passes.helpers import run_pass


def test_removes_dead_nodes_and_params():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (3,)))
    g.add1("Exp", g.add1("Add", x, g.add_param("unused", np.ones(3, np.float32))))
    g.set_outputs([g.add1("Relu", x)])
    before, after, modified = run_pass(DeadCodeElimination(), g)
    assert modified and "Exp" in before
    assert after.op_counts() == {"Relu": 1} and after.params == []


def test_keeps_everything_live():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (3,)))
    a = g.add1("Relu", x)
    g.set_outputs([a, g.add1("Exp", a)], ["a", "b"])
    _, after, modified = run_pass(DeadCodeElimination(), g)
    assert not modified and after.op_counts() == {"Exp": 1, "Relu": 1}
