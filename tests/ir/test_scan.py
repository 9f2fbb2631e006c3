"""Scan: inference (symbolic scan length), the reference against a hand-written NumPy loop in
every direction and axis layout, the nested text form, the verifier on bodies, and the
node-walking passes (fold-constants, cse, dce) next to a graph attribute."""

import numpy as np
import pytest

from sbc.ir import Graph, OpError, Sym, TensorType
from sbc.ir.interpreter import run
from sbc.ir.ops.control_flow import scan_layout
from sbc.ir.parser import parse_graph
from sbc.ir.printer import print_graph
from sbc.ir.verifier import VerificationError, verify
from sbc.passes.cse import CommonSubexpressionElimination
from sbc.passes.dce import DeadCodeElimination
from sbc.passes.fold_constants import FoldConstants

SEQ = Sym.var("seq")
H = 3  # the state width


def step_body(name="step", scale=2.0) -> Graph:
    """h' = h * w + x;  y = h' * scale   (w is a captured value)."""
    body = Graph(name)
    h = body.add_input("h", TensorType("f32", (H,)))
    x = body.add_input("x", TensorType("f32", (H,)))
    w = body.add_input("w", TensorType("f32", (H,)))
    h_next = body.add1("Add", body.add1("Mul", h, w), x)
    k = body.add1("Constant", value=np.float32(scale))
    body.set_outputs([h_next, body.add1("Mul", h_next, k)], ["h_next", "y"])
    return body


def scan_graph(in_axis=0, in_dir=0, out_axis=0, out_dir=0, length=SEQ) -> Graph:
    """xs holds the sequence on `in_axis` ([seq, 3] or [3, seq])."""
    g = Graph()
    h0 = g.add_input("h0", TensorType("f32", (H,)))
    xs_shape = (length, H) if in_axis in (0, -2) else (H, length)
    xs = g.add_input("xs", TensorType("f32", xs_shape))
    w = g.add_input("w", TensorType("f32", (H,)))
    node = g.add("Scan", [h0, xs, w], {
        "body": step_body(), "num_scan_inputs": 1, "num_captured": 1,
        "scan_input_axes": [in_axis], "scan_input_directions": [in_dir],
        "scan_output_axes": [out_axis], "scan_output_directions": [out_dir]}, name="scan")
    g.set_outputs(node.outputs, ["h", "ys"])
    return g


def numpy_scan(h, xs, w, in_axis, in_dir, out_axis, out_dir):
    xs = np.moveaxis(xs, in_axis, 0)
    order = range(len(xs))[::-1] if in_dir else range(len(xs))
    ys = []
    for t in order:
        h = h * w + xs[t]
        ys.append(h * 2)
    ys = np.stack(ys[::-1] if out_dir else ys)
    return h, np.moveaxis(ys, 0, out_axis)


def feeds(length=5, in_axis=0):
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(length, H)).astype(np.float32)
    return {"h0": rng.normal(size=H).astype(np.float32),
            "xs": xs if in_axis in (0, -2) else xs.T.copy(),
            "w": rng.uniform(0.5, 1, size=H).astype(np.float32)}


# -- inference ---------------------------------------------------------------------------------

def test_infers_symbolic_scan_length_and_state_types():
    g = scan_graph()
    assert [str(v.type) for v in g.outputs] == ["f32[3]", "f32[seq, 3]"]
    g = scan_graph(in_axis=1, out_axis=-1)
    assert [str(v.type) for v in g.outputs] == ["f32[3]", "f32[3, seq]"]
    verify(g)


def test_layout_splits_inputs_and_defaults_axes():
    node = scan_graph().nodes[0]
    layout = scan_layout(node.attrs, len(node.inputs))
    assert (layout.states, layout.scans, layout.captured, layout.outputs) == (1, 1, 1, 1)
    assert layout.split(node.inputs)[2][0].name == "w"
    node.attrs["scan_input_axes"] = []
    assert scan_layout(node.attrs, len(node.inputs)).input_axes == (0,)


@pytest.mark.parametrize("change, n_inputs, message", [
    ({"num_scan_inputs": 3}, 3, "cannot hold"),
    ({"num_captured": 0}, 2, "body takes 3 inputs, the node gives 1 state\\(s\\) \\+ 1 scan"),
    ({"scan_input_directions": [2]}, 3, "0 \\(forward\\) or 1 \\(reverse\\)"),
    ({"scan_output_axes": [0, 1]}, 3, "scan_output_axes has 2 entries, expected 1"),
    ({"scan_input_axes": [2]}, 3, "out of range"),
])
def test_bad_attributes_are_op_errors(change, n_inputs, message):
    g = scan_graph()
    node = g.nodes[0]
    with pytest.raises(OpError, match=message):
        g.add("Scan", node.inputs[:n_inputs], {**node.attrs, **change})


