"""cse: identical computations and identical params merge; different attributes do not."""

import numpy as np

from sbc.ir import Graph, TensorType
from sbc.passes.cse import CommonSubexpressionElimination
from sbc.passes.dce import DeadCodeElimination
from tests.passes.helpers import run_pass


def test_merges_identical_nodes_and_params():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (2, 3)))
    w1 = g.add_param("w1", np.arange(3, dtype=np.float32))
    w2 = g.add_param("w2", np.arange(3, dtype=np.float32))
    a, b = g.add1("Add", x, w1), g.add1("Add", x, w2)
    g.set_outputs([g.add1("Mul", g.add1("Softmax", a, axis=1), g.add1("Softmax", b, axis=1))])
    _, after, modified = run_pass(CommonSubexpressionElimination(), g)
    after = DeadCodeElimination().run(after).graph
    assert modified and after.op_counts() == {"Add": 1, "Mul": 1, "Softmax": 1}
    assert len(after.params) == 1


def test_does_not_merge_different_attributes():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (2, 3)))
    g.set_outputs([g.add1("Add", g.add1("Softmax", x, axis=0), g.add1("Softmax", x, axis=1))])
    _, after, modified = run_pass(CommonSubexpressionElimination(), g)
    assert not modified and after.op_counts()["Softmax"] == 2
