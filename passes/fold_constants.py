"""fold-constants (constant and shape folding): a node computable at compile time -> a
`Constant` (small values, or values holding symbolic dims) or a new param (larger values).

A node is computable at compile time when
- its outputs are all known already (`Value.data`, e.g. `Shape(x)` -> `[batch, seq, 64]` or a
  `Gather`/`Concat` of such shapes), which is shape folding; or
- its op is foldable, has a reference implementation, and every input is a constant or param
  (`data` set): the reference runs once, e.g. a transposed or scaled weight.
Results larger than `max-elements` are left to run time. Values computed from graph inputs'
data never have `data`, so nodes depending on them are never touched. The nodes that fed a
folded node are left for dce.

Not folded: a Cast that widens a bf16/f16 weight matrix to f32. The weight stays in the dtype
it was stored in (half of f32's bytes); the kernels that read it widen it as they load
(pack-matmul-weights takes the Cast into MatMulPacked). Scalars and vectors (epsilons, norm
weights) are folded as before: constants that other passes match on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sbc.ir import Graph, Node, Value, get_op, numpy_dtype
from sbc.ir.dims import Sym
from sbc.ir.ops.nn import NARROW_FLOATS
from sbc.ir.registry import as_list
from sbc.passes.base import Pass, PassResult, register_pass

SMALL = 1024  # at most this many elements become an inline Constant, more a param


@register_pass
class FoldConstants(Pass):
    name = "fold-constants"

    @dataclass
    class Options:
        max_elements: int = 1 << 20  # larger results are left to run time

    def run(self, graph: Graph) -> PassResult:
        modified = False
        for node in list(graph.nodes):
            if node.op == "Constant":
                continue
            values = self.fold(node)
            if values is None:
                continue
            for old, value in zip(node.outputs, values):
                graph.replace_uses(old, materialise(graph, old, value))
            graph.nodes.remove(node)
            modified = True
        if modified:
            graph.toposort()  # the replacements were appended at the end
        return PassResult(graph, modified)

    def fold(self, node: Node) -> list[np.ndarray] | None:
        """The node's output values if it can and should be folded, else None."""
        if _widens_weight(node):
            return None
        return _check_values(node, self.compute(node), self.options.max_elements)

    @staticmethod
    def compute(node: Node) -> list | None:
        if all(v.data is not None for v in node.outputs):
            return [v.data for v in node.outputs]
        opdef = get_op(node.op)
        if opdef is None or not opdef.foldable or opdef.ref is None:
            return None
        if any(v is not None and v.data is None for v in node.inputs):
            return None  # depends on run-time data
        if any(v is not None and v.data.dtype == object for v in node.inputs):
            return None  # symbolic operands: only the op's own value inference knows how
        try:
            return as_list(opdef.ref(node.attrs, *[None if v is None else v.data
                                                    for v in node.inputs]))
        except Exception:  # e.g. a division by zero: let run time report it where it happens
            return None


def _widens_weight(node: Node) -> bool:
    x = node.inputs[0] if node.op == "Cast" else None
    return x is not None and x.producer is None and x.dtype in NARROW_FLOATS \
        and x.type.rank >= 2 and node.outputs[0].dtype == "f32"


def _check_values(node: Node, values: list | None, max_elements: int) -> list | None:
    """Normalised values, or None if one is too large or disagrees with its declared type."""
    if values is None or len(values) != len(node.outputs):
        return None
    out = []
    for v, value in zip(node.outputs, values):
        value = _normalise(value)
        if value.dtype != object and value.size > max_elements:
            return None
        if not _fits(v, value):
            return None  # a reference/inference mismatch: not ours to paper over
        out.append(value)
    return out


def _normalise(value) -> np.ndarray:
    """An ndarray; symbolic (object) arrays whose entries all became ints turn into i64."""
    if isinstance(value, Sym):
        array = np.empty((), dtype=object)
        array[()] = value
        return array
    value = np.asarray(value)
    if value.dtype == object and not any(isinstance(d, Sym) for d in value.reshape(-1)):
        return value.astype(np.int64)
    return value


def _fits(v: Value, value: np.ndarray) -> bool:
    dtype_ok = (value.dtype == object and v.dtype == "i64") or value.dtype == numpy_dtype(v.dtype)
    return dtype_ok and len(value.shape) == v.type.rank and all(
        d == n for d, n in zip(v.shape, value.shape))


def materialise(graph: Graph, old: Value, value: np.ndarray) -> Value:
    """A value holding `value`: a Constant node if small or symbolic, else a new param."""
    if value.dtype == object or value.size <= SMALL:
        node = graph.add("Constant", [], {"value": value}, name=f"folded:{old.name}")
        return node.outputs[0]
    return graph.add_param(f"folded:{old.name}", np.array(value))  # a copy: no aliasing