def test_body_input_types_must_match_the_node():
    g = Graph()
    h0 = g.add_input("h0", TensorType("f32", (4,)))  # the body's state is f32[3]
    xs = g.add_input("xs", TensorType("f32", (SEQ, H)))
    w = g.add_input("w", TensorType("f32", (H,)))
    with pytest.raises(OpError, match="body input 0 %h is f32\\[3\\], the node gives f32\\[4\\]"):
        g.add("Scan", [h0, xs, w], {"body": step_body(), "num_scan_inputs": 1, "num_captured": 1})


def test_scan_inputs_must_agree_in_length():
    body = Graph("b")
    s = body.add_input("s", TensorType("f32", ()))
    a = body.add_input("a", TensorType("f32", ()))
    b = body.add_input("b", TensorType("f32", ()))
    body.set_outputs([body.add1("Add", s, body.add1("Mul", a, b))], ["s"])
    g = Graph()
    ins = [g.add_input("s0", TensorType("f32", ())), g.add_input("a", TensorType("f32", (4,))),
           g.add_input("b", TensorType("f32", (5,)))]
    with pytest.raises(OpError, match="differ in length"):
        g.add("Scan", ins, {"body": body, "num_scan_inputs": 2})


# -- reference ---------------------------------------------------------------------------------

@pytest.mark.parametrize("in_axis, in_dir, out_axis, out_dir", [
    (0, 0, 0, 0), (0, 1, 0, 0), (0, 0, 0, 1), (0, 1, 0, 1),
    (1, 0, 1, 0), (-1, 1, -1, 0), (1, 0, 0, 1), (0, 0, -1, 0),
])
def test_reference_matches_a_numpy_loop(in_axis, in_dir, out_axis, out_dir):
    f = feeds(in_axis=in_axis)
    got = run(scan_graph(in_axis, in_dir, out_axis, out_dir), f)
    h, ys = numpy_scan(f["h0"], f["xs"], f["w"], in_axis, in_dir, out_axis, out_dir)
    np.testing.assert_allclose(got["h"], h, rtol=1e-6)
    np.testing.assert_allclose(got["ys"], ys, rtol=1e-6)


def test_zero_length_scan_keeps_the_state_and_returns_empty_outputs():
    f = feeds(length=0)
    got = run(scan_graph(), f)
    np.testing.assert_array_equal(got["h"], f["h0"])
    assert got["ys"].shape == (0, H) and got["ys"].dtype == np.float32


def test_scan_inputs_of_different_lengths_fail_at_run_time():
    g = Graph()
    body = Graph("b")
    s = body.add_input("s", TensorType("f32", ()))
    a = body.add_input("a", TensorType("f32", ()))
    b = body.add_input("b", TensorType("f32", ()))
    body.set_outputs([body.add1("Add", s, body.add1("Mul", a, b))], ["s"])
    ins = [g.add_input("s0", TensorType("f32", ())),
           g.add_input("a", TensorType("f32", (Sym.var("n"),))),
           g.add_input("b", TensorType("f32", (Sym.var("m"),)))]
    g.set_outputs(g.add("Scan", ins, {"body": body, "num_scan_inputs": 2}).outputs, ["s"])
    got = run(g, {"s0": np.float32(1), "a": np.float32([1, 2]), "b": np.float32([3, 4])})
    assert got["s"] == 12
    with pytest.raises(ValueError, match="differ in length"):
        run(g, {"s0": np.float32(1), "a": np.float32([1, 2]), "b": np.float32([3, 4, 5])})


# -- text form ---------------------------------------------------------------------------------

def test_body_prints_nested_and_parses_back():
    g = scan_graph(in_axis=1, in_dir=1, out_axis=-1)
    text = print_graph(g)
    assert "  %h, %ys" not in text  # (names print with their types)
    assert "{body = graph step(%h: f32[3], %x: f32[3], %w: f32[3]) -> (" in text
    assert "\n    %mul: f32[3] = Mul(%h, %w)\n" in text  # the body's nodes: one level deeper
    assert "\n    return %add as h_next, %mul_0 as y\n  }, num_scan_inputs = 1" in text
    again = parse_graph(text)
    assert print_graph(again) == text
    f = feeds(in_axis=1)
    np.testing.assert_array_equal(run(again, f)["ys"], run(g, f)["ys"])


