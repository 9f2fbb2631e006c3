"""pack-matmul-weights: MatMul(x, W) with W a [K, N] weight -> MatMulPacked(x, Wp) where
Wp[N/16, K, 16] is W in column panels, computed once at compile time (as onnxruntime pre-packs
its GEMM weights). The CPU matmul kernel then reads each K x 16 panel contiguously: its
register tile is 6 rows x 2 panels, each panel row one 16-lane (AVX-512) vector load.
"""

from __future__ import annotations

from sbc.ir.ops.nn import PANEL, pack_weight
from sbc.passes.base import Match, Miss, RewriteRule, RulePass, register_pass


class PackWeight(RewriteRule):
    ops = ("MatMul",)

    def match(self, node):
        a, w = node.inputs
        if w.producer is not None or w.data is None:
            return Miss("the right operand is not a weight (a param known at compile time)", w)
        if w.type.rank != 2 or a.type.rank < 2:
            return Miss(f"needs [..., K] x [K, N], got {a.type} x {w.type}")
        if w.shape[1] % PANEL:
            return Miss(f"N = {w.shape[1]} is not a multiple of {PANEL}", w)
        if w.dtype != "f32":
            return Miss(f"weight dtype {w.dtype} (only f32 is packed)", w)
        return Match(a=a, w=w)

    def rewrite(self, graph, node, match):
        a, w = match.a, match.w
        packed = graph.add_param(f"{w.name}:packed", pack_weight(w.data, PANEL))
        new = graph.add1("MatMulPacked", a, packed, name=node.name)
        graph.replace_uses(node.outputs[0], new)


@register_pass
class PackMatmulWeights(RulePass):
    name = "pack-matmul-weights"
    RULES = [PackWeight()]
