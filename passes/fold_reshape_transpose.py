"""fold-reshape-transpose: layout chains -> one op or nothing.

    Reshape(Reshape(x))        -> Reshape(x)
    Reshape(x) to x's shape    -> x            (also Squeeze/Unsqueeze/Flatten/Identity no-ops)
    Transpose(Transpose(x))    -> Transpose(x) with the composed perm, or x if it is identity
"""

from __future__ import annotations

from sbc.ir import Graph, Node
from sbc.passes.base import Pass, PassResult, RewriteRule, apply_rules, register_pass

SHAPE_OPS = ("Reshape", "Squeeze", "Unsqueeze", "Flatten")


def _perm(node: Node) -> list[int]:
    rank = node.inputs[0].type.rank
    perm = node.attrs["perm"]
    return list(range(rank))[::-1] if perm is None else [p % rank for p in perm]


class ReshapeOfReshape(RewriteRule):
    ops = SHAPE_OPS

    def check(self, node):
        producer = node.inputs[0].producer
        if producer is None or producer.op not in SHAPE_OPS:
            return "input is not produced by a reshape-like op"
        if node.outputs[0].type.rank and any(d == 0 for d in node.outputs[0].shape):
            return "zero-sized dims keep their explicit reshape"
        return None

    def rewrite(self, graph, node):
        source = node.inputs[0].producer.inputs[0]
        shape = graph.add1("Constant", value=_shape_value(node.outputs[0].shape), name=f"{node.name}:shape")
        new = graph.add1("Reshape", source, shape, name=node.name)
        graph.replace_uses(node.outputs[0], new)


def _shape_value(shape):
    import numpy as np
    static = all(isinstance(d, int) for d in shape)
    return np.array(list(shape), dtype=np.int64 if static else object)


class NoOpLayout(RewriteRule):
    ops = SHAPE_OPS + ("Identity", "Transpose")

    def check(self, node):
        if node.op == "Transpose" and _perm(node) != list(range(len(_perm(node)))):
            return "the permutation is not the identity"
        if node.outputs[0].type != node.inputs[0].type:
            return f"shape changes from {node.inputs[0].type} to {node.outputs[0].type}"
        return None

    def rewrite(self, graph, node):
        graph.replace_uses(node.outputs[0], node.inputs[0])


class TransposeOfTranspose(RewriteRule):
    ops = ("Transpose",)

    def check(self, node):
        producer = node.inputs[0].producer
        if producer is None or producer.op != "Transpose":
            return "input is not produced by a Transpose"
        return None

    def rewrite(self, graph, node):
        inner = node.inputs[0].producer
        composed = [_perm(inner)[p] for p in _perm(node)]
        new = graph.add1("Transpose", inner.inputs[0], name=node.name, perm=composed)
        graph.replace_uses(node.outputs[0], new)


RULES = [NoOpLayout(), ReshapeOfReshape(), TransposeOfTranspose()]


@register_pass
class FoldReshapeTranspose(Pass):
    name = "fold-reshape-transpose"

    def run(self, graph: Graph) -> PassResult:
        modified = apply_rules(graph, RULES)
        graph.toposort()
        return PassResult(graph, modified)
