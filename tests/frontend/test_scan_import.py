"""ONNX Scan -> sbc IR: a hand-built gated-linear-attention recurrence (and a reversed scan)
agree with onnxruntime; the official LinearAttention conformance cases in their
function-expanded (Scan) form agree with their stored outputs; malformed bodies are one-line
errors (Loop and If: tests/frontend/test_loop_import.py)."""

import warnings

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from sbc.errors import InvalidModelError, UnsupportedError
from sbc.frontend import import_onnx
from sbc.ir.interpreter import run
from sbc.ir.parser import parse_graph
from sbc.ir.printer import print_graph
from tests.frontend.test_onnx_import import ints, model, raises_one_line, rand, vi

HEADS, DK, DV = 2, 4, 3


# -- gated linear attention as a Scan ---------------------------------------------------------

def gla_body(declare_types=True):
    """S_t = exp(g_t) * S_{t-1} + k_t v_t^T;  o_t = scale * q_t^T S_t, per [B, H] row.
    `ax_m1`, `ax_m2` (initializers) and `scale` (a graph input) come from the outer graph."""
    def typed(name, *dims):
        return vi(name, ["batch", HEADS, *dims]) if declare_types else helper.make_value_info(
            name, helper.TypeProto())
    nodes = [
        helper.make_node("Exp", ["g_t"], ["eg"]),
        helper.make_node("Unsqueeze", ["eg", "ax_m1"], ["eg_col"]),
        helper.make_node("Mul", ["S", "eg_col"], ["decayed"]),
        helper.make_node("Unsqueeze", ["k_t", "ax_m1"], ["k_col"]),
        helper.make_node("Unsqueeze", ["v_t", "ax_m2"], ["v_row"]),
        helper.make_node("MatMul", ["k_col", "v_row"], ["kv"]),
        helper.make_node("Add", ["decayed", "kv"], ["S_next"]),
        helper.make_node("Unsqueeze", ["q_t", "ax_m2"], ["q_row"]),
        helper.make_node("MatMul", ["q_row", "S_next"], ["read"]),
        helper.make_node("Squeeze", ["read", "ax_m2"], ["read_sq"]),
        helper.make_node("Mul", ["read_sq", "scale"], ["o_t"]),
    ]
    inputs = [typed("S", DK, DV), typed("q_t", DK), typed("k_t", DK), typed("v_t", DV),
              typed("g_t", DK)]
    outputs = [typed("S_next", DK, DV), typed("o_t", DV)]
    return helper.make_graph(nodes, "gla_step", inputs, outputs)


def gla_model(body=None, opset=21):
    """q, k, g: [B, H, T, Dk]; v: [B, H, T, Dv]; scanned on T (axis 2)."""
    scan = helper.make_node("Scan", ["S0", "q", "k", "v", "g"], ["S_final", "o"], name="gla",
                            body=body or gla_body(), num_scan_inputs=4,
                            scan_input_axes=[2, 2, 2, 2], scan_output_axes=[2])
    bhtd = ["batch", HEADS, "seq", DK]
    inputs = [vi("S0", ["batch", HEADS, DK, DV]), vi("q", bhtd), vi("k", bhtd),
              vi("v", ["batch", HEADS, "seq", DV]), vi("g", bhtd), vi("scale", [])]
    outputs = [vi("S_final", ["batch", HEADS, DK, DV]), vi("o", ["batch", HEADS, "seq", DV])]
    return model([scan], inputs, outputs, [ints("ax_m1", [-1]), ints("ax_m2", [-2])], opset=opset)


def gla_feeds(batch=2, seq=5):
    return {"S0": rand(batch, HEADS, DK, DV, seed=1), "q": rand(batch, HEADS, seq, DK, seed=2),
            "k": rand(batch, HEADS, seq, DK, seed=3), "v": rand(batch, HEADS, seq, DV, seed=4),
            "g": -np.abs(rand(batch, HEADS, seq, DK, seed=5)), "scale": np.array(0.5, np.float32)}


def gla_numpy(S0, q, k, v, g, scale):
    S, outs = S0.astype(np.float64), []
    for t in range(q.shape[2]):
        S = np.exp(g[:, :, t])[..., None] * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        outs.append(scale * np.einsum("bhk,bhkv->bhv", q[:, :, t], S))
    return S, np.stack(outs, axis=2)


def check_against_onnxruntime(proto, feeds, graph):
    want = ort.InferenceSession(proto.SerializeToString()).run(None, feeds)
    got = run(graph, feeds)
    for o, w in zip(proto.graph.output, want):
        np.testing.assert_allclose(got[o.name], w, rtol=1e-5, atol=1e-5, err_msg=o.name)


