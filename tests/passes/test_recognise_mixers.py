"""recognise-mixers: token mixers in any spelling become LinearAttention or
SlidingWindowAttention (IR after the pass, numerics before = after, verifier), near misses stay
as they are with a reason, and the syntactic fusions' own forms give the same op."""

import numpy as np
import pytest

from sbc.ir.printer import print_graph
from sbc.passes.fuse_linear_attention import FuseLinearAttention
from sbc.passes.fuse_sliding_window_attention import FuseSlidingWindowAttention
from sbc.passes.recognise_mixers import RecogniseMixers, explain
from tests.passes import mixer_graphs as forms
from tests.passes.attention_graphs import gla_graph, swa_graph
from tests.passes.helpers import assert_stable, check_pass

SIZES = {"batch": 2, "seq": 11}
FUSED_OPS = ("LinearAttention", "SlidingWindowAttention")

LINEAR = {
    "masked_fill(~mask, 0)": lambda: forms.linear_graph("flipped"),
    "scores * causal": lambda: forms.linear_graph("multiplied"),
    "scores.tril()": lambda: forms.linear_graph("trilu"),
    "where(mask, s, zeros_like(s))": lambda: forms.linear_graph("zeros_like"),
    "einsum": lambda: forms.linear_graph("where", spelling="einsum"),
    "scale on the output": lambda: forms.linear_graph("flipped", out_scale=0.35),
}
GATED = {
    "q e^b, k e^-b, flipped mask": lambda: forms.linear_graph("flipped", decay="key"),
    "pairwise decay tensor, 3-operand einsum": lambda: forms.linear_graph("trilu", decay="pairwise"),
    "per-head decay matrix e^tril(b_i - b_j)": lambda: forms.linear_graph("where", decay="head"),
}
WINDOWED = {
    "finfo.min fill": lambda: forms.softmax_graph("finfo"),
    "additive -1e9 bias": lambda: forms.softmax_graph("bias", window=3),
    "masked_fill(~band, -inf) + isnan guard": lambda: forms.softmax_graph("flipped", guard=True),
    "sqrt(scale) on q and on k": lambda: forms.softmax_graph("finfo", split_scale=True),
    "5-D GQA einsum": forms.grouped_5d_graph,
}


def fuse(graph):
    return fuse_with(RecogniseMixers(), graph)


def fuse_with(pass_, graph):
    _, after, modified = check_pass(pass_, graph, sizes=SIZES, tolerance=2e-5)
    assert modified
    assert_stable(pass_, after)
    fused = [n for n in after.nodes if n.op in FUSED_OPS]
    assert len(fused) == 1, print_graph(after)
    assert not any(n.op in ("Softmax", "Trilu", "Einsum", "CumSum") for n in after.nodes)
    return fused[0], print_graph(after)


@pytest.mark.parametrize("form", LINEAR)
def test_linear_attention_spellings(form):
    node, text = fuse(LINEAR[form]())
    assert node.op == "LinearAttention" and node.attrs["update_rule"] == "linear"
    assert (node.attrs["q_num_heads"], node.attrs["kv_num_heads"]) == (4, 2)  # repeat_kv undone
    assert "LinearAttention" in text and "MatMul" not in text


@pytest.mark.parametrize("form", GATED)
def test_gated_linear_attention_spellings(form):
    node, _ = fuse(GATED[form]())
    assert node.attrs["update_rule"] == "gated"
    assert node.inputs[4].shape[-1] == (2 if "per-head" in form else 16)  # decay per head / key


@pytest.mark.parametrize("form", WINDOWED)
def test_sliding_window_spellings(form):
    node, _ = fuse(WINDOWED[form]())
    assert node.op == "SlidingWindowAttention"
    assert node.attrs["window"] == (3 if "1e9" in form else 4)
    assert (node.attrs["q_num_heads"], node.attrs["kv_num_heads"]) == (4, 2)
    # SDPA's sqrt(scale) on q and k stays on them (position-wise, outside the region)
    expected = 1.0 if "sqrt" in form or "5-D" in form else 8 ** -0.5  # 5-D: none given
    assert node.attrs["scale"] == pytest.approx(expected, rel=1e-6)


