"""fold-reshape-transpose: chains collapse, inverse transposes vanish, others stay."""

import numpy as np

from sbc.ir import Graph, TensorType
from sbc.passes.base import explain
from sbc.passes.dce import DeadCodeElimination
from sbc.passes.fold_reshape_transpose import RULES, FoldReshapeTranspose
from tests.passes.helpers import run_pass, sym


def fold(g):
    _, after, modified = run_pass(FoldReshapeTranspose(), g)
    return DeadCodeElimination().run(after).graph, modified


def test_reshape_chain_becomes_one_reshape():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (sym("batch"), 6)))
    a = g.add1("Reshape", x, g.add1("Constant", value=np.array([0, 2, 3])))
    g.set_outputs([g.add1("Reshape", a, g.add1("Constant", value=np.array([0, 3, 2])))])
    after, modified = fold(g)
    assert modified and after.op_counts() == {"Constant": 1, "Reshape": 1}
    assert str(after.outputs[0].type) == "f32[batch, 3, 2]"


def test_inverse_transposes_vanish_and_others_compose():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (2, 3, 4)))
    back = g.add1("Transpose", g.add1("Transpose", x, perm=[1, 2, 0]), perm=[2, 0, 1])
    other = g.add1("Transpose", g.add1("Transpose", x, perm=[1, 0, 2]), perm=[0, 2, 1])
    g.set_outputs([g.add1("Add", back, x), other], ["a", "b"])
    after, modified = fold(g)
    after, _ = fold(after)  # the composed identity Transpose is removed in the next round
    assert modified and after.op_counts() == {"Add": 1, "Transpose": 1}
    assert after.nodes[[n.op for n in after.nodes].index("Transpose")].attrs["perm"] == [1, 2, 0]


def test_does_not_fire_on_a_single_real_transpose_and_explains_why():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (2, 3)))
    g.set_outputs([g.add1("Transpose", x, perm=[1, 0])])
    after, modified = fold(g)
    assert not modified and after.op_counts() == {"Transpose": 1}
    notes = explain(after, RULES)
    assert any("not the identity" in n for n in notes) and any("not produced by a Transpose" in n for n in notes)
