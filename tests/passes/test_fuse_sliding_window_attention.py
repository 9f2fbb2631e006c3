"""fuse-sliding-window-attention: banded masked softmax (hand-built, and ONNX Attention as
sbc's frontend imports it) -> SlidingWindowAttention; near misses say why."""

import pytest

from sbc.passes import run_passes
from sbc.passes.base import explain
from sbc.passes.dce import DeadCodeElimination
from sbc.passes.fuse_sliding_window_attention import RULES, FuseSlidingWindowAttention
from tests.passes.attention_graphs import swa_graph
from tests.passes.helpers import check_pass
from tests.passes.onnx_attention_graphs import attention_graph

SIZES = {"batch": 2, "seq": 11}


def fused(graph):
    before, after, modified = check_pass(FuseSlidingWindowAttention(), graph, sizes=SIZES,
                                         tolerance=1e-5)
    return before, DeadCodeElimination().run(after).graph, modified


@pytest.mark.parametrize("additive, safe", [(False, None), (True, None), (False, "never")])
def test_banded_softmax_becomes_sliding_window_attention(additive, safe):
    before, after, modified = fused(swa_graph(window=4, additive=additive, safe=safe))
    assert modified and "Softmax" in before
    ops = after.op_counts()
    assert ops["SlidingWindowAttention"] == 1
    assert not {"Softmax", "Where", "MatMul", "Range", "Expand"} & set(ops)
    (swa,) = [n for n in after.nodes if n.op == "SlidingWindowAttention"]
    assert swa.attrs["window"] == 4 and swa.attrs["kv_num_heads"] == 2
    assert swa.attrs["scale"] == pytest.approx(8 ** -0.5)


@pytest.mark.parametrize("graph, reason", [
    (swa_graph(mask="causal"), "grow with T"),
    (swa_graph(mask="strict"), "not causal"),
    (swa_graph(axis=2), "last axis"),
    (swa_graph(safe="first_row"), "the softmax output is zeroed where %equal holds at seq=17"),
])
def test_near_misses_do_not_fire_and_say_why(graph, reason):
    _, after, modified = fused(graph)
    assert not modified and "SlidingWindowAttention" not in after.op_counts()
    notes = explain(after, RULES)
    assert any(reason in note for note in notes), notes


# -- ONNX Attention (opset 23), imported through its function body ------------------------------

@pytest.mark.parametrize("options", [
    {}, {"packed": True}, {"q_heads": 2, "kv_heads": 2}, {"scale": 0.1},
    {"mask": "window_only", "is_causal": 1, "packed": True},  # the band = mask AND is_causal
    {"mask": "band", "is_causal": 1}, {"folded": False},  # (the pass alone, nothing folded first)
], ids=["bhtd-gqa", "packed", "mha", "scale", "window-and-is-causal", "band-and-is-causal", "raw"])
def test_onnx_attention_with_a_band_becomes_sliding_window_attention(options):
    before, after, modified = fused(attention_graph(**options))
    assert modified and "Softmax" in before
    after = run_passes(after, ["fold-reshape-transpose", "dce"])
    ops = after.op_counts()
    assert ops["SlidingWindowAttention"] == 1
    assert not {"Softmax", "MatMul", "Range", "Expand", "ReduceMax"} & set(ops)
    (swa,) = [n for n in after.nodes if n.op == "SlidingWindowAttention"]
    heads = (options.get("q_heads", 4), options.get("kv_heads", 2))
    assert (swa.attrs["q_num_heads"], swa.attrs["kv_num_heads"]) == heads
    assert swa.attrs["window"] == 4
    assert swa.attrs["scale"] == pytest.approx(options.get("scale", 8 ** -0.5), rel=1e-6)
    if options.get("packed"):  # q, k, v go in as they came: no layout ops left at all
        assert [v.name for v in swa.inputs] == ["q", "k", "v"]
        assert set(ops) == {"SlidingWindowAttention"}


@pytest.mark.parametrize("options, reason", [
    ({"mask": "strict"}, "not causal: at seq=17 it allows (query 0, key 0) = False"),
    ({"mask": "causal"}, "causal without a window"),
    ({"mask": None, "is_causal": 1}, "causal without a window"),
    ({"mask": None, "is_causal": 0}, "not masked: every query sees every key"),
], ids=["off-by-one", "causal-mask", "is-causal-only", "no-mask"])
def test_onnx_attention_near_misses_do_not_fire_and_say_why(options, reason):
    _, after, modified = fused(attention_graph(**options))
    assert not modified and "SlidingWindowAttention" not in after.op_counts()
    notes = explain(after, RULES)
    assert len(notes) == 1 and reason in notes[0], notes
