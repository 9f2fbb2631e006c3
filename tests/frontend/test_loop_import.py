"""ONNX Loop -> sbc IR: a gated-linear-attention Loop (trip count from Shape, slices gathered
at the iteration number, a scan output) runs in the interpreter like onnxruntime, ONNX's
reference evaluator and NumPy; Loops that stop on a computed condition or a run-time trip count
run when they have no scan outputs; a scan output of data-dependent length is a one-line error
naming the node; If stays unsupported."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from sbc.errors import InvalidModelError, UnsupportedError
from sbc.frontend import import_onnx
from sbc.ir.interpreter import run
from sbc.ir.parser import parse_graph
from sbc.ir.printer import print_graph
from tests.frontend.test_onnx_import import model, raises_one_line, vi
from tests.passes.loop_graphs import gla_feeds, gla_loop_model, gla_numpy


def assert_outputs(graph, proto, feeds, want, tolerance=1e-5):
    got = run(graph, feeds)
    for o, w in zip(proto.graph.output, want):
        np.testing.assert_allclose(got[o.name], w, rtol=tolerance, atol=tolerance, err_msg=o.name)


def onnxruntime_outputs(proto, feeds):
    return ort.InferenceSession(proto.SerializeToString()).run(None, feeds)


# -- a linear-attention recurrence as a Loop ---------------------------------------------------

def test_gla_loop_imports_with_its_captured_tensors():
    graph = import_onnx(gla_loop_model())
    (loop,) = [n for n in graph.nodes if n.op == "Loop"]
    # q, k, v, g are read from outside the body: passed in explicitly, after the state
    assert loop.attrs["num_captured"] == 4
    assert [v.name for v in loop.inputs[2:]] == ["S0", "q", "k", "v", "g"]
    body_inputs = [str(v.type) for v in loop.attrs["body"].inputs[:3]]
    assert body_inputs == ["i64[]", "bool[]", "f32[batch, 2, 4, 3]"]
    # the scan output's leading dim is the trip count Shape(q)[2]: the symbol seq
    assert [str(v.type) for v in loop.outputs] == ["f32[batch, 2, 4, 3]", "f32[seq, batch, 4, 3]"]


@pytest.mark.parametrize("batch, seq", [(2, 5), (1, 1)])
def test_gla_loop_runs_like_onnxruntime_and_numpy(batch, seq):
    proto = gla_loop_model()
    graph = import_onnx(proto)
    feeds = gla_feeds(batch, seq)
    assert_outputs(graph, proto, feeds, onnxruntime_outputs(proto, feeds))
    assert_outputs(graph, proto, feeds, gla_numpy(**feeds))


def test_gla_loop_final_state_is_the_onnx_reference_evaluators():
    """(Only the state: onnx 1.23's evaluator concatenates the steps' scan outputs along their
    axis 0, where onnxruntime, and sbc, stack them along a new axis 0.)"""
    proto = gla_loop_model(past=False, scan_output=False)
    feeds = gla_feeds(past=False)
    assert_outputs(import_onnx(proto), proto, feeds, ReferenceEvaluator(proto).run(None, feeds))


def test_zero_steps_give_an_empty_scan_output_and_the_initial_state():
    graph = import_onnx(gla_loop_model())
    feeds = gla_feeds(batch=2, seq=0)
    got = run(graph, feeds)
    assert got["o"].shape == (2, 4, 0, 3) and got["o"].dtype == np.float32
    np.testing.assert_array_equal(got["S_final"], feeds["S0"])


def test_text_round_trip():
    graph = import_onnx(gla_loop_model())
    again = parse_graph(print_graph(graph), {p.name: p.data for p in graph.params})
    assert print_graph(again) == print_graph(graph)


# -- Loops without scan outputs may stop whenever they like ----------------------------------

def doubling_body():
    """x = 2 x while sum(x) < limit; `limit` comes from the enclosing graph."""
    nodes = [helper.make_node("Add", ["x_in", "x_in"], ["x_out"]),
             helper.make_node("ReduceSum", ["x_out"], ["total"], keepdims=0),
             helper.make_node("Less", ["total", "limit"], ["cond_out"])]
    return helper.make_graph(nodes, "doubling", [vi("i", [], TensorProto.INT64),
                                                 vi("cond_in", [], TensorProto.BOOL),
                                                 vi("x_in", [3])],
                             [vi("cond_out", [], TensorProto.BOOL), vi("x_out", [3])])


@pytest.mark.parametrize("trip, start", [(None, 1.0), (2, 1.0), (0, 1.0), (10, 100.0)])
def test_run_time_trip_count_and_computed_condition(trip, start):
    """No trip count: runs until the condition turns false; a run-time trip count bounds it;
    a false initial condition runs no step."""
    node = helper.make_node("Loop", ["M" if trip is not None else "", "go", "x0"], ["x"],
                            body=doubling_body(), name="doubling")
    inputs = [vi("go", [], TensorProto.BOOL), vi("x0", [3]), vi("limit", [])]
    inputs += [vi("M", [], TensorProto.INT64)] if trip is not None else []
    proto = model([node], inputs, [vi("x", [3])], opset=21)
    feeds = {"go": np.array(start < 50), "x0": np.full(3, start, np.float32),
             "limit": np.array(50, np.float32)}
    if trip is not None:
        feeds["M"] = np.array(trip, np.int64)
    graph = import_onnx(proto)
    assert graph.op_counts()["Loop"] == 1
    assert_outputs(graph, proto, feeds, onnxruntime_outputs(proto, feeds))
    assert_outputs(graph, proto, feeds, ReferenceEvaluator(proto).run(None, feeds))


def test_a_loop_of_constants_folds():
    """As ONNX's function body of Range does with known bounds: nothing is left to run."""
    from sbc.passes import run_passes
    body = helper.make_graph([helper.make_node("Add", ["acc", "step"], ["acc_next"]),
                              helper.make_node("Identity", ["cond_in"], ["cond_out"]),
                              helper.make_node("Identity", ["acc"], ["value"])], "range_step",
                             [vi("i", [], TensorProto.INT64), vi("cond_in", [], TensorProto.BOOL),
                              vi("acc", [])],
                             [vi("cond_out", [], TensorProto.BOOL), vi("acc_next", []),
                              vi("value", [])])
    node = helper.make_node("Loop", ["n", "", "start"], ["end", "values"], body=body)
    initializers = [helper.make_tensor("n", TensorProto.INT64, [], [4]),
                    helper.make_tensor("start", TensorProto.FLOAT, [], [1.0]),
                    helper.make_tensor("step", TensorProto.FLOAT, [], [1.5])]
    proto = model([node], [], [vi("values", [4])], initializers, opset=21)
    graph = run_passes(import_onnx(proto), ["fold-constants", "dce"])
    assert graph.op_counts() == {"Constant": 1}
    np.testing.assert_array_equal(run(graph, {})["values"], [1.0, 2.5, 4.0, 5.5])
    assert_outputs(graph, proto, {}, onnxruntime_outputs(proto, {}))


