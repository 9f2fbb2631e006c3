"""fold-constants: shape chains (symbolic too) and arithmetic on constants fold; anything
depending on graph inputs' data does not."""

import numpy as np

from sbc.ir import Graph, TensorType
from sbc.passes.dce import DeadCodeElimination
from sbc.passes.fold_constants import FoldConstants
from tests.passes.helpers import assert_stable, check_pass, sym


def const(g, value):
    return g.add1("Constant", value=np.asarray(value))


def fold_then_dce(graph, **options):
    before, after, modified = check_pass(FoldConstants(**options), graph)
    return before, DeadCodeElimination().run(after).graph, modified  # inputs of folded nodes stay for dce


def shape_chain_graph():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (sym("batch"), sym("seq"), 4)))
    lead = g.add1("Slice", g.add1("Shape", x), const(g, [0]), const(g, [2]))
    target = g.add1("Concat", lead, const(g, [2, 2]), axis=0)
    g.set_outputs([g.add1("Reshape", x, target)], ["y"])
    return g


def test_shape_chain_folds_to_a_symbolic_constant():
    before, after, modified = fold_then_dce(shape_chain_graph())
    assert modified and "Shape(" in before and "Concat(" in before
    assert after.op_counts() == {"Constant": 1, "Reshape": 1}
    assert "tensor<i64[4]>[batch, seq, 2, 2]" in str(after)
    assert str(after.outputs[0].type) == "f32[batch, seq, 2, 2]" and after.output_names == ["y"]
    assert_stable(FoldConstants(), after)


def test_symbolic_arithmetic_folds():
    """Gather(Shape) * Gather(Shape) -> batch*seq, as when a model flattens its tokens."""
    g = Graph()
    x = g.add_input("x", TensorType("f32", (sym("batch"), sym("seq"), 4)))
    shape = g.add1("Shape", x)
    dim = lambda i: g.add1("Gather", shape, const(g, [i]), axis=0)
    tokens = g.add1("Mul", dim(0), dim(1))
    target = g.add1("Concat", tokens, const(g, [4]), axis=0)
    g.set_outputs([g.add1("Reshape", x, target)], ["y"])
    _, after, modified = fold_then_dce(g)
    assert modified and after.op_counts() == {"Constant": 1, "Reshape": 1}
    assert "[batch*seq, 4]" in str(after)


def test_symbolic_values_that_became_numbers_are_plain_i64():
    """seq - seq is 0 for every seq: the folded Constant is an ordinary i64 tensor."""
    g = Graph()
    x = g.add_input("x", TensorType("f32", (sym("seq"), 2)))
    shape = g.add1("Shape", x)
    g.set_outputs([g.add1("Add", g.add1("Sub", shape, shape), g.add1("Cast", g.add1("Relu", x), to="i64"))])
    _, after, modified = fold_then_dce(g)
    (constant,) = [n for n in after.nodes if n.op == "Constant"]
    assert modified and constant.attrs["value"].dtype == np.int64
    assert "Shape" not in after.op_counts() and "Sub" not in after.op_counts()


def test_small_constant_arithmetic_becomes_a_constant():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (3,)))
    half = g.add1("Div", const(g, np.float32(1)), const(g, np.float32(2)))
    g.set_outputs([g.add1("Mul", x, half)])
    _, after, modified = fold_then_dce(g)
    assert modified and after.op_counts() == {"Constant": 1, "Mul": 1}
    assert "tensor<f32[]>[0.5]" in str(after)


def test_large_results_become_params_and_folded_weights_too():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (2, 2048)))
    w = g.add_param("w", np.arange(2048 * 2, dtype=np.float32).reshape(2, 2048))
    scaled = g.add1("Mul", g.add1("Transpose", w, perm=[1, 0]), const(g, np.float32(2.0)))
    g.set_outputs([g.add1("MatMul", x, scaled)])
    _, after, modified = fold_then_dce(g)
    assert modified and after.op_counts() == {"MatMul": 1}
    (p,) = after.params
    assert p.name.startswith("folded:") and str(p.type) == "f32[2048, 2]"
    assert p.data.flags.c_contiguous and not np.shares_memory(p.data, w.data)


def test_a_foldable_graph_output_keeps_its_name():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (sym("n"), 5)))
    g.set_outputs([g.add1("Relu", x), g.add1("Shape", x)], ["act", "shape"])
    _, after, modified = fold_then_dce(g)
    assert modified and after.output_names == ["act", "shape"]
    assert after.outputs[1].producer.op == "Constant"


def test_does_not_fold_run_time_values():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (3,)))
    g.set_outputs([g.add1("Relu", g.add1("Add", x, const(g, np.float32(1))))])
    _, after, modified = check_pass(FoldConstants(), g)
    assert not modified and after.op_counts() == {"Add": 1, "Constant": 1, "Relu": 1}


def test_does_not_fold_lookups_by_run_time_indices():
    """A Gather from a constant table by indices from a graph input stays a Gather."""
    g = Graph()
    ids = g.add_input("ids", TensorType("i64", (sym("n"),)))
    table = const(g, np.arange(10, dtype=np.float32))
    g.set_outputs([g.add1("Gather", g.add1("Neg", table), ids, axis=0)])
    _, after, modified = check_pass(FoldConstants(), g)
    assert modified and after.op_counts() == {"Constant": 2, "Gather": 1}  # only Neg folded
    assert not FoldConstants().run(after).modified


def test_respects_max_elements_option():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (4096,)))
    w = g.add_param("w", np.ones((4096,), np.float32))
    g.set_outputs([g.add1("Add", x, g.add1("Neg", w))])
    _, after, modified = check_pass(FoldConstants(max_elements="1024"), g)
    assert not modified and "Neg" in after.op_counts()
    _, after, modified = check_pass(FoldConstants(max_elements=4096), after)
    assert modified and "Neg" not in after.op_counts()
