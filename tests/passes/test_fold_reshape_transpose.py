"""fold-reshape-transpose: layout chains collapse, inverse pairs vanish, no-ops go; real
layout changes stay and `explain` says why."""

import numpy as np

from sbc.ir import Graph, TensorType
from sbc.passes.base import explain
from sbc.passes.dce import DeadCodeElimination
from sbc.passes.fold_reshape_transpose import RULES, FoldReshapeTranspose
from tests.passes.helpers import assert_stable, check_pass, sym


def fold(g):
    _, after, modified = check_pass(FoldReshapeTranspose(), g)
    assert_stable(FoldReshapeTranspose(), after)
    return DeadCodeElimination().run(after).graph, modified


def const(g, values):
    return g.add1("Constant", value=np.array(values, dtype=np.int64))


def test_reshape_chain_becomes_one_reshape():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (sym("batch"), 6)))
    a = g.add1("Reshape", x, const(g, [0, 2, 3]))
    b = g.add1("Reshape", a, const(g, [0, 3, 2]))
    g.set_outputs([g.add1("Flatten", b, axis=2)], ["y"])
    after, modified = fold(g)
    assert modified and after.op_counts() == {"Constant": 1, "Reshape": 1}
    assert "tensor<i64[2]>[3*batch, 2]" in str(after)  # symbolic target shape
    assert str(after.outputs[0].type) == "f32[3*batch, 2]" and after.output_names == ["y"]


def test_reshape_to_the_same_shape_and_identity_vanish():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (sym("n"), 4)))
    same = g.add1("Reshape", g.add1("Identity", x), const(g, [-1, 4]))
    g.set_outputs([g.add1("Relu", same)])
    before, after, modified = check_pass(FoldReshapeTranspose(), g)
    assert modified and "Identity" in before
    assert DeadCodeElimination().run(after).graph.op_counts() == {"Relu": 1}


def test_squeeze_unsqueeze_pairs_cancel():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (2, 1, 3)))
    back = g.add1("Unsqueeze", g.add1("Squeeze", x, const(g, [1])), const(g, [1]))
    y = g.add_input("y", TensorType("f32", (2, 3)))
    again = g.add1("Squeeze", g.add1("Unsqueeze", y, const(g, [0])), const(g, [0]))
    g.set_outputs([g.add1("Mul", back, x), again], ["a", "b"])
    after, modified = fold(g)
    assert modified and after.op_counts() == {"Mul": 1}
    assert after.outputs[1] is after.inputs[1]


def test_squeeze_unsqueeze_pair_that_moves_the_axis_becomes_one_reshape():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (2, 1, 3)))
    moved = g.add1("Unsqueeze", g.add1("Squeeze", x, const(g, [1])), const(g, [2]))
    g.set_outputs([moved])
    notes = explain(g, RULES)
    assert any("not back to itself" in n for n in notes)
    after, modified = fold(g)
    assert modified and after.op_counts() == {"Constant": 1, "Reshape": 1}
    assert str(after.outputs[0].type) == "f32[2, 3, 1]"


def test_inverse_transposes_vanish_and_others_compose():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (2, 3, 4)))
    back = g.add1("Transpose", g.add1("Transpose", x, perm=[1, 2, 0]), perm=[2, 0, 1])
    other = g.add1("Transpose", g.add1("Transpose", x, perm=[1, 0, 2]), perm=[0, 2, 1])
    g.set_outputs([g.add1("Add", back, x), other], ["a", "b"])
    after, modified = fold(g)  # one run: the pass sweeps until nothing matches
    assert modified and after.op_counts() == {"Add": 1, "Transpose": 1}
    (t,) = [n for n in after.nodes if n.op == "Transpose"]
    assert t.attrs["perm"] == [1, 2, 0] and t.inputs[0] is x


def test_a_non_inverse_transpose_pair_is_not_folded_into_nothing():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (2, 3, 4)))
    # perm=None reverses the axes: reverse(reverse(x)) is x, but reverse then [1, 0, 2] is not
    twice = g.add1("Transpose", g.add1("Transpose", x), perm=[1, 0, 2])
    g.set_outputs([twice])
    after, modified = fold(g)
    assert modified and after.op_counts() == {"Transpose": 1}
    assert after.nodes[0].attrs["perm"] == [1, 2, 0] and str(after.outputs[0].type) == "f32[3, 4, 2]"


def test_does_not_fire_on_a_single_real_layout_change_and_explains_why():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (2, 3)))
    t = g.add1("Transpose", x, perm=[1, 0])
    g.set_outputs([g.add1("Reshape", t, const(g, [6]))])
    after, modified = fold(g)
    assert not modified and after.op_counts() == {"Constant": 1, "Reshape": 1, "Transpose": 1}
    notes = explain(after, RULES)
    for reason in ("[1, 0] is not the identity", "not produced by a Transpose",
                   "shape changes from f32[3, 2] to f32[6]", "not produced by a reshape-like op"):
        assert any(reason in n for n in notes), (reason, notes)
