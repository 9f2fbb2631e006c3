"""fuse-sliding-window-attention: masked softmax attention with a banded causal mask ->
one SlidingWindowAttention op (O(T * window), a constant-size KV window when decoding).

    MatMul(Softmax_-1(Where(band, scale * MatMul(q, Transpose(k)), -inf)), v)
    MatMul(Softmax_-1(scale * MatMul(q, Transpose(k)) + Where(band, 0, -inf)), v)
        -> SlidingWindowAttention(window = w, scale)

q, k, v are [B, H, T, D]; `band` must evaluate to 0 <= i - j < w (a query sees itself and the
previous w - 1 keys); scale may be a Div or Mul by a constant, or absent. A repeat_kv on k and
v (GQA) is undone. A plain causal mask (no window) is not fused: its KV cache would grow with T.
"""

from __future__ import annotations

import math

from sbc.ir import Graph, Node
from sbc.passes.attention_patterns import (AttentionRule, mask_window, other_operand,
                                           pack_heads, producer,
                                           scalar, unpack_heads, unrepeat_kv)
from sbc.passes.base import Pass, PassResult, apply_rules, register_pass
from sbc.passes.fold_reshape_transpose import perm_of


def _scaled_scores(v) -> tuple[Node | None, float]:
    """MatMul node and scale of scale * MatMul(q, kT) written as Div, Mul or nothing."""
    node = producer(v, "Div", "Mul")
    if node is None:
        return producer(v, "MatMul"), 1.0
    if node.op == "Div":
        c = scalar(node.inputs[1])
        return (producer(node.inputs[0], "MatMul"), 1.0 / c) if c else (None, 1.0)
    for i in (0, 1):
        c, mm = scalar(node.inputs[1 - i]), producer(node.inputs[i], "MatMul")
        if c is not None and mm is not None:
            return mm, c
    return None, 1.0


def _masked(x) -> tuple | str:
    """(mask, scores value) from Where(mask, s, -inf) or s + Where(mask, 0, -inf)."""
    where = producer(x, "Where")
    if where is not None and scalar(where.inputs[2]) == -math.inf:
        return where.inputs[0], where.inputs[1]
    add = producer(x, "Add")
    if add is not None:
        for bias in add.inputs:
            w = producer(bias, "Where")
            if w is not None and scalar(w.inputs[1]) == 0.0 and scalar(w.inputs[2]) == -math.inf:
                return w.inputs[0], other_operand(add, bias)
    return "the softmax input is not masked with -inf by Where(mask, scores, -inf) or an additive mask"


class MaskedSoftmaxAttention(AttentionRule):
    def match(self, node) -> dict | str:
        softmax = producer(node.inputs[0], "Softmax")
        if softmax is None or softmax.attrs["axis"] not in (-1, 3):
            return "the weights are not a Softmax over the last axis"
        masked = _masked(softmax.inputs[0])
        if isinstance(masked, str):
            return masked
        mask, scores_value = masked
        scores, scale = _scaled_scores(scores_value)
        kt = producer(scores.inputs[1], "Transpose") if scores else None
        if kt is None or perm_of(kt) != [0, 1, 3, 2]:
            return "the scores are not (scaled) MatMul(q, Transpose(k)) over [B, H, T, D]"
        q, k, v = scores.inputs[0], kt.inputs[0], node.inputs[1]
        if any(x.type.rank != 4 for x in (q, k, v)):
            return "q, k and v are not [B, H, T, D]"
        window, why = mask_window(mask, q.shape[2])
        if why:
            return why
        if window == 0:
            return "the mask is causal without a window: the KV cache would grow with T"
        (k0, gk), (v0, gv) = unrepeat_kv(k), unrepeat_kv(v)
        if gk == gv:
            k, v = k0, v0
        hq, hkv = q.shape[1], k.shape[1]
        if not isinstance(hq, int) or not isinstance(hkv, int) or hq % hkv:
            return f"query heads {hq} are not a multiple of key/value heads {hkv}"
        return {"q": q, "k": k, "v": v, "window": window, "scale": scale}

    def rewrite(self, graph: Graph, node: Node) -> None:
        p = self.match(node)
        hq, hkv = p["q"].shape[1], p["k"].shape[1]
        name = node.name or "sliding_window_attention"
        inputs = [pack_heads(graph, p[n], f"{name}_{n}") for n in ("q", "k", "v")]
        swa = graph.add("SlidingWindowAttention", inputs, {
            "q_num_heads": hq, "kv_num_heads": hkv, "window": p["window"],
            "scale": p["scale"]}, name=name)
        graph.replace_uses(node.outputs[0], unpack_heads(graph, swa.outputs[0], hq, f"{name}_o"))


RULES = [MaskedSoftmaxAttention()]


@register_pass
class FuseSlidingWindowAttention(Pass):
    name = "fuse-sliding-window-attention"

    def run(self, graph: Graph) -> PassResult:
        return PassResult(graph, apply_rules(graph, RULES))
