"""fuse-linear-attention: decomposed linear attention -> one LinearAttention op (O(T)).

    Scan(S0, q, k, v [, g] [, beta]) whose body is one step of linear/gated/delta/gated_delta
        -> LinearAttention(update_rule, decay per key dim or per head, past/present state)
                                                                (see linear_attention_scan.py)
    MatMul(Where(causal, MatMul(q * exp(b), Transpose(k * exp(-b))), 0), v),  b = CumSum_T(g)
        -> LinearAttention(update_rule = gated, decay g)        (the parallel GLA form)
    MatMul(Where(causal, MatMul(q, Transpose(k)), 0), v)
        -> LinearAttention(update_rule = linear)
    Gather(chunked GLA of q, k, v, g [B, H, N*C, dv], arange(T), axis 2)
        -> LinearAttention(update_rule = gated, decay g)        (the chunked GLA form; see
                                                                 linear_attention_chunked_form.py)

q, k, v, g are [B, H, T, D] (g may be [B, H, T, 1]: one decay per head); a repeat_kv on k, v
and g (GQA) is undone so the op keeps one state per KV head. `causal` must evaluate to
i >= j. Any query scaling stays on q (scale = 1). The T x T score matrix disappears.
RULES is the one list the pass and `sbc compile --explain` use.
"""

from __future__ import annotations

from sbc.ir import Graph, Node
from sbc.passes.attention_patterns import (AttentionRule, mask_window, pack_heads, producer,
                                           scalar, split_mul,
                                           unpack_heads, unrepeat_kv)
from sbc.passes.base import Match, Miss, RulePass, register_pass
from sbc.passes.fold_reshape_transpose import perm_of
from sbc.passes.linear_attention_chunked_form import ChunkedLinearAttention
from sbc.passes.linear_attention_scan import ScanLinearAttention


def _exp_of_cumsum(v, negated: bool):
    """The CumSum node b in Exp(b) (or Exp(Neg(b)) when negated), else None."""
    exp = producer(v, "Exp")
    x = exp.inputs[0] if exp else None
    if negated:
        neg = producer(x, "Neg")
        x = neg.inputs[0] if neg else None
    return producer(x, "CumSum")


class ParallelLinearAttention(AttentionRule):
    def match(self, node) -> Match | Miss:
        """The pieces of the pattern, or why it does not match."""
        where = producer(node.inputs[0], "Where")
        if where is None:
            return Miss("the scores are not masked by Where(mask, scores, 0)")
        if scalar(where.inputs[2]) != 0.0:
            return Miss("the masked-out value is not 0 (a softmax attention?)")
        scores = producer(where.inputs[1], "MatMul")
        kt = producer(scores.inputs[1], "Transpose") if scores else None
        if kt is None or perm_of(kt) != [0, 1, 3, 2]:
            return Miss("the scores are not MatMul(q, Transpose(k)) over [B, H, T, D]",
                        where.inputs[1])
        q, k, v = scores.inputs[0], kt.inputs[0], node.inputs[1]
        if any(x.type.rank != 4 for x in (q, k, v)):
            return Miss("q, k and v are not [B, H, T, D]")
        seq = q.shape[2]
        window, why = mask_window(where.inputs[0], seq)
        if why:
            return Miss(why)
        if window != 0:
            return Miss(f"the mask is a sliding window of {window}, not causal")
        parts = {"q": q, "k": k, "v": v, "g": None}
        decayed = self.decay(q, k, parts)
        if isinstance(decayed, str):
            return Miss(decayed)
        hq, hkv = self.heads(parts)
        kv_heads = {parts[n].shape[1] for n in ("k", "v", "g") if parts[n] is not None}
        if len(kv_heads) != 1:
            return Miss(f"key, value and decay have different head counts {sorted(kv_heads)}")
        if not isinstance(hq, int) or not isinstance(hkv, int) or hq % hkv:
            return Miss(f"query heads {hq} are not a multiple of key/value heads {hkv}")
        return Match(parts)

    @staticmethod
    def decay(q, k, parts: dict) -> str | None:
        """Fill parts' q, k, g from q * exp(b), k * exp(-b); None if the form has no decay."""
        q_split = split_mul(q.producer, lambda x: _exp_of_cumsum(x, negated=False))
        k_split = split_mul(k.producer, lambda x: _exp_of_cumsum(x, negated=True))
        if q_split is None and k_split is None:
            if split_mul(q.producer, lambda x: _exp_of_cumsum(x, negated=True)) is not None:
                return "the decay has the wrong sign: q * exp(-cumsum(g)) and k * exp(cumsum(g))"
            return None  # plain linear attention
        if q_split is None or k_split is None or q_split[1] is not k_split[1]:
            return "q and k are not scaled by exp(b) and exp(-b) of one b = CumSum(g)"
        cumsum = q_split[1]
        axis = scalar(cumsum.inputs[1])
        if axis not in (2.0, -2.0) or cumsum.attrs["exclusive"] or cumsum.attrs["reverse"]:
            return "the decay is not an inclusive forward CumSum over the sequence axis"
        g, k = cumsum.inputs[0], k_split[0]
        if g.type.rank != 4 or g.shape[:3] != k.shape[:3] or g.shape[3] not in (1, k.shape[3]):
            return f"the log decay {g.type} is not [B, H, T, dk] or [B, H, T, 1]"
        parts.update(q=q_split[0], k=k_split[0], g=g)
        return None

    @staticmethod
    def heads(parts: dict):
        """Undo repeat_kv on k, v, g when all three were repeated alike; (Hq, Hkv)."""
        unrepeated = {n: unrepeat_kv(parts[n]) for n in ("k", "v", "g") if parts[n] is not None}
        if len({groups for _, groups in unrepeated.values()}) == 1:
            parts.update({n: x for n, (x, _) in unrepeated.items()})
        return parts["q"].shape[1], parts["k"].shape[1]

    def rewrite(self, graph: Graph, node: Node, p: Match) -> None:
        hq, hkv = p["q"].shape[1], p["k"].shape[1]
        name = node.name or "linear_attention"
        inputs = [pack_heads(graph, p[n], f"{name}_{n}") for n in ("q", "k", "v")]
        if p["g"] is not None:
            inputs += [None, pack_heads(graph, p["g"], f"{name}_g")]
        la = graph.add("LinearAttention", inputs, {
            "q_num_heads": hq, "kv_num_heads": hkv, "scale": 1.0,
            "update_rule": "gated" if p["g"] is not None else "linear"}, name=name)
        graph.replace_uses(node.outputs[0], unpack_heads(graph, la.outputs[0], hq, f"{name}_o"))


RULES = [ParallelLinearAttention(), ScanLinearAttention(), ChunkedLinearAttention()]


@register_pass
class FuseLinearAttention(RulePass):
    name = "fuse-linear-attention"
    runs_after = ("loop-to-scan",)  # the Scans it makes of Loops are raised here
    RULES = RULES
