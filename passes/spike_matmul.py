"""spike-matmul: a matmul whose input is dequantised spikes -> SpikeMatMul on the counts.

    MatMul(Mul(Cast(counts), scale), W)          (or MatMulPacked, W pre-packed)
        -> SpikeMatMul(counts, scale, W')        Y = (float(counts) @ W) * scale
    MatMul(Mul(Cast(counts), scale), DequantizeGroups(Wq, s))
        -> SpikeMatMul(counts, scale, Wq', s')   int32 sums of counts x int8 per group,
                                                 scaled by s per group and by scale per row
    Add(SpikeMatMul(...), b), b a constant [N]  -> the bias input of the SpikeMatMul

The f32 form only with the float-weights option (measured no faster than the f32 matmul).
W' / Wq' / s' are the weights re-laid out at compile time for SpikeMatMul (f32 [N/16, K, 16];
int8 [N/16, K/4, 16, 4]; s' [G, N]). The int8 form is exact up to the float epilogue; the f32
form multiplies the counts as floats (exact integers below 2^24) and applies the row scale
after the sum instead of before it, so results move by float rounding only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sbc.ir import Graph, Node, Value
from sbc.ir.ops.spike import INT_COUNT_DTYPES, PANEL, pack_spike_weight
from sbc.passes.base import (Match, Miss, Pass, PassResult, RewriteRule, apply_rules,
                              drop_replaced, register_pass)
from sbc.passes.fuse_spike_neurons import dequantised_spikes, producer
from sbc.passes.quantize_weights_int8 import K_AXIS


def dense_weight(node: Node, w: np.ndarray) -> np.ndarray:
    """A MatMul's [K, N] or a MatMulPacked's [N/P, K, P] weight as [K, N]."""
    if node.op == "MatMul":
        return w
    panels, k, p = w.shape
    return w.transpose(1, 0, 2).reshape(k, panels * p)


def group_scales(node: Node, scales: np.ndarray) -> np.ndarray:
    """DequantizeGroups' scales in the weight's layout -> [G, N]."""
    return scales if node.op == "MatMul" else dense_weight(node, scales)


class SpikeMatMulRule(RewriteRule):
    ops = ("MatMul", "MatMulPacked")

    def __init__(self, float_weights: bool = False):
        self.float_weights = float_weights

    def match(self, node: Node) -> Match | Miss:
        a, w = node.inputs
        spikes = dequantised_spikes(a)
        if isinstance(spikes, str):
            return Miss(spikes, a)
        counts = spikes[0]
        if counts.dtype not in INT_COUNT_DTYPES:
            return Miss(f"counts are {counts.dtype}; the integer matmul takes {INT_COUNT_DTYPES}")
        if node.op == "MatMulPacked" and w.shape[-1] != PANEL:
            return Miss(f"the weight's panels are {w.shape[-1]} wide, not {PANEL}")
        if a.type.rank < 1 or w.type.rank != (2 if node.op == "MatMul" else 3):
            return Miss(f"needs [..., K] x a weight, got {a.type} x {w.type}")
        n = w.shape[-1] if node.op == "MatMul" else w.shape[0] * w.shape[2]
        if not isinstance(n, int) or n % PANEL:
            return Miss(f"N = {n} is not a multiple of {PANEL}")
        quantised = producer(w, "DequantizeGroups")
        if quantised is not None:
            why = self.check_quantised(quantised, K_AXIS[node.op])
            return Miss(why, w) if why else Match(counts=counts, scale=spikes[1], dequantise=quantised)
        if w.producer is not None or w.data is None or w.dtype != "f32":
            return Miss("the weight is neither an f32 param nor DequantizeGroups of params")
        if not self.float_weights:
            return Miss("the weight is f32 (not quantised) and the float-weights option is off")
        return Match(counts=counts, scale=spikes[1], dequantise=None)

    @staticmethod
    def check_quantised(dequantise: Node, k_axis: int) -> str | None:
        q, scales = dequantise.inputs
        if q.data is None or scales.data is None or q.producer or scales.producer:
            return "the int8 weight or its scales are not params"
        if dequantise.attrs["axis"] % q.type.rank != k_axis:
            return f"the weight is quantised along axis {dequantise.attrs['axis']}, not K"
        k = q.shape[k_axis]
        if k % 4 or dequantise.attrs["group"] % 4:
            return f"K = {k} and the group must be multiples of 4 (K is read in quads)"
        return None

    def rewrite(self, graph: Graph, node: Node, match: Match) -> None:
        w, counts, scale, dequantise = node.inputs[1], match.counts, match.scale, match.dequantise
        if dequantise is None:
            weights = [graph.add_param(f"{w.name}:spike", pack_spike_weight(dense_weight(node, w.data)))]
            group = 128
        else:
            q, s = dequantise.inputs
            weights = [graph.add_param(f"{q.name}:spike", pack_spike_weight(dense_weight(node, q.data))),
                       graph.add_param(f"{s.name}:spike", np.ascontiguousarray(group_scales(node, s.data)))]
            group = dequantise.attrs["group"]
        out = graph.add1("SpikeMatMul", counts, scale, *weights, group=group, name=node.name)
        graph.replace_uses(node.outputs[0], out)
        drop_replaced(graph, node)


class AbsorbBias(RewriteRule):
    """Add(SpikeMatMul(...), b) with b a constant f32 [N] -> SpikeMatMul(..., bias=b)."""
    ops = ("Add",)

    def match(self, node: Node) -> Match | Miss:
        mm, bias = self.operands(node)
        if mm is None:
            return Miss("neither operand is a SpikeMatMul without bias")
        if bias.data is None or bias.dtype != "f32" or bias.shape != (mm.outputs[0].shape[-1],):
            return Miss(f"the other operand {bias.type} is not a constant f32 [N] bias", bias)
        return Match(mm=mm, bias=bias)

    @staticmethod
    def operands(node: Node) -> tuple[Node | None, Value | None]:
        for y, bias in (node.inputs, node.inputs[::-1]):
            mm = producer(y, "SpikeMatMul")
            if mm is not None and len(mm.inputs) < 5:
                return mm, bias
        return None, None

    def rewrite(self, graph: Graph, node: Node, match: Match) -> None:
        mm, bias = match.mm, match.bias
        w_scale = mm.inputs[3] if len(mm.inputs) > 3 else None
        out = graph.add1("SpikeMatMul", *mm.inputs[:3], w_scale, bias, name=mm.name, **mm.attrs)
        graph.replace_uses(node.outputs[0], out)


@register_pass
class SpikeMatMul(Pass):
    name = "spike-matmul"
    runs_after = ("fuse-spike-neurons", "quantize-weights-int8")  # it reads their ops

    @dataclass
    class Options:
        # also f32 weights: no faster than the f32 matmul on CPU (same tiled schedule), so
        # off by default; int8 weights (quantize-weights-int8) are always taken
        float_weights: bool = False

    def run(self, graph: Graph) -> PassResult:
        rules = [SpikeMatMulRule(self.options.float_weights), AbsorbBias()]
        modified = apply_rules(graph, rules)
        if modified:
            from sbc.passes.dce import DeadCodeElimination
            DeadCodeElimination().run(graph)  # the replaced weights and dequantisations
        return PassResult(graph, modified)
