"""pack-matmul-weights: MatMul(x, W) with W a [K, N] weight -> MatMulPacked(x, Wp) where
Wp[N/16, K, 16] is W in column panels, computed once at compile time (as onnxruntime pre-packs
its GEMM weights). The CPU matmul kernel then reads each K x 16 panel contiguously: its
register tile is 6 rows x 2 panels, each panel row one 16-lane (AVX-512) vector load.
"""

from __future__ import annotations

from sbc.ir import Graph
from sbc.ir.ops.nn import pack_weight
from sbc.passes.base import Pass, PassResult, RewriteRule, apply_rules, register_pass

PANEL = 16  # columns per panel: one vector of fp32 (the spike kernels use the same layout)


class PackWeight(RewriteRule):
    ops = ("MatMul",)

    def check(self, node):
        a, w = node.inputs
        if w.producer is not None or w.data is None:
            return "the right operand is not a weight (a param known at compile time)"
        if w.type.rank != 2 or a.type.rank < 2:
            return f"needs [..., K] x [K, N], got {a.type} x {w.type}"
        if w.shape[1] % PANEL:
            return f"N = {w.shape[1]} is not a multiple of {PANEL}"
        if w.dtype != "f32":
            return f"weight dtype {w.dtype} (only f32 is packed)"
        return None

    def rewrite(self, graph, node):
        a, w = node.inputs
        packed = graph.add_param(f"{w.name}:packed", pack_weight(w.data, PANEL))
        new = graph.add1("MatMulPacked", a, packed, name=node.name)
        graph.replace_uses(node.outputs[0], new)


@register_pass
class PackMatmulWeights(Pass):
    name = "pack-matmul-weights"

    def run(self, graph: Graph) -> PassResult:
        modified = apply_rules(graph, [PackWeight()])
        graph.toposort()
        return PassResult(graph, modified)
