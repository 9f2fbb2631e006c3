"""fuse-sliding-window-attention: softmax attention with a banded causal mask -> one
SlidingWindowAttention op (O(T * window), a constant-size KV window when decoding).

    MatMul(Softmax_-1(Where(band, scale * MatMul(q, Transpose(k)), -inf)), v)
    MatMul(Softmax_-1(scale * MatMul(q, Transpose(k)) + bias), v)
    MatMul(Where(no_row_masked, 0, Softmax_-1(...)), v)      (ONNX Attention's function body)
        -> SlidingWindowAttention(window = w, scale)

q, k, v are [B, H, T, D]; `band` must evaluate to 0 <= i - j < w (a query sees itself and the
previous w - 1 keys), `bias` to 0 there and -inf elsewhere (any compile-time sum, e.g. the
ONNX Attention body's mask bias plus its is_causal bias). The scale is the product of the
constant Mul/Div factors on the scores, q and k (Attention splits it as sqrt(scale) on both),
or 1. Same-dtype Casts and Identities are looked through, and a repeat_kv on k and v (GQA) is
undone. The "safe softmax" Where that zeroes rows with every key masked must be false
everywhere (a band always lets a query see itself). A plain causal mask (no window) is not
fused: its KV cache would grow with T.
"""

from __future__ import annotations

import math

import numpy as np

from sbc.ir import Graph, Node
from sbc.passes.attention_patterns import (AttentionRule, bias_window, const_scalar,
                                           mask_window, never_true, other_operand, pack_heads,
                                           producer, through_casts, unpack_heads, unrepeat_kv)
from sbc.passes.base import Match, Miss, RulePass, register_pass
from sbc.passes.fold_reshape_transpose import perm_of


def peel_scale(v) -> tuple:
    """(x, factor) for v = factor * x spelled as Mul/Div by compile-time scalars (any number,
    through same-dtype casts)."""
    factor = 1.0
    while True:
        v = through_casts(v)
        node = producer(v, "Mul", "Div")
        if node is None:
            return v, factor
        if node.op == "Div":
            c = const_scalar(node.inputs[1])
            if not c:
                return v, factor
            v, factor = node.inputs[0], factor / c
            continue
        found = [(i, c) for i in (0, 1) if (c := const_scalar(node.inputs[1 - i])) is not None]
        if not found:
            return v, factor
        i, c = found[0]
        v, factor = node.inputs[i], factor * c


def _scores(v) -> tuple | str:
    """(q, k, scale) of scale * MatMul(q, Transpose(k)), the scale anywhere on the way."""
    base, outer = peel_scale(v)
    mm = producer(base, "MatMul")
    if mm is None:
        return "the scores are not (scaled) MatMul(q, Transpose(k)) over [B, H, T, D]"
    q, q_scale = peel_scale(mm.inputs[0])
    kt_value, kt_scale = peel_scale(mm.inputs[1])
    kt = producer(kt_value, "Transpose")
    if kt is None or perm_of(kt) != [0, 1, 3, 2]:
        return "the scores are not (scaled) MatMul(q, Transpose(k)) over [B, H, T, D]"
    k, k_scale = peel_scale(kt.inputs[0])
    return q, k, outer * q_scale * kt_scale * k_scale


def _masked(x) -> tuple | str:
    """(window-or-None, why, scores value) of Where(mask, s, -inf) or s + bias."""
    x = through_casts(x)
    where = producer(x, "Where")
    if where is not None and const_scalar(where.inputs[2]) == -math.inf:
        return (*mask_window(where.inputs[0], x.shape[-1]), where.inputs[1])
    add = producer(x, "Add")
    if add is not None:  # the bias is the operand that is not the scores, [.., T, T]
        for bias in sorted(add.inputs, key=_is_scores):
            if all(d == 1 for d in bias.shape[:-2]):
                return (*_bias_window(bias, x.shape[-1]), other_operand(add, bias))
    return "the softmax input is not masked with -inf by Where(mask, scores, -inf) or an " \
           "additive mask"


def _is_scores(v) -> bool:
    return producer(peel_scale(v)[0], "MatMul") is not None


def _bias_window(bias, seq):
    """A bias Where(mask, 0, -inf) is read as its boolean mask (clearer reasons), any other
    as the float values it evaluates to."""
    where = producer(through_casts(bias), "Where")
    if where is not None and const_scalar(where.inputs[1]) == 0.0 \
            and const_scalar(where.inputs[2]) == -math.inf:
        return mask_window(where.inputs[0], seq)
    return bias_window(bias, seq)


def _safe_softmax(weights) -> tuple:
    """(softmax value, condition or None) for Where(cond, 0, softmax) or a bare softmax."""
    weights = through_casts(weights)
    where = producer(weights, "Where")
    if where is not None and const_scalar(where.inputs[1]) == 0.0:
        return through_casts(where.inputs[2]), where.inputs[0]
    return weights, None


def _snapped(scale: float, head_size) -> float:
    """The scale as float32 computes it (a product of float32 factors, e.g. Attention's
    sqrt(scale) twice, is that up to rounding); 1/sqrt(d) exactly when it is that."""
    if isinstance(head_size, int) and abs(scale * math.sqrt(head_size) - 1.0) <= 1e-6:
        return 1.0 / math.sqrt(head_size)
    return float(np.float32(scale))


class MaskedSoftmaxAttention(AttentionRule):
    def match(self, node) -> Match | Miss:
        weights, zeroed_rows = _safe_softmax(node.inputs[0])
        softmax = producer(weights, "Softmax")
        if softmax is None or softmax.attrs["axis"] not in (-1, 3):
            return Miss("the weights are not a Softmax over the last axis")
        masked = _masked(softmax.inputs[0])
        if isinstance(masked, str):
            return Miss(masked)
        window, why, scores_value = masked
        scores = _scores(scores_value)
        if isinstance(scores, str):
            return Miss(scores)
        q, k, scale = scores
        v = node.inputs[1]
        if any(x.type.rank != 4 for x in (q, k, v)):
            return Miss("q, k and v are not [B, H, T, D]")
        if why:
            return Miss(why)
        if window == 0:
            return Miss("the mask is causal without a window: the KV cache would grow with T")
        if zeroed_rows is not None and (why := never_true(zeroed_rows, q.shape[2], window)):
            return Miss(f"the softmax output is zeroed where {why}")
        (k0, gk), (v0, gv) = unrepeat_kv(k), unrepeat_kv(v)
        if gk == gv:
            k, v = k0, v0
        hq, hkv = q.shape[1], k.shape[1]
        if not isinstance(hq, int) or not isinstance(hkv, int) or hq % hkv:
            return Miss(f"query heads {hq} are not a multiple of key/value heads {hkv}")
        return Match(q=q, k=k, v=v, window=window, scale=_snapped(scale, q.shape[3]))

    def rewrite(self, graph: Graph, node: Node, p: Match) -> None:
        hq, hkv = p["q"].shape[1], p["k"].shape[1]
        name = node.name or "sliding_window_attention"
        inputs = [pack_heads(graph, p[n], f"{name}_{n}") for n in ("q", "k", "v")]
        swa = graph.add("SlidingWindowAttention", inputs, {
            "q_num_heads": hq, "kv_num_heads": hkv, "window": p["window"],
            "scale": p["scale"]}, name=name)
        graph.replace_uses(node.outputs[0], unpack_heads(graph, swa.outputs[0], hq, f"{name}_o"))


RULES = [MaskedSoftmaxAttention()]


@register_pass
class FuseSlidingWindowAttention(RulePass):
    name = "fuse-sliding-window-attention"
    RULES = RULES
