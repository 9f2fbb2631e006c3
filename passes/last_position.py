"""last-position: a program's per-position first output -> that output at the last position only.

    y [B, T, V] = f(h [B, T, D])          (f position-wise)     becomes
    y [B, 1, V] = f(Gather(h, [-1], axis of T))

Prefill needs only the last token's logits, and the LM head alone is about a quarter of the
`small` model's work per token. f is what feeds nothing but the output, walked back from it
while each node is provably position-wise (to-recurrent's proof) and takes no shape-valued
input (a Reshape to [B, T, ..] would have to be rewritten too: such a node ends the walk).
The first output must have the sequence symbol (found by to-recurrent's `sequence_symbol`
unless given) as a dim of its own; otherwise the pass does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sbc.ir import Graph, Node, Value
from sbc.ir.dims import Sym
from sbc.ir.registry import infer_node
from sbc.passes.base import Pass, PassResult, register_pass
from sbc.passes.to_recurrent import LAYOUT, STATEFUL, mixing_reason, sequence_symbol

@register_pass
class LastPosition(Pass):
    name = "last-position"

    @dataclass
    class Options:
        seq: str = ""  # the symbol of the sequence axis; "": found (sequence_symbol)

    def run(self, graph: Graph) -> PassResult:
        name = self.options.seq or sequence_symbol(graph)
        if name is None:
            return PassResult(graph, False)
        seq = Sym.var(name)
        out = graph.outputs[0]
        if seq not in out.shape:
            return PassResult(graph, False)
        chain = self._chain(graph, out, name)
        # in graph order, not the set's (which follows addresses): the same model must give the
        # same program, and the same library bytes, in every process
        frontier = [v for n in graph.nodes if n in chain for v in n.inputs
                    if v is not None and v.producer not in chain and seq in v.shape]
        if not chain or any(list(v.shape).count(seq) != 1 for v in frontier):
            return PassResult(graph, False)
        for v in dict.fromkeys(frontier):  # each frontier value sliced once
            last = self._slice_last(graph, v, list(v.shape).index(seq))
            for node in chain:
                node.inputs = [last if x is v else x for x in node.inputs]
        for node in [n for n in graph.nodes if n in chain]:  # in order: types flow forward
            types, _ = infer_node(node)
            for value, t in zip(node.outputs, types):
                value.type = t
        graph.toposort()
        return PassResult(graph, True)

    def _chain(self, graph: Graph, out: Value, seq: str) -> set[Node]:
        """The position-wise nodes whose outputs feed only the first output (directly or
        through each other); users come before producers in reverse topological order."""
        users = graph.users()
        others = {id(v) for v in graph.outputs[1:]}
        chain: set[Node] = set()
        for node in reversed(graph.nodes):
            feeds_only_chain = all(id(v) not in others and all(u in chain for u in users[v])
                                   and (users[v] or v is out) for v in node.outputs)
            if feeds_only_chain and self._movable(node, seq):
                chain.add(node)
        return chain

    @staticmethod
    def _movable(node: Node, seq: str) -> bool:
        shape_valued = any(v is not None and v.data is not None and v.data.dtype == object
                           for v in node.inputs)
        return (node.op not in STATEFUL and node.op not in LAYOUT and not shape_valued
                and mixing_reason(node, seq) is None)

    @staticmethod
    def _slice_last(graph: Graph, v: Value, axis: int) -> Value:
        """v at the last position, keeping the axis: Gather([-1]) makes it exactly 1 long (a
        Slice -1: would be min(T, 1) long, a size dims cannot fold)."""
        last = graph.add1("Constant", name=f"{v.name}_last", value=np.array([-1], np.int64))
        return graph.add1("Gather", v, last, axis=axis, name=f"{v.name}_last_position")
