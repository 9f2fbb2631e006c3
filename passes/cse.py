"""cse: two nodes with the same op, the same inputs and equal attributes -> one node;
params with identical bytes -> one param."""

from __future__ import annotations

import numpy as np

from sbc.ir import Graph
from sbc.passes.base import Pass, PassResult, register_pass


def _freeze(value):
    """A hashable key for an attribute value (arrays by dtype, shape and contents)."""
    if isinstance(value, np.ndarray):
        return ("array", str(value.dtype), value.shape, tuple(map(str, value.reshape(-1).tolist())))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return (type(value).__name__, str(value))


@register_pass
class CommonSubexpressionElimination(Pass):
    name = "cse"

    def run(self, graph: Graph) -> PassResult:
        modified = self.merge_params(graph)
        seen: dict[tuple, object] = {}
        for node in list(graph.nodes):
            key = (node.op, tuple(id(v) for v in node.inputs),
                   tuple(sorted((k, _freeze(v)) for k, v in node.attrs.items())))
            if key in seen:
                for old, new in zip(node.outputs, seen[key].outputs):
                    graph.replace_uses(old, new)
                graph.nodes.remove(node)
                modified = True
            else:
                seen[key] = node
        return PassResult(graph, modified)

    @staticmethod
    def merge_params(graph: Graph) -> bool:
        first: dict[tuple, object] = {}
        merged = False
        for p in graph.params:
            key = (str(p.data.dtype), p.data.shape, p.data.tobytes())
            if key in first:
                graph.replace_uses(p, first[key])
                merged = True
            else:
                first[key] = p
        if merged:
            graph.prune_params()
        return merged
