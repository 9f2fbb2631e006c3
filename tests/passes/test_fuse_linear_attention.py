"""fuse-linear-attention: the parallel (masked, decay-weighted) form -> LinearAttention."""

import numpy as np
import pytest

from sbc.passes.base import explain
from sbc.passes.dce import DeadCodeElimination
from sbc.passes.fuse_linear_attention import RULES, FuseLinearAttention
from tests.passes.attention_graphs import gla_graph
from tests.passes.helpers import check_pass, random_feeds

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
