"""fuse-sliding-window-attention: banded masked softmax -> SlidingWindowAttention."""

import pytest

from sbc.passes.base import explain
from sbc.passes.dce import DeadCodeElimination
from sbc.passes.fuse_sliding_window_attention import RULES, FuseSlidingWindowAttention
from tests.passes.attention_graphs import swa_graph
from tests.passes.helpers import check_pass

SIZES = {"batch": 2, "seq": 11}


def fused(graph):
    before, after, modified = check_pass(FuseSlidingWindowAttention(), graph, sizes=SIZES,
                                         tolerance=1e-5)
    return before, DeadCodeElimination().run(after).graph, modified


@pytest.mark.parametrize("additive", [False, True])
def test_banded_softmax_becomes_sliding_window_attention(additive):
    before, after, modified = fused(swa_graph(window=4, additive=additive))
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
])
def test_near_misses_do_not_fire_and_say_why(graph, reason):
    _, after, modified = fused(graph)
    assert not modified and "SlidingWindowAttention" not in after.op_counts()
    notes = explain(after, RULES)
    assert any(reason in note for note in notes), notes
