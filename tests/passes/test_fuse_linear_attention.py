"""fuse-linear-attention: the parallel (masked, decay-weighted) form and the recurrent form
(a Scan) -> LinearAttention; near misses do not fire and explain() says why. (The official
ONNX function-expanded cases: test_fuse_linear_attention_onnx_cases.py.)"""

import numpy as np
import pytest

from sbc.passes.base import explain
from sbc.passes.dce import DeadCodeElimination
from sbc.passes.fuse_linear_attention import RULES, FuseLinearAttention
from tests.passes.attention_graphs import gla_graph
from tests.passes.helpers import check_pass, random_feeds
from tests.passes.scan_graphs import HEADS, scan_graph

SIZES = {"batch": 2, "seq": 11}


def feeds_for(graph):
    feeds = random_feeds(graph, SIZES)
    if "g" in feeds:  # log decays are negative
        feeds["g"] = -np.abs(feeds["g"]) * 0.3
    return feeds


def fused(graph):
    before, after, modified = check_pass(FuseLinearAttention(), graph, feeds_for(graph),
                                         tolerance=1e-5)
    return before, DeadCodeElimination().run(after).graph, modified


@pytest.mark.parametrize("decay, rule", [("key", "gated"), ("head", "gated"), (None, "linear")])
def test_parallel_form_becomes_linear_attention(decay, rule):
    before, after, modified = fused(gla_graph(decay=decay))
    assert modified and "CumSum" in before or decay is None
    ops = after.op_counts()
    assert ops["LinearAttention"] == 1
    assert not {"Where", "CumSum", "Exp", "MatMul", "Expand"} & set(ops)  # no T x T, no repeat_kv
    (la,) = [n for n in after.nodes if n.op == "LinearAttention"]
    assert la.attrs["update_rule"] == rule and la.attrs["q_num_heads"] == 4
    assert la.attrs["kv_num_heads"] == 2  # GQA kept: one state per KV head
    assert str(la.inputs[1].type) == "f32[batch, seq, 16]"


def test_multi_head_without_gqa():
    _, after, modified = fused(gla_graph(q_heads=2, kv_heads=2))
    assert modified and after.op_counts()["LinearAttention"] == 1


@pytest.mark.parametrize("graph, reason", [
    (gla_graph(mask="strict"), "not causal"),
    (gla_graph(mask="band"), "sliding window"),
    (gla_graph(masked=False), "not masked"),
    (gla_graph(sign=-1), "wrong sign"),
])
def test_near_misses_do_not_fire_and_say_why(graph, reason):
    _, after, modified = fused(graph)
    assert not modified and "LinearAttention" not in after.op_counts()
    notes = explain(after, RULES)
    assert any(reason in note for note in notes), notes


def test_mismatched_heads_do_not_fire():
    _, after, modified = fused(gla_graph(q_heads=4, kv_heads=4, k_heads=1, decay=None))
    assert not modified
    assert any("head counts" in note for note in explain(after, RULES))


# -- the recurrent form: a Scan as a user writes it ([T, B, H, D] inputs, S [B, H, dk, dv]) ------

def the_linear_attention(graph):
    (la,) = [n for n in graph.nodes if n.op == "LinearAttention"]
    return la


@pytest.mark.parametrize("options, rule, decay_width", [
    ({}, "gated", 8), ({"decay": "head"}, "gated", 2), ({"rule": "linear"}, "linear", None)])
def test_scan_recurrence_becomes_linear_attention(options, rule, decay_width):
    before, after, modified = fused(scan_graph(**options))
    assert modified and "Scan" in before and "Scan" not in after.op_counts()
    la = the_linear_attention(after)
    assert la.attrs["update_rule"] == rule
    assert (la.attrs["q_num_heads"], la.attrs["kv_num_heads"]) == (HEADS, HEADS)
    assert la.attrs["scale"] == pytest.approx(0.3)  # the body's constant, not a fitted value
    assert [str(v.type) for v in la.inputs[:4]] == [
        "f32[batch, seq, 8]", "f32[batch, seq, 8]", "f32[batch, seq, 6]", "f32[batch, 2, 4, 3]"]
    assert la.inputs[3].name == "S0"  # the Scan's initial state is the past state
    decay = la.inputs[4] if len(la.inputs) > 4 else None
    assert (decay.shape[2] if decay is not None else None) == decay_width


