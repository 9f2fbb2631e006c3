"""fold-constants: a node computable at compile time -> a Constant (small or symbolic values)
or a new param (large values).

That covers shape folding (Shape -> Gather -> Concat chains whose values are known, possibly
symbolic) and constant folding (ops on constants and params, e.g. a transposed weight).
Nodes that depend on run-time data are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sbc.ir import Graph, get_op
from sbc.ir.registry import as_list
from sbc.passes.base import Pass, PassResult, register_pass

SMALL = 1024  # at most this many elements become an inline Constant


@register_pass
class FoldConstants(Pass):
    name = "fold-constants"

    @dataclass
    class Options:
        max_elements: int = 1 << 22  # larger results are left to run time

    def run(self, graph: Graph) -> PassResult:
        modified = False
        for node in list(graph.nodes):
            if node.op == "Constant":
                continue
            values = self.fold(node)
            if values is None:
                continue
            for old, value in zip(node.outputs, values):
                graph.replace_uses(old, self.materialise(graph, old, value))
            graph.nodes.remove(node)
            modified = True
        graph.toposort()
        return PassResult(graph, modified)

    def fold(self, node) -> list[np.ndarray] | None:
        if all(v.data is not None for v in node.outputs):
            return [v.data for v in node.outputs]
        opdef = get_op(node.op)
        inputs = [v for v in node.inputs if v is not None]
        if not opdef.foldable or opdef.ref is None or any(v.data is None for v in inputs):
            return None
        if any(not v.type.is_static or v.type.numel > self.options.max_elements for v in node.outputs):
            return None
        args = [None if v is None else v.data for v in node.inputs]
        return [np.asarray(r) for r in as_list(opdef.ref(node.attrs, *args))]

    @staticmethod
    def materialise(graph: Graph, old, value: np.ndarray):
        if value.dtype == object or value.size <= SMALL:
            return graph.add("Constant", [], {"value": value}, name=f"folded:{old.name}").outputs[0]
        return graph.add_param(f"folded:{old.name}", value)
