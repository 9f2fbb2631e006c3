"""dce (dead-code elimination): nodes whose outputs nothing uses -> removed; params nothing
uses -> dropped.

A value is live when it is a graph output or an input of a live node; one backward sweep over
the (topologically sorted) nodes finds them all, so whole dead chains go in one run.
"""

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
        graph.nodes = kept[::-1]  # the surviving nodes keep their order
        n_params = len(graph.params)
        graph.prune_params()
        return PassResult(graph, modified or len(graph.params) != n_params)