def test_scan_with_zero_initial_state_and_no_final_state_output():
    _, after, modified = fused(scan_graph(past=False, final_state=False))
    la = the_linear_attention(after)
    assert modified and la.inputs[3] is None  # a zero state is no past state at all
    assert after.output_names == ["o"] and "ConstantOfShape" not in after.op_counts()


@pytest.mark.parametrize("scale, expected", [(None, 1.0), (0.5, 0.0)])  # dk = 4: 0.5 = 1/sqrt(dk)
def test_scan_scale_is_read_from_the_body(scale, expected):
    _, after, _ = fused(scan_graph(scale=scale))
    assert the_linear_attention(after).attrs["scale"] == expected  # (0.0 means 1/sqrt(dk))


def test_scan_fusion_is_stable():
    _, after, _ = fused(scan_graph())
    assert not FuseLinearAttention().run(after).modified


def reversed_scan():
    graph = scan_graph()
    graph.nodes[-1].attrs["scan_input_directions"] = [1, 1, 1, 1]
    return graph


@pytest.mark.parametrize("graph, reason", [
    (scan_graph(sign=-1), "decays the state by exp(-g_t), LinearAttention by exp(decay)"),
    (scan_graph(cumsum=True), "computes none of linear/gated/delta/gated_delta: closest"),
    (scan_graph(counter=True), "the Scan carries 2 states; linear attention carries one"),
    (scan_graph(k_heads=1), "%k_t f32[batch, 1, 4] fits no role: mismatched heads"),
    (scan_graph(rule="linear", k_heads=1), "no assignment of the scan input slices"),
    (reversed_scan(), "runs backwards"),
    (scan_graph(clip=True), "its body uses Clip: piecewise ops"),  # equal on the test inputs
])
def test_scan_near_misses_do_not_fire_and_say_why(graph, reason):
    _, after, modified = fused(graph)
    assert not modified and "LinearAttention" not in after.op_counts()
    notes = explain(after, RULES)
    assert len(notes) == 1 and reason in notes[0], notes
    assert notes[0].startswith("ScanLinearAttention at node 'recurrence' (Scan): ")


def test_scan_reading_a_run_time_scale_is_refused():
    from sbc.frontend import import_onnx
    from tests.frontend.test_scan_import import gla_feeds, gla_model
    graph = import_onnx(gla_model())  # its body multiplies by the graph input `scale`
    feeds = gla_feeds()
    _, after, modified = check_pass(FuseLinearAttention(), graph, feeds)
    assert not modified
    assert explain(after, RULES) == ["ScanLinearAttention at node 'gla' (Scan): its body reads "
                                     "%scale, a run-time value from outside the Scan"]


def test_a_plain_running_sum_is_not_a_candidate_state():
    from onnx import helper

    from sbc.frontend import import_onnx
    from tests.frontend.test_onnx_import import model, vi
    body = helper.make_graph([helper.make_node("Add", ["acc", "x_t"], ["acc_next"]),
                              helper.make_node("Identity", ["acc_next"], ["y_t"])], "running_sum",
                             [vi("acc", [3]), vi("x_t", [3])],
                             [vi("acc_next", [3]), vi("y_t", [3])])
    node = helper.make_node("Scan", ["acc0", "x"], ["acc", "y"], body=body, num_scan_inputs=1,
                            name="running_sum")
    graph = import_onnx(model([node], [vi("acc0", [3]), vi("x", ["n", 3])],
                              [vi("acc", [3]), vi("y", ["n", 3])], opset=21))
    assert not FuseLinearAttention().run(graph).modified
    assert explain(graph, RULES) == ["ScanLinearAttention at node 'running_sum' (Scan): its state "
                                     "f32[3] is not [B, H, dk, dv] with static H, dk, dv"]


def test_compile_explain_lists_the_scan_near_miss():
    from sbc.driver import fusion_notes  # what `sbc compile --explain` prints
    notes = fusion_notes(scan_graph(sign=-1))
    assert any(note.startswith("ScanLinearAttention at node 'recurrence' (Scan): the Scan body "
                               "decays the state by exp(-g_t)") for note in notes), notes