def test_nested_scans_round_trip():
    """A Scan whose body runs a Scan: a row-wise running sum over a [seq, 3] input."""
    inner = Graph("inner")
    acc = inner.add_input("acc", TensorType("f32", ()))
    x = inner.add_input("x", TensorType("f32", ()))
    total = inner.add1("Add", acc, x)
    inner.set_outputs([total, total], ["acc", "partial"])
    outer_body = Graph("outer")
    zero = outer_body.add_input("zero", TensorType("f32", ()))
    row = outer_body.add_input("row", TensorType("f32", (H,)))
    sums = outer_body.add("Scan", [zero, row], {"body": inner, "num_scan_inputs": 1})
    outer_body.set_outputs([zero, sums.outputs[1]], ["zero", "sums"])
    g = Graph()
    node = g.add("Scan", [g.add_input("z", TensorType("f32", ())),
                          g.add_input("xs", TensorType("f32", (SEQ, H)))],
                 {"body": outer_body, "num_scan_inputs": 1})
    g.set_outputs(node.outputs, ["z", "cumsums"])
    verify(g)
    text = print_graph(g)
    assert "\n      %add: f32[] = Add(%acc, %x)\n" in text  # two levels deep
    assert print_graph(parse_graph(text)) == text
    xs = np.arange(6, dtype=np.float32).reshape(2, 3)
    got = run(parse_graph(text), {"z": np.float32(0), "xs": xs})
    np.testing.assert_array_equal(got["cumsums"], np.cumsum(xs, axis=1))


# -- verifier ----------------------------------------------------------------------------------

def test_verifier_rejects_a_body_that_reads_an_outer_value():
    g = scan_graph()
    body = g.nodes[0].attrs["body"]
    outer_w = g.inputs[2]
    body.nodes[0].inputs[1] = outer_w  # Mul(h, <the outer %w>): not the body's own input
    with pytest.raises(VerificationError, match="node 'scan' \\(Scan\\), attribute 'body': "
                                                 "Mul node: input 1 %w is not defined"):
        verify(g)


def test_verifier_rejects_params_in_a_body_and_checks_body_types():
    g = scan_graph()
    body = g.nodes[0].attrs["body"]
    body.add_param("stray", np.zeros(2, np.float32))
    with pytest.raises(VerificationError, match="a nested graph holds no params \\(%stray\\)"):
        verify(g)
    g = scan_graph()
    body = g.nodes[0].attrs["body"]
    body.nodes[0].outputs[0].type = TensorType("f32", (7,))  # a stale type inside the body
    with pytest.raises(VerificationError, match="attribute 'body': Mul node: output types"):
        verify(g)


# -- passes next to a graph attribute ----------------------------------------------------------

def test_fold_constants_leaves_a_constant_scan_alone():
    g = Graph()
    h0 = g.add1("Constant", value=np.zeros(H, np.float32))
    xs = g.add1("Constant", value=np.ones((4, H), np.float32))
    w = g.add1("Constant", value=np.ones(H, np.float32))
    node = g.add("Scan", [h0, xs, w], {"body": step_body(), "num_scan_inputs": 1,
                                       "num_captured": 1})
    g.set_outputs(node.outputs, ["h", "ys"])
    assert all(v.data is None for v in node.outputs)  # not foldable: no compile-time value
    result = FoldConstants().run(g)
    assert not result.modified and result.graph.op_counts()["Scan"] == 1


def two_scans(same_body: bool) -> Graph:
    g = Graph()
    h0 = g.add_input("h0", TensorType("f32", (H,)))
    xs = g.add_input("xs", TensorType("f32", (SEQ, H)))
    w = g.add_input("w", TensorType("f32", (H,)))
    outs = []
    for scale in (2.0, 2.0 if same_body else 3.0):
        node = g.add("Scan", [h0, xs, w], {"body": step_body(scale=scale), "num_scan_inputs": 1,
                                           "num_captured": 1})
        outs.append(node.outputs[1])
    g.set_outputs([g.add1("Add", *outs)], ["y"])
    return g


def test_cse_merges_scans_with_equal_bodies_only():
    f = feeds()
    for same, count in ((True, 1), (False, 2)):
        g = two_scans(same)
        want = run(g, f)["y"]
        result = CommonSubexpressionElimination().run(g)
        g = DeadCodeElimination().run(result.graph).graph
        verify(g)
        assert result.modified == same and g.op_counts()["Scan"] == count
        np.testing.assert_array_equal(run(g, f)["y"], want)


def test_dce_removes_an_unused_scan_and_keeps_a_used_one():
    g = scan_graph()
    g.set_outputs([g.outputs[0]], ["h"])  # the scan output is unused, the final state is not
    assert not DeadCodeElimination().run(g).modified
    g.set_outputs([g.add1("Identity", g.inputs[0])], ["h"])
    result = DeadCodeElimination().run(g)
    assert result.modified and "Scan" not in result.graph.op_counts()
