"""dce: nodes whose outputs nobody uses -> removed; unused params -> dropped."""

from __future__ import annotations

from sbc.ir import Graph
from sbc.passes.base import Pass, PassResult, register_pass


@register_pass
class DeadCodeElimination(Pass):
    name = "dce"

    def run(self, graph: Graph) -> PassResult:
        live = {id(v) for v in graph.outputs}
        kept = []
        for node in reversed(graph.nodes):
            if any(id(v) in live for v in node.outputs):
                kept.append(node)
                live.update(id(v) for v in node.inputs if v is not None)
        modified = len(kept) != len(graph.nodes)
        graph.nodes = kept[::-1]
        n_params = len(graph.params)
        graph.prune_params()
        return PassResult(graph, modified or n_params != len(graph.params))
