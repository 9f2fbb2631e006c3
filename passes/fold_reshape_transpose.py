"""fold-reshape-transpose: chains of layout ops -> one op or nothing.

    Identity(x)                         -> x
    Reshape/Squeeze/Unsqueeze/Flatten(x) with x's shape   -> x
    Unsqueeze(Squeeze(x)), Squeeze(Unsqueeze(x)) back to x's shape -> x
    Reshape(Reshape(x))                 -> Reshape(x)   (any reshape-like op on either side)
    Transpose(x) with the identity perm -> x
    Transpose(Transpose(x))             -> Transpose(x) with the composed perm, or x

Each line is a RewriteRule; `explain(graph, RULES)` says why a candidate did not fold.
"""

from __future__ import annotations

import numpy as np

from sbc.ir import Node, Value
from sbc.passes.base import Match, Miss, RewriteRule, RulePass, register_pass

RESHAPE_LIKE = ("Reshape", "Squeeze", "Unsqueeze", "Flatten")  # change the shape, not the data order


def perm_of(node: Node) -> list[int]:
    """A Transpose's permutation, normalised (no perm means reverse the axes)."""
    rank = node.inputs[0].type.rank
    perm = node.attrs["perm"]
    return list(range(rank))[::-1] if perm is None else [int(p) % rank for p in perm]


def _is_identity(perm: list[int]) -> bool:
    return perm == list(range(len(perm)))


def _producer_op(v: Value | None) -> str | None:
    return None if v is None or v.producer is None else v.producer.op


class RemoveIdentity(RewriteRule):
    """Identity(x) -> x."""
    ops = ("Identity",)

    def match(self, node):
        return Match(source=node.inputs[0])

    def rewrite(self, graph, node, match):
        graph.replace_uses(node.outputs[0], match.source)


class NoOpReshape(RewriteRule):
    """A reshape-like op whose output has its input's type -> its input."""
    ops = RESHAPE_LIKE

    def match(self, node):
        before, after = node.inputs[0].type, node.outputs[0].type
        return Match(source=node.inputs[0]) if before == after else \
            Miss(f"the shape changes from {before} to {after}")

    def rewrite(self, graph, node, match):
        graph.replace_uses(node.outputs[0], match.source)


class CancelSqueezeUnsqueeze(RewriteRule):
    """Unsqueeze(Squeeze(x)) or Squeeze(Unsqueeze(x)) giving back x's type -> x."""
    ops = ("Squeeze", "Unsqueeze")
    INVERSE = {"Squeeze": "Unsqueeze", "Unsqueeze": "Squeeze"}

    def match(self, node):
        inverse = self.INVERSE[node.op]
        if _producer_op(node.inputs[0]) != inverse:
            return Miss(f"the input is not produced by {inverse}", node.inputs[0])
        source = node.inputs[0].producer.inputs[0]
        if source.type != node.outputs[0].type:
            return Miss(f"the pair maps {source.type} to {node.outputs[0].type}, not back to itself")
        return Match(source=source)

    def rewrite(self, graph, node, match):
        graph.replace_uses(node.outputs[0], match.source)


class ReshapeOfReshape(RewriteRule):
    """Reshape-like(Reshape-like(x)) -> Reshape(x) to the outer shape (or x if that is x's)."""
    ops = RESHAPE_LIKE

    def match(self, node):
        if _producer_op(node.inputs[0]) not in RESHAPE_LIKE:
            return Miss("the input is not produced by a reshape-like op", node.inputs[0])
        if any(isinstance(d, int) and d == 0 for d in node.outputs[0].shape):
            return Miss("a 0 in the target shape would mean 'copy this dim' (empty tensors stay "
                        "as they are)")
        return Match(source=node.inputs[0].producer.inputs[0])

    def rewrite(self, graph, node, match):
        source, out = match.source, node.outputs[0]
        if source.type == out.type:
            graph.replace_uses(out, source)
            return
        hint = f"{node.name}:shape" if node.name else "shape"
        shape = graph.add1("Constant", value=shape_constant(out.shape), name=hint)
        graph.replace_uses(out, graph.add1("Reshape", source, shape, name=node.name))


def shape_constant(shape) -> np.ndarray:
    """A Reshape target for `shape`: i64, or an object array when it has symbolic dims."""
    static = all(isinstance(d, int) for d in shape)
    return np.array(list(shape), dtype=np.int64 if static else object).reshape(len(shape))


class NoOpTranspose(RewriteRule):
    """Transpose(x) with the identity permutation -> x."""
    ops = ("Transpose",)

    def match(self, node):
        perm = perm_of(node)
        return Match(source=node.inputs[0]) if _is_identity(perm) else \
            Miss(f"the permutation {perm} is not the identity")

    def rewrite(self, graph, node, match):
        graph.replace_uses(node.outputs[0], match.source)


class TransposeOfTranspose(RewriteRule):
    """Transpose(Transpose(x, p1), p2) -> Transpose(x, p1[p2]), or x when that is the identity."""
    ops = ("Transpose",)

    def match(self, node):
        if _producer_op(node.inputs[0]) != "Transpose":
            return Miss("the input is not produced by a Transpose", node.inputs[0])
        return Match(inner=node.inputs[0].producer)

    def rewrite(self, graph, node, match):
        inner = match.inner
        outer_perm, inner_perm = perm_of(node), perm_of(inner)
        composed = [inner_perm[p] for p in outer_perm]  # out[j] = x[inner[outer[j]]]
        if _is_identity(composed):
            graph.replace_uses(node.outputs[0], inner.inputs[0])
            return
        new = graph.add1("Transpose", inner.inputs[0], name=node.name, perm=composed)
        graph.replace_uses(node.outputs[0], new)


# Cheapest result first: removals before merges.
RULES: list[RewriteRule] = [RemoveIdentity(), NoOpReshape(), CancelSqueezeUnsqueeze(),
                            ReshapeOfReshape(), NoOpTranspose(), TransposeOfTranspose()]


@register_pass
class FoldReshapeTranspose(RulePass):
    name = "fold-reshape-transpose"
    RULES = RULES