# -- errors ------------------------------------------------------------------------------------

def test_run_time_trip_count_with_a_scan_output_is_one_line():
    proto = gla_loop_model()
    proto.graph.node.remove(next(n for n in proto.graph.node if n.output[0] == "T"))
    proto.graph.input.append(vi("T", [], TensorProto.INT64))  # now a value known at run time
    raises_one_line(UnsupportedError, proto, "node 'recurrence' (Loop)",
                    "scan outputs need a length known at compile time",
                    "trip count %T is computed at run time")


def test_condition_computed_in_a_body_with_a_scan_output_is_one_line():
    raises_one_line(UnsupportedError, gla_loop_model(cond="computed"), "node 'recurrence'",
                    "body computes the condition, which may end the loop early")


def test_run_time_initial_condition_with_a_scan_output_is_one_line():
    proto = gla_loop_model()
    loop = next(n for n in proto.graph.node if n.op_type == "Loop")
    loop.input[1] = "go"
    proto.graph.input.append(vi("go", [], TensorProto.BOOL))
    raises_one_line(UnsupportedError, proto, "node 'recurrence'",
                    "initial condition %go is not the constant true")


def test_body_input_count_mismatch_is_one_line():
    proto = gla_loop_model()
    body = next(n for n in proto.graph.node if n.op_type == "Loop").attribute[0].g
    body.input.append(vi("extra", [1]))
    raises_one_line(InvalidModelError, proto, "Loop node 'recurrence'", "body takes 4 inputs",
                    "the iteration number, the condition and loop-carried values")


def test_if_stays_unsupported():
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "then", [],
                             [vi("t", [2])])
    node = helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=then, name="branch")
    proto = model([node], [vi("c", [], TensorProto.BOOL), vi("x", [2])], [vi("y", [2])])
    raises_one_line(UnsupportedError, proto, "'If'", "'branch'", "If is not supported")


def test_codegen_rejects_a_loop_by_name():
    """A Loop loop-to-scan cannot turn into a Scan has no lowering: the usual message."""
    from sbc.codegen.build import check_supported
    graph = import_onnx(gla_loop_model(cond="computed", scan_output=False))
    with pytest.raises(UnsupportedError,
                       match="no cpu lowering for op 'Loop' at node 'recurrence'"):
        check_supported(graph)