def test_a_scale_on_the_scores_becomes_the_ops():
    node, _ = fuse(forms.linear_graph("flipped", scale=0.35))
    assert node.attrs["scale"] == pytest.approx(0.35, rel=1e-6)


def test_full_causal_attention_gets_a_kv_cache_of_max_context():
    node, _ = fuse(swa_graph(mask="causal"))
    assert (node.attrs["full"], node.attrs["window"]) == (1, 4096)
    node, _ = fuse_with(RecogniseMixers(max_context=64), swa_graph(mask="causal"))
    assert node.attrs["window"] == 64


@pytest.mark.parametrize("gammas, kv_heads", [((0.9, 0.9, 0.5, 0.5), 2), ((0.97, 0.9, 0.8, 0.5), 4)])
def test_a_constant_decay_per_head_is_gated_linear_attention(gammas, kv_heads):
    """RetNet's retention: gamma_h^(i - j) becomes a constant log decay per KV head; query
    heads sharing a KV head but not its gamma get states of their own (k, v copied). The
    0.5 heads underflow to exact zeros long before 257 positions: still no window."""
    node, _ = fuse(forms.retention_graph(gammas))
    assert (node.op, node.attrs["update_rule"]) == ("LinearAttention", "gated")
    assert (node.attrs["q_num_heads"], node.attrs["kv_num_heads"]) == (4, kv_heads)
    decay = node.inputs[4].producer.inputs[0].data  # Expand(log gamma per KV head, [B, T, H])
    assert np.allclose(np.exp(decay), gammas[::4 // kv_heads], rtol=1e-5)


def test_wide_windows_are_read_from_the_mask():
    """A window wider than the trial shows only when the compile-time mask is read at 257."""
    node, _ = fuse(swa_graph(window=100))
    assert node.attrs["window"] == 100


@pytest.mark.parametrize("graph, rule", [(gla_graph, FuseLinearAttention),
                                         (swa_graph, FuseSlidingWindowAttention)])
def test_same_op_as_the_syntactic_rule(graph, rule):
    """Correctness does not depend on spelling: on the syntactic rules' own forms, the
    recogniser makes the op they make."""
    by_rule = [n for n in rule().run(graph()).graph.nodes if n.op in FUSED_OPS][0]
    by_meaning, _ = fuse(graph())
    assert by_meaning.op == by_rule.op
    for attr in ("q_num_heads", "kv_num_heads", "update_rule", "window"):
        assert by_meaning.attrs.get(attr) == by_rule.attrs.get(attr), attr


NEAR_MISSES = {
    "no mask (not causal)": (lambda: forms.linear_graph("where", mask="none"), "not a causal band"),
    "query does not see itself": (lambda: forms.linear_graph("where", mask="strict"),
                                  "not a causal band"),
    "wrong decay sign": (lambda: gla_graph(sign=-1), "closest"),
    "relu on the scores": (forms.relu_scores_graph, "mixed sign"),
    "heads mixed": (forms.mixed_heads_graph, "closest"),
    "bidirectional window": (forms.bidirectional_graph, "not a causal band"),
    "linear attention over a window": (lambda: forms.linear_graph("where", mask="band"),
                                       "has no window"),
    "decay over a window wider than the trial": (lambda: forms.retention_graph((0.99, 0.99, 0.95, 0.95), window=100),
                                                 "has no window"),
}


@pytest.mark.parametrize("form", NEAR_MISSES)
def test_near_misses_stay_and_say_why(form):
    build, reason = NEAR_MISSES[form]
    _, after, modified = check_pass(RecogniseMixers(), build(), sizes=SIZES)
    assert not modified
    notes = explain(after)
    assert len(notes) == 1 and reason in notes[0], notes
