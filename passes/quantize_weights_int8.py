"""quantize-weights-int8 (opt-in, lossy): the float weight of a matmul fed by spikes -> symmetric
int8 with one scale per group of `group` input channels (SpikingBrain's W8ASpike weights). The
weight is f32, or bf16/f16 read through a widening Cast (kept in the dtype it was stored in).

    MatMul(Mul(Cast(counts), scale), W [K, N])
        -> MatMul(..., DequantizeGroups(Wq [K, N] i8, scales [ceil(K/group), N]) {axis = 0})
    MatMulPacked(..., Wp [N/P, K, P])
        -> MatMulPacked(..., DequantizeGroups(Wq [N/P, K, P], scales [N/P, G, P]) {axis = 1})

scale = absmax / 127 of the group, q = round(w / scale); a K below `group` is one group.
DequantizeGroups is not foldable, so the int8 weight survives constant folding; spike-matmul
then computes the matmul with integer products. Not in DEFAULT_PIPELINE: it changes numerics
(the CLI's `--quantize w8` adds it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sbc.ir import Graph, Node
from sbc.ir.ops.nn import NARROW_FLOATS
from sbc.ir.ops.spike import quantize_groups
from sbc.passes.base import (Match, Miss, Pass, PassResult, RewriteRule, apply_rules,
                              register_pass, stored_weight)
from sbc.passes.fuse_spike_neurons import dequantised_spikes

K_AXIS = {"MatMul": 0, "MatMulPacked": 1}  # where the input channels lie in each weight layout
WEIGHT_RANK = {"MatMul": 2, "MatMulPacked": 3}
FLOAT_WEIGHTS = ("f32", *NARROW_FLOATS)  # a bf16/f16 weight (kept as stored) is quantised too


class QuantizeSpikeWeight(RewriteRule):
    ops = ("MatMul", "MatMulPacked")

    def __init__(self, group: int):
        self.group = group
        self.done: dict[int, tuple] = {}  # id(weight) -> its quantised params (shared weights)

    def match(self, node: Node) -> Match | Miss:
        a, w = node.inputs
        spikes = dequantised_spikes(a)
        if isinstance(spikes, str):
            return Miss(spikes, a)
        stored = stored_weight(w)
        if stored is None:
            return Miss("the weight is not a param known at compile time", w)
        if stored.dtype not in FLOAT_WEIGHTS or w.type.rank != WEIGHT_RANK[node.op]:
            return Miss(f"the weight {stored.type} is not a float {node.op} weight", w)
        return Match(a=a, w=stored)

    def rewrite(self, graph: Graph, node: Node, match: Match) -> None:
        a, w = match.a, match.w
        axis = K_AXIS[node.op]
        if id(w) not in self.done:
            q, scales = quantize_groups(w.data.astype(np.float32), axis, self.group)
            self.done[id(w)] = (graph.add_param(f"{w.name}:q8", q),
                                graph.add_param(f"{w.name}:q8_scale", scales))
        q, scales = self.done[id(w)]
        weight = graph.add1("DequantizeGroups", q, scales, axis=axis, group=self.group,
                            name=node.name)
        graph.replace_uses(node.outputs[0], graph.add1(node.op, a, weight, name=node.name))


@register_pass
class QuantizeWeightsInt8(Pass):
    name = "quantize-weights-int8"
    runs_after = ("fuse-spike-neurons",)  # it quantises the weights that spikes feed

    @dataclass
    class Options:
        group: int = 128  # input channels per weight scale

    def run(self, graph: Graph) -> PassResult:
        modified = apply_rules(graph, [QuantizeSpikeWeight(self.options.group)])
        graph.prune_params()  # the f32 weights nothing reads any more
        return PassResult(graph, modified)
