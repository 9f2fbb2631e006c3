"""What the lowering rules share: the registry (RULES, `lowering`, `kernel_lowering`), `Ctx`,
`Known`, broadcasting, and the NaN-aware min / max and division of several op families.

A rule receives a `Ctx` (dims -> PrimExprs, output shapes) and the node's inputs: `te.Tensor`s
for run-time values, or `Known` for inputs declared compile-time (`known=` indices), and returns
the output tensor(s). Semantics follow the NumPy references in sbc.ir.ops exactly (the tests
compare the two). Nothing here calls back into Python at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from tvm import te, tirx

from sbc.errors import UnsupportedError
from sbc.ir.dims import FloorDiv, MinMax, Sym

TVM_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64", "i8": "int8", "i16": "int16",
              "i32": "int32", "i64": "int64", "u8": "uint8", "bool": "bool"}


@dataclass
class Known:
    """A compile-time input: its value as a NumPy array (object arrays hold symbolic dims)."""
    array: np.ndarray

    def ints(self, ctx: "Ctx") -> list:
        return [ctx.expr(d) for d in self.array.reshape(-1)]

    def scalar(self, ctx: "Ctx"):
        return ctx.expr(self.array.reshape(-1)[0])


@dataclass
class Rule:
    fn: Callable
    known: tuple[int, ...]  # input indices that must be known at compile time
    kernel: bool = False  # fn(node) -> a hand-written PrimFunc (see kernel_lowering)


RULES: dict[str, Rule] = {}


def lowering(*ops: str, known: tuple[int, ...] = ()):
    def register(fn):
        for name in ops:
            RULES[name] = Rule(fn, known)
        return fn
    return register


def kernel_lowering(*ops: str):
    """Register fn(node) -> PrimFunc taking every declared input (absent optional ones as
    1-element f32 placeholders) and then every output, for ops TE cannot express well."""
    def register(fn):
        for name in ops:
            RULES[name] = Rule(fn, (), kernel=True)
        return fn
    return register


class Ctx:
    """What a rule may ask about: symbolic dims as PrimExprs and the node's output shapes."""

    def __init__(self, sym_vars: dict[str, tirx.Var]):
        self.sym_vars = sym_vars
        self.local: dict[str, tirx.Var] = {}
        self.node = None

    def bind_inputs(self, tensors) -> None:
        """Use the kernel's own shape vars. emit_te gives each PrimFunc fresh copies (same
        names) of the caller's vars in its input placeholders; output shapes and indices built
        from the caller's vars would be unrelated to the input shapes inside the kernel (and
        can end up undefined there)."""
        self.local = {}
        for t in tensors:
            for dim in t.shape:
                for var in tirx.analysis.undefined_vars(dim):
                    self.local[var.name] = var

    def var(self, name: str) -> tirx.Var:
        return self.local[name] if name in self.local else self.sym_vars[name]

    def expr(self, d):
        if isinstance(d, Sym):
            total = None
            for mono, coef in d.terms.items():
                term = tirx.IntImm("int64", coef)
                for atom in mono:
                    term = term * self.atom(atom)
                total = term if total is None else total + term
            return total
        if isinstance(d, (float, np.floating)):
            return float(d)
        return tirx.IntImm("int64", int(d))

    def atom(self, atom):
        """A symbol's var, floor(num / den) for a FloorDiv (TIR's floordiv is floor, as the
        dims' is), or min / max of the two arguments of a MinMax."""
        if isinstance(atom, FloorDiv):
            return tirx.floordiv(self.expr(atom.num), tirx.IntImm("int64", atom.den))
        if isinstance(atom, MinMax):
            fn = tirx.min if atom.fn == "min" else tirx.max
            return fn(*(self.expr(d) for d in atom.args))
        return self.var(atom)

    def shape(self, dims) -> list:
        return [self.expr(d) for d in dims]

    def out_shape(self, i: int = 0) -> list:
        return self.shape(self.node.outputs[i].shape)

    def out_dtype(self, i: int = 0) -> str:
        return TVM_DTYPES[self.node.outputs[i].dtype]


# -- helpers --------------------------------------------------------------------------------------

def _index_for(t: te.Tensor, out_idx, out_rank: int):
    """Index into t broadcast (NumPy rules) to an output of rank out_rank."""
    offset = out_rank - len(t.shape)
    idx = []
    for k, dim in enumerate(t.shape):
        i = out_idx[k + offset]
        idx.append(tirx.IntImm("int64", 0) if is_one(dim) else i)
    return idx


def is_one(dim) -> bool:
    return isinstance(dim, (int, tirx.IntImm)) and int(dim) == 1


def read_broadcast(t, out_idx, out_rank):
    return t[tuple(_index_for(t, out_idx, out_rank))] if len(t.shape) else t()


def broadcast(ctx: Ctx, inputs, fn, name="elemwise"):
    shape = ctx.out_shape()
    rank = len(shape)
    return te.compute(shape, lambda *i: fn(*[read_broadcast(t, i, rank) for t in inputs]),
                      name=name)


def dtype_of(e) -> str:
    """Element dtype of an expression: TVM 0.27 gives PrimExprs `.ty`, tensor loads `.dtype`."""
    return str(e.dtype) if isinstance(e, te.tensor.TensorSlice) else str(e.ty)


def is_float(e) -> bool:
    return "float" in dtype_of(e)


def fmax(a, b, keep_first=False):
    """max as onnxruntime's Max (sbc.ir.ops.elementwise.extremum): a NaN on either side wins
    (tirx.max drops a NaN first operand); of two equal values (0.0, -0.0) the second, or
    with keep_first the first."""
    if not is_float(a):
        return tirx.max(a, b)
    return tirx.Select(tirx.Or(a >= b if keep_first else a > b, tirx.isnan(a)), a, b)


def fmin(a, b, keep_first=False):
    """min as onnxruntime's Min (NaN-propagating; ties as in fmax)."""
    if not is_float(a):
        return tirx.min(a, b)
    return tirx.Select(tirx.Or(a <= b if keep_first else a < b, tirx.isnan(a)), a, b)


def divide(a, b, dt):
    """a / b of element dtype dt (passed explicitly: TVM 0.27 exposes .dtype only on some
    exprs); integers truncate, as ONNX Div."""
    return tirx.truncdiv(a, b) if "int" in dt else a / b


# -- the hand-written kernels' lowerings (CPU here, GPU in codegen.schedule_gpu) --------------

def require_f32(node, kind: str) -> None:
    """The fused attention kernels compute in float32 (i64 inputs are positions)."""
    dtypes = {v.dtype for v in node.inputs if v is not None and v.dtype != "i64"}
    if dtypes != {"f32"}:
        raise UnsupportedError(f"{node.where()}: the {kind} {node.op} kernel takes float32, "
                               f"got {', '.join(sorted(dtypes))}")


def optional_input(node, i: int):
    """The node's input i, None where it is left out (trailing optional inputs)."""
    return node.inputs[i] if i < len(node.inputs) else None
