"""loop-to-scan: a gated-linear-attention Loop (T = Shape(q)[2], slices gathered at the
iteration number) becomes a Scan over the gathered tensors, computing the same; the Scan rule
of fuse-linear-attention then raises it; near misses stay Loops and say why. End to end, a GLA
layer written with a Loop compiles to LinearAttention and matches onnxruntime."""

import numpy as np
import onnxruntime as ort
import pytest

import sbc
from sbc.frontend import import_onnx
from sbc.passes import DEFAULT_PIPELINE
from sbc.passes.base import explain
from sbc.passes.fuse_linear_attention import FuseLinearAttention
from sbc.passes.fuse_linear_attention import RULES as FUSION_RULES
from sbc.passes.loop_to_scan import RULES, LoopToScan
from tests.passes.helpers import assert_stable, check_pass, ops
from tests.passes.loop_graphs import DK, HIDDEN, KV_HEADS, Q_HEADS, SCALE, gla_feeds, \
    gla_layer_model, gla_loop_model


def the_node(graph, op):
    (node,) = [n for n in graph.nodes if n.op == op]
    return node


@pytest.mark.parametrize("past", [True, False])
def test_gla_loop_becomes_a_scan_over_the_gathered_tensors(past):
    graph = import_onnx(gla_loop_model(past=past))
    before, after, modified = check_pass(LoopToScan(), graph, gla_feeds(past=past))
    assert modified and "Loop" in before and "Loop" not in ops(after)
    scan = the_node(after, "Scan")
    assert [v.name for v in scan.inputs[1:]] == ["q", "k", "v", "g"]  # after the state
    assert scan.attrs["num_scan_inputs"] == 4 and scan.attrs["num_captured"] == 0
    assert scan.attrs["scan_input_axes"] == [2, 2, 2, 2] and scan.attrs["scan_output_axes"] == [0]
    body = scan.attrs["body"]
    assert "Gather" not in ops(body) and "Identity" not in ops(body)  # (nor the condition)
    assert [str(v.type) for v in body.inputs] == ["f32[batch, 2, 4, 3]", "f32[batch, 4, 4]",
                                                  "f32[batch, 2, 4]", "f32[batch, 2, 3]",
                                                  "f32[batch, 2, 4]"]
    assert explain(after, RULES) == []
    assert_stable(LoopToScan(), after)


def test_then_fuse_linear_attention_raises_the_scan():
    graph = import_onnx(gla_loop_model())
    feeds = gla_feeds()
    _, scanned, _ = check_pass(LoopToScan(), graph, feeds)
    _, fused, modified = check_pass(FuseLinearAttention(), scanned, feeds, tolerance=1e-5)
    assert modified and "Scan" not in ops(fused)
    la = the_node(fused, "LinearAttention")
    assert la.attrs["update_rule"] == "gated"
    assert (la.attrs["q_num_heads"], la.attrs["kv_num_heads"]) == (Q_HEADS, KV_HEADS)
    assert la.attrs["scale"] == pytest.approx(SCALE)
    assert la.inputs[3].name == "S0" and la.inputs[4].shape[2] == KV_HEADS * DK  # per key dim


def test_a_run_time_value_the_body_reads_stays_captured():
    graph = import_onnx(gla_loop_model(scale_input=True))
    feeds = dict(gla_feeds(), scale=np.array(0.7, np.float32))
    _, after, modified = check_pass(LoopToScan(), graph, feeds)
    scan = the_node(after, "Scan")
    assert modified and scan.attrs["num_captured"] == 1 and scan.inputs[-1].name == "scale"
    # ... which the linear-attention rule then refuses, as for any Scan
    assert explain(after, FUSION_RULES) == ["ScanLinearAttention at node 'recurrence' (Scan): its "
                                            "body reads %scale, a run-time value from outside "
                                            "the Scan"]


@pytest.mark.parametrize("options, reason", [
    ({"offset": True}, "its body reads the iteration number other than as Gather(x, "
                       "iteration number) of a tensor from outside the Loop, at node "
                       "'recurrence/body/Add_0'"),
    ({"trip_axis": 0}, "its trip count batch is not the length seq of axis 2 of %q, which node "
                       "'recurrence/body/Gather_0' (Gather) gathers at the iteration number"),
    ({"cond": "computed", "scan_output": False},
     "its body computes the condition, which may end the loop early"),
])
def test_near_misses_stay_loops_and_say_why(options, reason):
    graph = import_onnx(gla_loop_model(**options))
    _, after, modified = check_pass(LoopToScan(), graph, gla_feeds(batch=2, seq=5))
    assert not modified and ops(after)["Loop"] == 1 and "Scan" not in ops(after)
    notes = explain(after, RULES)
    assert len(notes) == 1 and notes[0].startswith("LoopAsScan at node 'recurrence' (Loop): ")
    assert reason in notes[0], notes


def test_compile_explain_lists_the_loop_near_miss():
    from sbc.driver import fusion_notes  # what `sbc compile --explain` prints
    notes = fusion_notes(import_onnx(gla_loop_model(offset=True)))
    assert any(n.startswith("LoopAsScan at node 'recurrence' (Loop): its body reads the "
                            "iteration number") for n in notes), notes


def test_loop_to_scan_runs_before_the_fusion_by_default():
    assert DEFAULT_PIPELINE.index("loop-to-scan") < DEFAULT_PIPELINE.index("fuse-linear-attention")


def test_gla_layer_written_with_a_loop_compiles_to_linear_attention():
    """import -> default pipeline (loop-to-scan, then the Scan rule) -> TVM build -> run."""
    proto = gla_layer_model()
    module = sbc.compile(proto, target="cpu")
    assert module.manifest["ops"]["LinearAttention"] == 1
    assert not {"Loop", "Scan"} & set(module.manifest["ops"])
    x = np.random.default_rng(1).normal(size=(2, 7, HIDDEN)).astype(np.float32)
    (want,) = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})
    np.testing.assert_allclose(module.run({"x": x})["y"], want, rtol=1e-4, atol=1e-4)
