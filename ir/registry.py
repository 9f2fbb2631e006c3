"""The op registry: every op is declared once, here-by-decorator, with
its signature (inputs, outputs), typed attributes with defaults, shape/type inference and a
NumPy reference implementation (the semantics the interpreter, the tests and shape folding use).

Ops whose name matches an ONNX op have exactly that op's semantics at the newest opset sbc
supports (axes as inputs, as in opset 18+); the frontend upgrades older forms to it.

    @op("Relu", inputs=["X"])
    def relu(node):                      # inference: output types from node.inputs / node.attrs
        return [node.inputs[0].type]
    @relu.reference
    def _(attrs, x):                     # NumPy semantics
        return np.maximum(x, 0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from sbc.errors import UnsupportedError
from sbc.ir.assumptions import at_node, collecting, require, unique
from sbc.ir.dims import Sym
from sbc.ir.types import TensorType

REQUIRED = object()  # attribute default meaning "must be given"

# "graph": a nested sbc Graph (a Scan body); it is closed: it sees only its own inputs
ATTR_KINDS = ("int", "float", "str", "ints", "floats", "tensor", "dtype", "dims", "graph")


@dataclass(frozen=True)
class Attr:
    kind: str
    default: Any = REQUIRED

    def __post_init__(self):
        assert self.kind in ATTR_KINDS, self.kind


@dataclass
class OpDef:
    """Declaration of one op. Input names ending in '?' are optional, '*' variadic."""
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Attr]
    infer: Callable  # (node) -> list[TensorType]
    ref: Callable | None = None  # (attrs, *arrays) -> ndarray | tuple of ndarrays
    infer_value: Callable | None = None  # (node) -> list[ndarray | None]: known without data
    doc: str = ""
    foldable: bool = True  # may be evaluated at compile time when its inputs are known
    extra: dict = field(default_factory=dict)

    def reference(self, fn: Callable) -> Callable:
        self.ref = fn
        return fn

    def value(self, fn: Callable) -> Callable:
        self.infer_value = fn
        return fn

    @property
    def min_inputs(self) -> int:
        return sum(1 for n in self.inputs if not n.endswith(("?", "*")))

    @property
    def max_inputs(self) -> float:
        return float("inf") if any(n.endswith("*") for n in self.inputs) else len(self.inputs)

    def signature(self) -> str:
        attrs = ", ".join(f"{k}: {a.kind}" for k, a in self.attrs.items())
        return f"{self.name}({', '.join(self.inputs)}){' {' + attrs + '}' if attrs else ''}"

    def __call__(self, *args, **kwargs):  # the decorated function stays callable
        return self.infer(*args, **kwargs)


_OPS: dict[str, OpDef] = {}


def op(name: str, inputs: list[str], outputs: list[str] | None = None,
       attrs: dict[str, Attr] | None = None, foldable: bool = True) -> Callable[[Callable], OpDef]:
    def register(infer: Callable) -> OpDef:
        if name in _OPS:
            raise ValueError(f"op {name} declared twice")
        opdef = OpDef(name, list(inputs), list(outputs or ["Y"]), dict(attrs or {}), infer,
                      doc=(infer.__doc__ or "").strip(), foldable=foldable)
        _OPS[name] = opdef
        return opdef
    return register


# sbc.ir's __init__ imports sbc.ir.ops, which registers every op: any import of the IR
# (which runs that __init__ first) finds the table complete.
def get_op(name: str) -> OpDef | None:
    return _OPS.get(name)


def all_ops() -> dict[str, OpDef]:
    return dict(sorted(_OPS.items()))


class OpError(UnsupportedError, ValueError):
    """An op was used in a way its declaration does not allow."""


def normalize_attrs(opdef: OpDef, attrs: dict[str, Any], where: str) -> dict[str, Any]:
    """Check attribute names and fill defaults."""
    unknown = set(attrs) - set(opdef.attrs)
    if unknown:
        raise OpError(f"{where}: unknown attribute(s) {sorted(unknown)}; "
                      f"{opdef.name} takes {sorted(opdef.attrs) or 'none'}")
    out = {}
    for key, spec in opdef.attrs.items():
        if key in attrs and attrs[key] is not None:
            out[key] = np.asarray(attrs[key]) if spec.kind == "tensor" else attrs[key]
        elif spec.default is REQUIRED:
            raise OpError(f"{where}: missing required attribute '{key}'")
        else:
            out[key] = spec.default
    return out


def infer_node(node) -> tuple[list[TensorType], list[np.ndarray | None]]:
    """Normalize a node's attributes and infer its output types and any known output values."""
    opdef = get_op(node.op)
    if opdef is None:
        raise OpError(f"{node.where()}: op '{node.op}' is not an sbc IR op")
    n = len(node.inputs)
    if not opdef.min_inputs <= n <= opdef.max_inputs:
        raise OpError(f"{node.where()}: takes {opdef.signature()}, got {n} inputs")
    node.attrs = normalize_attrs(opdef, node.attrs, node.where())
    try:
        types = opdef.infer(node)
    except OpError:
        raise
    except Exception as e:  # inference bugs and shape mismatches read as a typed op error
        raise OpError(f"{node.where()}: {type(e).__name__}: {e}") from e
    return types, known_values(opdef, node, types)


def collect_assumptions(graph) -> list:
    """Every distinct open relation (ir.assumptions) the nodes of `graph` rely on, in order."""
    with collecting() as found:
        for node in graph.nodes:
            with at_node(node.where()):
                types, _ = infer_node(node)
                for t in types:  # e.g. a Pad that crops a symbolic axis, a Split's last part
                    for d in t.shape:
                        require(d, ">=", 0, "sizes are never negative")
    return unique(found)


# Compile-time evaluation keeps to small tensors (shapes, indices, scalars): folding big
# tensors belongs to the constant-folding pass, which decides whether it pays.
MAX_KNOWN_ELEMENTS = 1024


def known_values(opdef: OpDef, node, types: list[TensorType]) -> list[np.ndarray | None]:
    if opdef.infer_value is not None:
        return list(opdef.infer_value(node))
    nothing = [None] * len(types)
    if not opdef.foldable or opdef.ref is None:
        return nothing
    args = [None if v is None else v.data for v in node.inputs]
    if any(a is None for v, a in zip(node.inputs, args) if v is not None):
        return nothing
    if any(a.size > MAX_KNOWN_ELEMENTS for a in args if a is not None):
        return nothing
    if any(not t.is_static or t.numel > MAX_KNOWN_ELEMENTS for t in types):
        return nothing
    try:
        return [_as_array(r) for r in as_list(opdef.ref(node.attrs, *args))]
    except Exception:  # e.g. symbolic values an op cannot compute with: just not known
        return nothing


def _as_array(x) -> np.ndarray:
    """NumPy returns elements of object arrays as bare objects (a Sym): wrap them again."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, Sym):
        out = np.empty((), dtype=object)
        out[()] = x
        return out
    return np.asarray(x)


def as_list(result) -> list:
    return list(result) if isinstance(result, (tuple, list)) else [result]
