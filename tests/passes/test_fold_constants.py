"""fold-constants: shape chains and constant arithmetic fold; run-time values do not."""

import numpy as np

from sbc.ir import Graph, TensorType
from sbc.passes.dce import DeadCodeElimination
from sbc.passes.fold_constants import FoldConstants
from tests.passes.helpers import run_pass, sym


def shape_chain_graph():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (sym("batch"), sym("seq"), 4)))
    shape = g.add1("Shape", x)
    lead = g.add1("Slice", shape, g.add1("Constant", value=np.array([0])), g.add1("Constant", value=np.array([2])))
    target = g.add1("Concat", lead, g.add1("Constant", value=np.array([2, 2])), axis=0)
    g.set_outputs([g.add1("Reshape", x, target)], ["y"])
    return g


def test_shape_chain_folds_to_a_symbolic_constant():
    before, after, modified = run_pass(FoldConstants(), shape_chain_graph())
    after = DeadCodeElimination().run(after).graph  # the folded inputs are left for dce
    assert modified
    assert "Shape(" in before and "Concat(" in before
    assert after.op_counts() == {"Constant": 1, "Reshape": 1}
    assert "tensor<i64[4]>[batch, seq, 2, 2]" in str(after)
    assert str(after.outputs[0].type) == "f32[batch, seq, 2, 2]"


def test_constant_arithmetic_on_params_becomes_a_param():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (2, 2048)))
    w = g.add_param("w", np.ones((2048,), np.float32))
    scaled = g.add1("Mul", w, g.add1("Constant", value=np.float32(2.0)))
    g.set_outputs([g.add1("Add", x, scaled)])
    _, after, modified = run_pass(FoldConstants(), g)
    after = DeadCodeElimination().run(after).graph
    assert modified and after.op_counts() == {"Add": 1}
    assert any(p.name.startswith("folded:") for p in after.params)


def test_does_not_fold_run_time_values():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (3,)))
    g.set_outputs([g.add1("Relu", g.add1("Add", x, g.add1("Constant", value=np.float32(1))))])
    _, after, modified = run_pass(FoldConstants(), g)
    assert not modified and after.op_counts() == {"Add": 1, "Constant": 1, "Relu": 1}


def test_respects_max_elements_option():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (4096,)))
    w = g.add_param("w", np.ones((4096,), np.float32))
    g.set_outputs([g.add1("Add", x, g.add1("Neg", w))])
    _, after, modified = run_pass(FoldConstants(max_elements="1024"), g)
    assert not modified and "Neg" in after.op_counts()
