"""pack-matmul-weights: MatMul(x, W) with W a [K, N] weight -> MatMulPacked(x, Wp) where
Wp[N/16, K, 16] is W in column panels, computed once at compile time (as onnxruntime pre-packs
its GEMM weights). The CPU matmul kernel then reads each K x 16 panel contiguously: its
register tile is 6 rows x 2 panels, each panel row one 16-lane (AVX-512) vector load.

A weight stored narrower than x (bf16 or f16, the dtype a checkpoint holds it in) and read
through a widening Cast is packed in its stored dtype, and the Cast goes into the kernel:

    MatMul(x f32, Cast(W bf16, to=f32))  ->  MatMulPacked(x f32, Wp bf16)

so the weight's bytes stay half of f32's, and no f32 copy of it is made at run time either.
The packed param replaces the old one at once when nothing else reads it, so packing a
model's weights holds one weight's worth of extra memory, not the whole model's.
"""

from __future__ import annotations

from sbc.ir.ops.nn import PANEL, pack_weight
from sbc.passes.base import (Match, Miss, RewriteRule, RulePass, drop_replaced, register_pass,
                              stored_weight)


class PackWeight(RewriteRule):
    ops = ("MatMul",)

    def match(self, node):
        a, w = node.inputs
        stored = stored_weight(w)
        if stored is None:
            return Miss("the right operand is not a weight (a param known at compile time, "
                        "or a widening Cast of one)", w)
        if w.type.rank != 2 or a.type.rank < 2:
            return Miss(f"needs [..., K] x [K, N], got {a.type} x {w.type}")
        if w.shape[1] % PANEL:
            return Miss(f"N = {w.shape[1]} is not a multiple of {PANEL}", w)
        if w.dtype != "f32":
            return Miss(f"weight dtype {w.dtype} (only f32 is packed)", w)
        return Match(a=a, w=stored)

    def rewrite(self, graph, node, match):
        a, w = match.a, match.w
        packed = graph.add_param(f"{w.name}:packed", pack_weight(w.data, PANEL))
        new = graph.add1("MatMulPacked", a, packed, name=node.name)
        graph.replace_uses(node.outputs[0], new)
        drop_replaced(graph, node)


@register_pass
class PackMatmulWeights(RulePass):
    name = "pack-matmul-weights"
    RULES = [PackWeight()]
