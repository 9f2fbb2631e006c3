"""cse: identical computations, identical Constants and identical params merge; nodes that
differ in attributes, inputs or constant contents do not."""

import numpy as np
import pytest

from sbc.ir import Graph, TensorType
from sbc.passes.cse import CommonSubexpressionElimination
from sbc.passes.dce import DeadCodeElimination
from tests.passes.helpers import assert_stable, check_pass, sym


def cse(graph):
    _, after, modified = check_pass(CommonSubexpressionElimination(), graph)
    assert_stable(CommonSubexpressionElimination(), after)
    return DeadCodeElimination().run(after).graph, modified


def test_merges_identical_nodes_and_params():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (2, 3)))
    w1 = g.add_param("w1", np.arange(3, dtype=np.float32))
    w2 = g.add_param("w2", np.arange(3, dtype=np.float32))
    a, b = g.add1("Add", x, w1), g.add1("Add", x, w2)
    g.set_outputs([g.add1("Mul", g.add1("Softmax", a, axis=1), g.add1("Softmax", b, axis=1))])
    after, modified = cse(g)
    assert modified and after.op_counts() == {"Add": 1, "Mul": 1, "Softmax": 1}
    assert [p.name for p in after.params] == ["w1"]


def test_merges_whole_chains_in_one_run():
    g = Graph()
    x, y = (g.add_input(n, TensorType("f32", (sym("n"),))) for n in "xy")
    chain = lambda: g.add1("Exp", g.add1("Relu", g.add1("Sub", x, y)))
    g.set_outputs([g.add1("Add", chain(), chain())])
    after, modified = cse(g)
    assert modified and after.op_counts() == {"Add": 1, "Exp": 1, "Relu": 1, "Sub": 1}


def test_merges_identical_constants_including_symbolic_ones():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (sym("batch"), 6)))
    c1, c2 = (g.add1("Constant", value=np.float32(2)) for _ in range(2))
    s1, s2 = (g.add1("Shape", x) for _ in range(2))  # known [batch, 6]: symbolic
    r1 = g.add1("Reshape", g.add1("Mul", x, c1), s1)
    r2 = g.add1("Reshape", g.add1("Mul", x, c2), s2)
    g.set_outputs([r1, r2], ["a", "b"])
    after, modified = cse(g)
    assert modified and after.op_counts() == {"Constant": 1, "Mul": 1, "Reshape": 1, "Shape": 1}
    assert after.output_names == ["a", "b"] and after.outputs[0] is after.outputs[1]


def test_does_not_merge_different_attributes():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (2, 3)))
    g.set_outputs([g.add1("Add", g.add1("Softmax", x, axis=0), g.add1("Softmax", x, axis=1))])
    after, modified = cse(g)
    assert not modified and after.op_counts()["Softmax"] == 2


@pytest.mark.filterwarnings("ignore:divide by zero")  # x / 0 vs x / -0: +inf vs -inf
def test_does_not_merge_different_inputs_or_constant_contents():
    g = Graph()
    x, y = (g.add_input(n, TensorType("f32", (4,))) for n in "xy")
    ints = g.add1("Constant", value=np.array([1, 2], np.int64))
    ints32 = g.add1("Constant", value=np.array([1, 2], np.int32))  # same numbers, other dtype
    floats = g.add1("Constant", value=np.array([0.0], np.float32))
    negzero = g.add1("Constant", value=np.array([-0.0], np.float32))  # equal, other bits
    flat = g.add1("Concat", g.add1("Cast", ints32, to="i64"), ints, axis=0)
    g.set_outputs([g.add1("Relu", x), g.add1("Relu", y), flat, g.add1("Div", x, floats),
                   g.add1("Div", x, negzero)], list("abcde"))
    after, modified = cse(g)
    assert not modified and after.op_counts() == {
        "Cast": 1, "Concat": 1, "Constant": 4, "Div": 2, "Relu": 2}


def test_does_not_merge_params_of_different_shapes():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (2, 2)))
    a, b = g.add_param("a", np.ones((2, 2), np.float32)), g.add_param("b", np.ones((4,), np.float32))
    flat = g.add1("Reshape", x, g.add1("Constant", value=np.array([4])))
    g.set_outputs([g.add1("Add", x, a), g.add1("Add", flat, b)], ["p", "q"])
    after, modified = cse(g)
    assert not modified and len(after.params) == 2