def test_gla_scan_matches_onnxruntime_and_numpy():
    proto = gla_model()
    graph = import_onnx(proto)
    scan = next(n for n in graph.nodes if n.op == "Scan")
    # the axes initializers are copied into the body; the run-time `scale` is passed in
    assert scan.attrs["num_captured"] == 1 and scan.inputs[-1].name == "scale"
    assert [v.name for v in scan.attrs["body"].inputs][-1] == "scale"
    assert [str(v.type) for v in scan.outputs] == ["f32[batch, 2, 4, 3]", "f32[batch, 2, seq, 3]"]
    for batch, seq in ((2, 5), (1, 1)):
        feeds = gla_feeds(batch, seq)
        check_against_onnxruntime(proto, feeds, graph)
        S, o = gla_numpy(**feeds)
        got = run(graph, feeds)
        np.testing.assert_allclose(got["S_final"], S, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got["o"], o, rtol=1e-5, atol=1e-5)


def test_gla_body_without_declared_types_and_text_round_trip():
    proto = gla_model(body=gla_body(declare_types=False))
    graph = import_onnx(proto)
    again = parse_graph(print_graph(graph), {p.name: p.data for p in graph.params})
    assert print_graph(again) == print_graph(graph)
    feeds = gla_feeds()
    np.testing.assert_array_equal(run(again, feeds)["o"], run(graph, feeds)["o"])


def test_reversed_scan_on_negative_axes_matches_onnxruntime():
    """A running sum from the end: scan input axis -1, reverse in and reverse out."""
    body = helper.make_graph([helper.make_node("Add", ["acc", "x_t"], ["acc_next"]),
                              helper.make_node("Identity", ["acc_next"], ["y_t"])],
                             "suffix_sum", [vi("acc", [3]), vi("x_t", [3])],
                             [vi("acc_next", [3]), vi("y_t", [3])])
    node = helper.make_node("Scan", ["acc0", "x"], ["acc", "y"], body=body, num_scan_inputs=1,
                            scan_input_axes=[-1], scan_input_directions=[1],
                            scan_output_axes=[-1], scan_output_directions=[1], name="suffix")
    proto = model([node], [vi("acc0", [3]), vi("x", [3, "n"])], [vi("acc", [3]), vi("y", [3, "n"])],
                  opset=21)
    graph = import_onnx(proto)
    feeds = {"acc0": np.zeros(3, np.float32), "x": rand(3, 6)}
    check_against_onnxruntime(proto, feeds, graph)
    np.testing.assert_allclose(run(graph, feeds)["y"], np.cumsum(feeds["x"][:, ::-1], 1)[:, ::-1],
                               rtol=1e-6)


# -- the official LinearAttention cases, function-expanded into Scan ---------------------------

def expanded_linear_attention_cases():
    from onnx.backend.test.loader import load_node_model_tests
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (other cases' generators warn about overflows)
        cases = load_node_model_tests()
    return [c for c in cases if c.name.startswith("test_linear_attention")
            and c.name.endswith("_expanded")]


CASES = expanded_linear_attention_cases()


def test_there_are_expanded_linear_attention_cases():
    assert len(CASES) >= 10


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_expanded_linear_attention_conformance(case):
    graph = import_onnx(case.model)
    assert "Scan" in graph.op_counts()
    inputs, outputs = case.data_sets[0]
    names = [i.name for i in case.model.graph.input]
    feeds = {n: np.asarray(a) for n, a in zip(names, inputs)}
    got = run(graph, feeds)
    for o, want in zip(case.model.graph.output, outputs):
        assert got[o.name].dtype == np.asarray(want).dtype, o.name
        np.testing.assert_allclose(got[o.name], want, rtol=case.rtol, atol=case.atol,
                                   err_msg=o.name)
    assert print_graph(parse_graph(print_graph(graph), {p.name: p.data for p in graph.params})) \
        == print_graph(graph)


# -- errors ------------------------------------------------------------------------------------

def test_body_input_count_mismatch_is_one_line():
    body = gla_body()
    body.input.append(vi("extra", [1]))
    raises_one_line(InvalidModelError, gla_model(body), "Scan node 'gla'", "body takes 6 inputs",
                    "gives 5")


def test_body_declared_dtype_mismatch_is_one_line():
    body = gla_body()
    body.input[1].type.tensor_type.elem_type = TensorProto.DOUBLE
    raises_one_line(InvalidModelError, gla_model(body), "Scan node 'gla'", "'q_t'", "DOUBLE")


def test_unsupported_op_in_a_body_is_one_line():
    body = gla_body()
    body.node[0].op_type = "Hardmax"  # a real ONNX op sbc does not declare
    body.node[0].attribute.append(helper.make_attribute("axis", -1))
    raises_one_line(UnsupportedError, gla_model(body), "Scan node 'gla'", "'Hardmax'")


def test_body_output_from_nowhere_is_one_line():
    body = gla_body()
    body.output[1].name = "never_made"
    with pytest.raises((InvalidModelError, UnsupportedError)) as info:
        import_onnx(gla_model(body))
    assert "\n" not in str(info.value) and "never_made" in str(info.value)


def test_codegen_rejects_scan_by_name():
    """Scan has no lowering by design: compilation stops at the usual unsupported-op check."""
    from sbc.codegen.build import check_supported
    with pytest.raises(UnsupportedError, match="no cpu lowering for op 'Scan' at node 'gla'"):
        check_supported(import_onnx(gla_model()))
