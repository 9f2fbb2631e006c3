"""The reference interpreter: runs a graph node by node with each op's NumPy reference.

It is the test oracle for passes and codegen, and the tool to find where two graphs (or a
graph and a compiled module) first diverge: `observe(node, outputs)` sees every result.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from sbc.errors import InputError
from sbc.ir.dims import concretize
from sbc.ir.graph import Graph, Node
from sbc.ir.registry import as_list, get_op
from sbc.ir.types import bind_symbols, numpy_dtype

Observer = Callable[[Node, list[np.ndarray]], None]


class InterpreterError(RuntimeError):
    pass


READS_TYPE_ONLY = ("Shape", "Size")  # ops whose result depends on their input's type alone


def run(graph: Graph, feeds: dict[str, np.ndarray], observe: Observer | None = None
        ) -> dict[str, np.ndarray]:
    """Evaluate `graph` on `feeds` (input name -> array); return output name -> array."""
    env = bind_symbols([(v.name, v.type) for v in graph.inputs], feeds)
    values: dict[int, np.ndarray] = {id(p): p.data for p in graph.params}
    values.update({id(v): np.asarray(feeds[v.name]) for v in graph.inputs})
    for node in graph.nodes:
        args = [None if v is None else concretize(values[id(v)], env) for v in node.inputs]
        outs = run_node(node, args, env)
        values.update({id(v): o for v, o in zip(node.outputs, outs)})
        if observe is not None:
            observe(node, outs)
    return {name: values[id(v)] for v, name in zip(graph.outputs, graph.output_names)}


def run_node(node: Node, args: list, env: dict[str, int]) -> list[np.ndarray]:
    opdef = get_op(node.op)
    if opdef is None or opdef.ref is None:
        raise InterpreterError(f"{node.where()}: no reference implementation")
    attrs = {k: concretize(v, env) for k, v in node.attrs.items()}
    try:
        outs = [np.asarray(o) for o in as_list(opdef.ref(attrs, *args))]
    except InputError as e:  # a bad input value (an index out of range): name the node
        raise InputError(f"{node.where()}: {e}") from None
    for v, o in zip(node.outputs, outs):
        if o.dtype != numpy_dtype(v.dtype):
            raise InterpreterError(f"{node.where()}: reference returned {o.dtype} for "
                                   f"%{v.name}, declared {v.type}")
    return outs


def evaluate(value, symbols: dict[str, int], given: dict | None = None) -> np.ndarray | None:
    """The value of `value` computed from params and constants alone, with the symbolic dims
    set to `symbols` (e.g. a causal mask at seq = 5); None if it depends on a graph input.
    `given` (Value -> array) supplies values to use instead of computing them: evaluating a
    subgraph on chosen inputs (a trial of what a region computes)."""
    cache: dict[int, np.ndarray | None] = {id(v): a for v, a in (given or {}).items()}

    def value_of(v):
        if id(v) not in cache:
            cache[id(v)] = compute(v)
        return cache[id(v)]

    def compute(v):
        if v.data is not None:  # dims a Cast made float are still held as dims
            return np.asarray(concretize(v.data, symbols)).astype(numpy_dtype(v.dtype), copy=False)
        node = v.producer
        if node is None:  # a graph input
            return None
        args = [None if x is None else value_of(x) for x in node.inputs]
        if node.op in READS_TYPE_ONLY and args[0] is None:  # its type tells it at these sizes
            args[0] = _stand_in(node.inputs[0], symbols)
        if any(a is None for x, a in zip(node.inputs, args) if x is not None):
            return None
        outs = run_node(node, args, symbols)
        for out, array in zip(node.outputs, outs):
            cache[id(out)] = array
        return cache[id(v)]

    return value_of(value)


def _stand_in(v, symbols: dict[str, int]) -> np.ndarray | None:
    """An array of v's type at these sizes, for an op that reads only the type (no data);
    None when a symbol of the type has no size here."""
    if not set(v.type.symbols) <= set(symbols):
        return None
    shape = [int(concretize(d, symbols)) for d in v.shape]
    return np.broadcast_to(np.zeros((), numpy_dtype(v.dtype)), shape)
