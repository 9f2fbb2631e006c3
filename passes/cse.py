"""cse (common-subexpression elimination): nodes with the same op, the same input values and
equal attributes -> the first of them; params with identical bytes -> one param.

Identical small `Constant` nodes are covered by the node rule (no inputs, equal `value`).
Array attributes compare by dtype, shape and contents; graph attributes (Scan bodies) by their
printed text, which spells out every node, type and attribute (bodies hold no params); bodies
are not rewritten inside. Every sbc op is deterministic, so merging is always sound. The
merged-away nodes are removed here; the values they used are left for dce.
"""

from __future__ import annotations

import hashlib

import numpy as np

from sbc.ir import Graph, Node, Value
from sbc.ir.printer import print_graph
from sbc.passes.base import Pass, PassResult, register_pass


@register_pass
class CommonSubexpressionElimination(Pass):
    name = "cse"

    def run(self, graph: Graph) -> PassResult:
        modified = merge_params(graph)
        seen: dict[tuple, Node] = {}
        kept = []
        for node in graph.nodes:  # in order, so merged inputs make their users equal too
            key = node_key(node)
            first = seen.setdefault(key, node)
            if first is node:
                kept.append(node)
                continue
            for old, new in zip(node.outputs, first.outputs):
                graph.replace_uses(old, new)
            modified = True
        graph.nodes = kept
        return PassResult(graph, modified)


def node_key(node: Node) -> tuple:
    """Equal keys <=> same op, same input values (by identity), equal attributes."""
    inputs = tuple(None if v is None else id(v) for v in node.inputs)
    attrs = tuple(sorted((k, freeze(v)) for k, v in node.attrs.items()))
    return node.op, inputs, attrs, len(node.outputs)


def freeze(value):
    """A hashable stand-in for an attribute value that is equal exactly when values are."""
    if isinstance(value, np.ndarray):
        if value.dtype == object:  # symbolic dims: Sym hashes and compares structurally
            return ("objects", value.shape, tuple(value.reshape(-1).tolist()))
        return ("array", value.dtype.str, value.shape, np.ascontiguousarray(value).tobytes())
    if isinstance(value, Graph):  # (hashing the object would never merge equal bodies)
        return ("graph", print_graph(value))
    if isinstance(value, (list, tuple)):
        return ("seq", tuple(freeze(v) for v in value))
    if isinstance(value, float):
        return ("float", repr(value))  # repr tells -0.0 from 0.0 and equates NaNs
    return (type(value).__name__, value)


def merge_params(graph: Graph) -> bool:
    """Point uses of a param at the first param with the same dtype, shape and bytes."""
    first: dict[tuple, Value] = {}
    merged: set[int] = set()
    for p in graph.params:
        raw = _raw(p.data)
        key = (p.data.dtype.str, p.data.shape, hashlib.blake2b(raw).digest())
        if key not in first:
            first[key] = p
        elif np.array_equal(_raw(first[key].data), raw):  # a hash is not a proof
            graph.replace_uses(p, first[key])
            merged.add(id(p))
    graph.params = [p for p in graph.params if id(p) not in merged]
    return bool(merged)


def _raw(array: np.ndarray) -> np.ndarray:
    """The array's bytes as a flat uint8 view (no copy for contiguous weights)."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)
