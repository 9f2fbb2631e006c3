"""The one core abstraction: a typed SSA graph of Values produced by Nodes.

- `Value`: a named SSA value with a TensorType. It is a graph input, a parameter (weights,
  `data` holds them) or the output of exactly one Node. `data` may also hold a value known at
  compile time (e.g. a shape, possibly with symbolic entries); shape folding uses it.
- `Node`: one op application: op name, input Values (None for an omitted optional input),
  output Values, attributes, and the name of the source node (for error messages).
- `Graph`: inputs, params, nodes in topological order, outputs.

Ops are declared in `sbc.ir.registry`; creating a node through `Graph.add` infers the types
of its outputs from that declaration.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Iterator

import networkx as nx
import numpy as np

from sbc.ir.types import TensorType


class Value:
    __slots__ = ("name", "type", "producer", "data", "__weakref__")

    def __init__(self, name: str, type: TensorType, producer: "Node | None" = None,
                 data: np.ndarray | None = None):
        self.name = name
        self.type = type
        self.producer = producer
        self.data = data

    @property
    def dtype(self) -> str:
        return self.type.dtype

    @property
    def shape(self):
        return self.type.shape

    def __repr__(self):
        return f"%{self.name}: {self.type}"


class Node:
    __slots__ = ("op", "inputs", "outputs", "attrs", "name")

    def __init__(self, op: str, inputs: list[Value | None], attrs: dict[str, Any], name: str):
        self.op = op
        self.inputs = list(inputs)
        self.outputs: list[Value] = []
        self.attrs = dict(attrs)
        self.name = name

    def where(self) -> str:
        """How error messages name this node."""
        return f"node '{self.name}' ({self.op})" if self.name else f"{self.op} node"

    def __repr__(self):
        ins = ", ".join("None" if v is None else f"%{v.name}" for v in self.inputs)
        outs = ", ".join(f"%{v.name}" for v in self.outputs)
        return f"{outs} = {self.op}({ins})"


ALIGN = 64  # bytes: what TVM's kernels assume of every buffer, and its DLPack import requires


def aligned(a: np.ndarray) -> np.ndarray:
    """`a` itself when its data is ALIGN-byte aligned, else an aligned copy. A param born
    aligned is what a compiled CPU module runs on in place; a misaligned one (NumPy only
    promises 16 bytes) would be copied when the module loads, holding a model's weights twice."""
    if a.ctypes.data % ALIGN == 0 or a.size == 0 or a.dtype == object:
        return a
    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


def aligned_empty(shape, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start:start + nbytes].view(dtype).reshape(shape)


class Graph:
    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.params: list[Value] = []
        self.nodes: list[Node] = []
        self.outputs: list[Value] = []
        self.output_names: list[str] = []  # the compiled signature's names; stable across passes
        self._names: set[str] = set()
        self._counter = itertools.count()

    # -- construction ---------------------------------------------------------------------
    def fresh_name(self, hint: str = "v") -> str:
        name = hint
        while name in self._names:
            name = f"{hint}_{next(self._counter)}"
        self._names.add(name)
        return name

    def add_input(self, name: str, type: TensorType) -> Value:
        value = Value(self.fresh_name(name), type)
        self.inputs.append(value)
        return value

    def add_param(self, name: str, data: np.ndarray) -> Value:
        from sbc.ir.types import type_of
        data = aligned(np.asarray(data, order="C"))  # (ascontiguousarray makes 0-d arrays 1-d)
        value = Value(self.fresh_name(name), type_of(data), data=data)
        self.params.append(value)
        return value

    def add(self, op: str, inputs: Iterable[Value | None], attrs: dict[str, Any] | None = None,
            name: str = "", outputs: Iterable[str] | None = None,
            types: list[TensorType] | None = None) -> Node:
        """Append a node; output types are inferred from the op's declaration unless given."""
        from sbc.ir.registry import infer_node
        node = Node(op, list(inputs), attrs or {}, name)
        inferred_types, known = infer_node(node) if types is None else (types, [None] * len(types))
        hints = list(outputs) if outputs is not None else [name or op.lower()] * len(inferred_types)
        for hint, type, data in zip(hints, inferred_types, known):
            node.outputs.append(Value(self.fresh_name(hint), type, node, data))
        self.nodes.append(node)
        return node

    def set_outputs(self, values: list[Value], names: list[str] | None = None) -> None:
        self.outputs = list(values)
        self.output_names = list(names) if names is not None else [v.name for v in values]

    def add1(self, op: str, *inputs: Value | None, name: str = "", **attrs) -> Value:
        """Append a single-output node and return its output."""
        return self.add(op, inputs, attrs, name=name).outputs[0]

    # -- queries --------------------------------------------------------------------------
    def values(self) -> Iterator[Value]:
        yield from self.inputs
        yield from self.params
        for node in self.nodes:
            yield from node.outputs

    def users(self) -> dict[Value, list[Node]]:
        uses: dict[Value, list[Node]] = {v: [] for v in self.values()}
        for node in self.nodes:
            for v in node.inputs:
                if v is not None:
                    uses.setdefault(v, []).append(node)
        return uses

    def value(self, name: str) -> Value:
        for v in self.values():
            if v.name == name:
                return v
        raise KeyError(name)

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.op] = counts.get(node.op, 0) + 1
        return dict(sorted(counts.items()))

    # -- rewriting ------------------------------------------------------------------------
    def replace_uses(self, old: Value, new: Value) -> None:
        """Point every use of `old` (node inputs and graph outputs) at `new`."""
        for node in self.nodes:
            node.inputs = [new if v is old else v for v in node.inputs]
        self.outputs = [new if v is old else v for v in self.outputs]

    def toposort(self) -> None:
        """Reorder nodes topologically, keeping the current order where it is free."""
        order = {id(n): i for i, n in enumerate(self.nodes)}
        producers = {id(v): n for n in self.nodes for v in n.outputs}
        dag = nx.DiGraph()
        dag.add_nodes_from(order)
        for node in self.nodes:
            for v in node.inputs:
                if v is not None and id(v) in producers:
                    dag.add_edge(id(producers[id(v)]), id(node))
        by_id = {id(n): n for n in self.nodes}
        try:
            sorted_ids = nx.lexicographical_topological_sort(dag, key=order.__getitem__)
            self.nodes = [by_id[i] for i in sorted_ids]
        except nx.NetworkXUnfeasible:
            raise ValueError("graph has a cycle") from None

    def prune_params(self) -> None:
        used = {id(v) for n in self.nodes for v in n.inputs if v is not None}
        used |= {id(v) for v in self.outputs}
        self.params = [p for p in self.params if id(p) in used]

    def __str__(self):
        from sbc.ir.printer import print_graph
        return print_graph(self)
