"""Lowering rules: sbc IR op -> TVM tensor expression (TE), one small function per op.

A rule receives a `Ctx` (dims -> PrimExprs, output shapes) and the node's inputs: `te.Tensor`s
for run-time values, or `Known` for inputs declared compile-time (`known=` indices), and returns
the output tensor(s). Semantics follow the NumPy references in sbc.ir.ops exactly (the tests
compare the two). Nothing here calls back into Python at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from tvm import te, tirx, topi

from sbc.ir.dims import FloorDiv, MinMax, Sym

TVM_DTYPES = {"f32": "float32", "f16": "float16", "f64": "float64", "i8": "int8", "i16": "int16",
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
        idx.append(tirx.IntImm("int64", 0) if _is_one(dim) else i)
    return idx


def _is_one(dim) -> bool:
    return isinstance(dim, (int, tirx.IntImm)) and int(dim) == 1


def _read(t, out_idx, out_rank):
    return t[tuple(_index_for(t, out_idx, out_rank))] if len(t.shape) else t()


def broadcast(ctx: Ctx, inputs, fn, name="elemwise"):
    shape = ctx.out_shape()
    rank = len(shape)
    return te.compute(shape, lambda *i: fn(*[_read(t, i, rank) for t in inputs]), name=name)


def _cast(x, dtype):
    if dtype == "bool" and _dtype_of(x) == "bool":  # a != 0 on i1 would be an LLVM fcmp
        return x
    if dtype == "bool":  # NaN is truthy (NumPy); LLVM's ordered != would say False
        nonzero = x != tirx.const(0, x.dtype)
        return tirx.Or(nonzero, tirx.isnan(x)) if _is_float(x) else nonzero
    return x.astype(dtype)


def _dtype_of(e) -> str:
    """Element dtype of an expression: TVM 0.27 gives PrimExprs `.ty`, tensor loads `.dtype`."""
    return str(e.dtype) if isinstance(e, te.tensor.TensorSlice) else str(e.ty)


def _is_float(e) -> bool:
    return "float" in _dtype_of(e)


def _fmax(a, b, keep_first=False):
    """max as onnxruntime's Max (sbc.ir.ops.elementwise.extremum): a NaN on either side wins
    (tirx.max drops a NaN first operand); of two equal values (0.0, -0.0) the second, or
    with keep_first the first."""
    if not _is_float(a):
        return tirx.max(a, b)
    return tirx.Select(tirx.Or(a >= b if keep_first else a > b, tirx.isnan(a)), a, b)


def _fmin(a, b, keep_first=False):
    """min as onnxruntime's Min (NaN-propagating; ties as in _fmax)."""
    if not _is_float(a):
        return tirx.min(a, b)
    return tirx.Select(tirx.Or(a <= b if keep_first else a < b, tirx.isnan(a)), a, b)


# -- elementwise ---------------------------------------------------------------------------------

def _tanh(x):
    """tanh; TVM's formula, (e^2x - 1) / (e^2x + 1), cancels near 0 (it gives +0.0 for
    -1e-8): there the series x - x^3/3 + 2x^5/15 is exact to float rounding."""
    small = tirx.abs(x) < tirx.const(0.01, x.dtype)
    x2 = x * x
    series = x * (tirx.const(1, x.dtype) - x2 * (tirx.const(1 / 3, x.dtype) - x2 * tirx.const(2 / 15, x.dtype)))
    return tirx.Select(small, series, tirx.tanh(x))


def _sigmoid(x):
    return tirx.const(1, x.dtype) / (tirx.const(1, x.dtype) + tirx.exp(-x))


def _softplus(x):  # log(1 + e^x) without overflow
    zero = tirx.const(0, x.dtype)
    return tirx.max(x, zero) + tirx.log1p(tirx.exp(-tirx.abs(x)))


def _sign(x):
    """1, -1, else x itself: keeps 0 as 0 and NaN as NaN (np.sign(nan) is nan)."""
    zero = tirx.const(0, x.dtype)
    return tirx.Select(x > zero, tirx.const(1, x.dtype),
                       tirx.Select(x < zero, tirx.const(-1, x.dtype), x))


def _erf(x, dtype=None):
    """erf in float32 (LLVM has no half/double erf intrinsic here). TVM 0.27 expressions other
    than loads do not expose .dtype, so composite arguments pass it explicitly."""
    dtype = dtype or str(x.dtype)
    return tirx.erf(x) if dtype == "float32" else tirx.erf(x.astype("float32")).astype(dtype)


UNARY: dict[str, Callable] = {
    "Abs": tirx.abs, "Neg": lambda x: -x, "Sqrt": tirx.sqrt, "Exp": tirx.exp, "Log": tirx.log,
    "Sin": tirx.sin, "Cos": tirx.cos, "Tanh": _tanh, "Sigmoid": _sigmoid,
    "Reciprocal": lambda x: tirx.const(1, x.dtype) / x, "Floor": tirx.floor, "Ceil": tirx.ceil,
    # ONNX Round is half-to-even: nearbyint in the default rounding mode (tirx.round is not)
    "Round": tirx.nearbyint, "Sign": _sign, "Relu": lambda x: tirx.Select(x < tirx.const(0, x.dtype), tirx.const(0, x.dtype), x),  # NaN stays
    "Softplus": _softplus, "Softsign": lambda x: x / (tirx.const(1, x.dtype) + tirx.abs(x)),
    "Erf": _erf, "Mish": lambda x: x * tirx.tanh(_softplus(x)), "Identity": lambda x: x,
    "Not": tirx.Not,
    "IsNaN": tirx.isnan,
}


def _unary(ctx, node, x):
    fn = UNARY[node.op]
    return te.compute(x.shape, lambda *i: fn(x[i]), name=node.op.lower())


lowering(*UNARY)(_unary)

PARAMETRIC = {
    "LeakyRelu": lambda a, x: tirx.Select(x < tirx.const(0, x.dtype), x * tirx.const(a["alpha"], x.dtype), x),
    "Elu": lambda a, x: tirx.Select(x < tirx.const(0, x.dtype),
                                    tirx.const(a["alpha"], x.dtype) * (tirx.exp(x) - tirx.const(1, x.dtype)), x),
    "Selu": lambda a, x: tirx.const(a["gamma"], x.dtype) * tirx.Select(
        x <= tirx.const(0, x.dtype), tirx.const(a["alpha"], x.dtype) * (tirx.exp(x) - tirx.const(1, x.dtype)), x),
    "HardSigmoid": lambda a, x: tirx.max(tirx.const(0, x.dtype), tirx.min(
        tirx.const(1, x.dtype), tirx.const(a["alpha"], x.dtype) * x + tirx.const(a["beta"], x.dtype))),
    "HardSwish": lambda a, x: x * tirx.max(tirx.const(0, x.dtype), tirx.min(
        tirx.const(1, x.dtype), x / tirx.const(6, x.dtype) + tirx.const(0.5, x.dtype))),
    "Gelu": lambda a, x: _gelu(a["approximate"], x),
    "IsInf": lambda a, x: tirx.Or(tirx.And(tirx.isinf(x), x > tirx.const(0, x.dtype)) if a["detect_positive"] else tirx.const(False),
                                  tirx.And(tirx.isinf(x), x < tirx.const(0, x.dtype)) if a["detect_negative"] else tirx.const(False)),
}


def _gelu(approximate, x):
    half, one = tirx.const(0.5, x.dtype), tirx.const(1, x.dtype)
    if approximate == "tanh":
        inner = tirx.const(float(np.sqrt(2 / np.pi)), x.dtype) * (x + tirx.const(0.044715, x.dtype) * x * x * x)
        return half * x * (one + tirx.tanh(inner))
    return half * x * (one + _erf(x * tirx.const(float(1 / np.sqrt(2)), x.dtype), str(x.dtype)))


@lowering(*PARAMETRIC)
def _parametric(ctx, node, x):
    fn = PARAMETRIC[node.op]
    return te.compute(x.shape, lambda *i: fn(node.attrs, x[i]), name=node.op.lower())


# Binary ops take the element dtype explicitly: TVM 0.27 exposes .dtype only on some exprs.
def _div(a, b, dt):
    return tirx.truncdiv(a, b) if "int" in dt else a / b


def _mod(fmod):
    def fn(a, b, dt):
        if "float" in dt:
            wide = "float32" if dt == "float16" else dt  # fp16 through fmodf
            a, b = a.astype(wide), b.astype(wide)
            rem = tirx.call_pure_extern(wide, "fmodf" if wide == "float32" else "fmod", a, b)
            if not fmod:  # Python-style: a non-zero remainder takes the divisor's sign
                zero = tirx.const(0, wide)
                signs_differ = tirx.Or(tirx.And(b < zero, rem > zero), tirx.And(b > zero, rem < zero))
                rem = tirx.Select(signs_differ, rem + b, rem)
            return rem.astype(dt)
        return tirx.truncmod(a, b) if fmod else tirx.floormod(a, b)
    return fn


def _pow(a, b, dt):
    if "float" in dt:
        return tirx.power(a, b.astype(dt))
    return tirx.power(a.astype("float64"), b.astype("float64")).astype(dt)


def _wrapping(op):
    """a * b as onnxruntime computes it: signed integers wrap around. TVM emits 32- and 64-bit
    arithmetic with LLVM's no-signed-wrap flag (no-unsigned-wrap for unsigned types), which lets
    LLVM fold `a * b != 0` to `a != 0 && b != 0`, wrong when the product wraps to 0; computed
    in the unsigned type the product is right wherever it wraps to 0 mod 2**n by odd factors.
    Add and Sub stay signed: in the unsigned type every negative operand wraps, and LLVM then
    folds `x + 1 != 0` to true for x = -1 (a fuzzer case)."""
    def fn(a, b, dt):
        if not dt.startswith("int"):
            return op(a, b)
        unsigned = "u" + dt
        return op(a.astype(unsigned), b.astype(unsigned)).astype(dt)
    return fn


BINARY = {
    "Add": lambda a, b, dt: a + b, "Sub": lambda a, b, dt: a - b,
    "Mul": _wrapping(lambda a, b: a * b),
    "Div": _div, "Pow": _pow,
    "Equal": lambda a, b, dt: a == b, "Less": lambda a, b, dt: a < b,
    "LessOrEqual": lambda a, b, dt: a <= b, "Greater": lambda a, b, dt: a > b,
    "GreaterOrEqual": lambda a, b, dt: a >= b,
}
COMPARISONS = set(BINARY) - {"Add", "Sub", "Mul", "Div", "Pow"}
BINARY |= {
    "And": lambda a, b, dt: tirx.And(a, b), "Or": lambda a, b, dt: tirx.Or(a, b),
    "Xor": lambda a, b, dt: tirx.Or(tirx.And(a, tirx.Not(b)), tirx.And(tirx.Not(a), b)),
}


@lowering(*BINARY)
def _binary(ctx, node, a, b):
    fn, dt = BINARY[node.op], TVM_DTYPES[node.inputs[0].dtype]
    if dt == "bool" and node.op in COMPARISONS:  # TVM's LLVM codegen emits fcmp for bool operands
        compare = fn
        fn = lambda x, y, dt: compare(x.astype("int8"), y.astype("int8"), "int8")  # noqa: E731
    if node.op == "Pow" and "float" in dt and _is_two(node.inputs[1].data):
        fn = lambda x, y, dt: x * x  # noqa: E731  (RMSNorm's x^2: a multiply, not powf)
    return broadcast(ctx, [a, b], lambda x, y: fn(x, y, dt), node.op.lower())


def _is_two(value) -> bool:
    """A known exponent that is one 2 (of any shape, e.g. [1]); not a symbolic dim. Integer
    bases keep pow: onnxruntime's integer Pow rounds through double, x * x would wrap."""
    return (value is not None and value.size == 1 and value.dtype != object
            and float(value.reshape(-1)[0]) == 2.0)


@lowering("Mod")
def _mod_rule(ctx, node, a, b):
    fn, dt = _mod(node.attrs["fmod"]), TVM_DTYPES[node.inputs[0].dtype]
    return broadcast(ctx, [a, b], lambda x, y: fn(x, y, dt), "mod")


@lowering("Max", "Min", "Sum", "Mean")
def _variadic(ctx, node, *xs):
    first = ctx.out_dtype() == "float16"  # onnxruntime's float16 Max/Min keep the first of equals
    combine = {"Max": lambda a, b: _fmax(a, b, first), "Min": lambda a, b: _fmin(a, b, first),
               "Sum": lambda a, b: a + b, "Mean": lambda a, b: a + b}[node.op]

    def fn(*vals):
        out = vals[0]
        for v in vals[1:]:
            out = combine(out, v)
        if node.op != "Mean":
            return out
        return _div(out, tirx.const(len(vals), ctx.out_dtype()), ctx.out_dtype())  # ints truncate
    return broadcast(ctx, xs, fn, node.op.lower())


@lowering("Where")
def _where(ctx, node, c, x, y):
    return broadcast(ctx, [c, x, y], lambda c_, x_, y_: tirx.Select(c_, x_, y_), "where")


@lowering("Clip")
def _clip(ctx, node, x, lo=None, hi=None):
    """As onnxruntime (and the reference): lo where x < lo, then hi where hi < x; a NaN x
    stays NaN, a NaN bound clamps nothing, a value equal to a bound keeps its sign of zero."""
    def fn(v, *bounds):
        it = iter(bounds)
        if lo is not None:
            b = next(it)
            v = tirx.Select(v < b, b, v)
        if hi is not None:
            b = next(it)
            v = tirx.Select(b < v, b, v)
        return v
    bounds = [t for t in (lo, hi) if t is not None]
    return te.compute(x.shape, lambda *i: fn(x[i], *[t() if not t.shape else t[0] for t in bounds]),
                      name="clip")


@lowering("Cast", "CastLike")
def _cast_rule(ctx, node, x, *like):
    dtype = ctx.out_dtype()
    return te.compute(x.shape, lambda *i: _cast(x[i], dtype), name="cast")


# -- matmul ---------------------------------------------------------------------------------------

@lowering("MatMul")
def _matmul(ctx, node, a, b):
    """C[..., i, j] = sum_k A[..., i, k] * B[..., k, j]; a 2-D B stays 2-D (a weight)."""
    a2 = topi.expand_dims(a, 0) if len(a.shape) == 1 else a
    b2 = topi.expand_dims(b, 1) if len(b.shape) == 1 else b
    shape = ctx.out_shape()
    if len(a.shape) == 1:
        shape = shape[:-1] + [1] + shape[-1:] if len(b.shape) > 1 else [1] + shape
    if len(b.shape) == 1:
        shape = shape + [1]
    rank = len(shape)
    k = te.reduce_axis((0, a2.shape[-1]), name="k")

    def body(*idx):
        batch, i, j = idx[:-2], idx[-2], idx[-1]
        ai = _index_for_batch(a2, batch, rank) + [i, k]
        bi = _index_for_batch(b2, batch, rank) + [k, j]
        return te.sum(a2[tuple(ai)] * b2[tuple(bi)], axis=k)

    c = te.compute(shape, body, name="matmul")
    out = ctx.out_shape()
    return c if len(shape) == len(out) else topi.reshape(c, out)


@lowering("MatMulPacked")
def _matmul_packed(ctx, node, a, bp):
    """C[..., i, j] = sum_k A[..., i, k] * Bp[j // P, k, j % P]."""
    p = int(bp.shape[2])
    k = te.reduce_axis((0, a.shape[-1]), name="k")

    def body(*idx):
        j = idx[-1]
        return te.sum(a[tuple(idx[:-1]) + (k,)] * bp[j // p, k, j % p], axis=k)
    return te.compute(ctx.out_shape(), body, name="matmul_packed")


@lowering("Einsum")
def _einsum(ctx, node, *xs):
    """out[o...] = sum over the letters not in the output of prod_i x_i[letters of i]."""
    from sbc.ir.ops.nn import einsum_subscripts
    subs, out = einsum_subscripts(node.attrs["equation"], [len(x.shape) for x in xs])
    extents = {}
    for s, x in zip(subs, xs):
        for letter, d in zip(s, x.shape):
            if letter not in extents or _is_one(extents[letter]):
                extents[letter] = d
    reduced = sorted({c for s in subs for c in s} - set(out))
    raxes = {c: te.reduce_axis((0, extents[c]), name=f"r_{c}") for c in reduced}
    zero = tirx.IntImm("int64", 0)

    def body(*idx):
        var = dict(zip(out, idx)) | raxes
        prod = None
        for s, x in zip(subs, xs):
            term = x[tuple(zero if _is_one(d) and not _is_one(extents[c]) else var[c]
                           for c, d in zip(s, x.shape))]
            prod = term if prod is None else prod * term
        return te.sum(prod, axis=list(raxes.values())) if raxes else prod
    return te.compute(ctx.out_shape(), body, name="einsum")


def _index_for_batch(t, batch, out_rank):
    dims = t.shape[:-2]
    offset = (out_rank - 2) - len(dims)
    return [tirx.IntImm("int64", 0) if _is_one(d) else batch[n + offset] for n, d in enumerate(dims)]


@lowering("Gemm")
def _gemm(ctx, node, a, b, c=None):
    at = topi.transpose(a) if node.attrs["transA"] else a
    bt = topi.transpose(b) if node.attrs["transB"] else b
    k = te.reduce_axis((0, at.shape[1]), name="k")
    prod = te.compute(ctx.out_shape(), lambda i, j: te.sum(at[i, k] * bt[k, j], axis=k), name="gemm")
    alpha, beta = node.attrs["alpha"], node.attrs["beta"]
    dt = a.dtype
    if c is None:
        return te.compute(prod.shape, lambda i, j: prod[i, j] * tirx.const(alpha, dt), name="gemm_out")
    return broadcast(ctx, [prod, c], lambda p, cv: p * tirx.const(alpha, dt) + cv * tirx.const(beta, dt),
                     "gemm_out")


# -- reductions -----------------------------------------------------------------------------------

def _reduce_axes(node, x, axes_known):
    rank = len(x.shape)
    axes = [] if axes_known is None else [int(a) % max(rank, 1) for a in axes_known.array.reshape(-1)]
    if not axes and not node.attrs.get("noop_with_empty_axes", 0):
        axes = list(range(rank))
    return sorted(set(axes))


def _source_index(idx, axes, keep, rank, reduce_vars):
    """Index into the reduced input for output index idx (keepdims or not)."""
    full, it, ri = [], iter(idx), iter(reduce_vars)
    for d in range(rank):
        if d in axes:
            if keep:
                next(it)
            full.append(next(ri))
        else:
            full.append(next(it))
    return tuple(full)


def _reduce(x, axes, keep, combine, finish=None, pre=None, name="reduce"):
    raxes = [te.reduce_axis((0, x.shape[a]), name=f"r{a}") for a in axes]
    rank = len(x.shape)
    out_shape = [1 if d in axes else s for d, s in enumerate(x.shape) if keep or d not in axes]
    pre = pre or (lambda v: v)
    red = te.compute(out_shape, lambda *i: combine(pre(x[_source_index(i, axes, keep, rank, raxes)]),
                                                   axis=raxes), name=name)
    return te.compute(out_shape, lambda *i: finish(red[i]), name=name + "_out") if finish else red


@lowering("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceSumSquare", "ReduceLogSumExp", known=(1,))
def _reduce_rule(ctx, node, x, axes=None):
    """Reduce* with keepdims; Mean divides by the (possibly symbolic) element count."""
    axes = _reduce_axes(node, x, axes)
    keep = node.attrs["keepdims"]
    if not axes:
        return te.compute(x.shape, lambda *i: x[i], name="noop")
    count = 1
    for a in axes:
        count = count * x.shape[a]
    op = node.op
    if op == "ReduceLogSumExp":
        return _logsumexp(x, axes, keep)
    pre = {"ReduceL1": tirx.abs, "ReduceL2": lambda v: v * v, "ReduceSumSquare": lambda v: v * v}.get(op)
    combine = {"ReduceMax": _te_nanmax, "ReduceMin": _te_nanmin, "ReduceProd": _te_prod}.get(op, te.sum)
    finish = None
    if op == "ReduceMean":
        dt = ctx.out_dtype()
        # the mean of nothing is 0 as in onnxruntime (1.31, floats and ints): the empty sum
        # over at least 1, never a division by 0 (TVM refuses a constant one at compile time).
        # ONNX's reference implementation (NumPy) gives NaN, and the lowest int for ints.
        count = tirx.max(_as_expr(count), tirx.IntImm("int64", 1))
        finish = lambda v: _div(v, count.astype(dt), dt)  # noqa: E731  (ints truncate)
    elif op == "ReduceL2":
        dt = ctx.out_dtype()
        # NumPy takes an integer sum's sqrt in float64, then truncates back
        finish = tirx.sqrt if "float" in dt else (lambda v: tirx.sqrt(v.astype("float64")).astype(dt))  # noqa: E731
    return _reduce(x, axes, keep, combine, finish, pre, op.lower())


def _as_expr(v):
    return tirx.IntImm("int64", v) if isinstance(v, int) else v


def _logsumexp(x, axes, keep):
    """log(sum(exp(x - m))) + m with m the row's max, or 0 where that max is infinite (a row
    holding +inf, a row of -inf, an empty row): inf - inf would be NaN, where ONNX says +inf,
    -inf and -inf."""
    rank = len(x.shape)
    mx = _reduce(x, axes, True, _te_max, name="lse_max")
    zero = tirx.IntImm("int64", 0)

    def mx_at(idx):
        m = mx[tuple(zero if d in axes else i for d, i in
                     zip(range(rank), _source_index(idx, axes, keep, rank, [zero] * len(axes))))]
        return tirx.Select(tirx.isinf(m), tirx.const(0, x.dtype), m)

    raxes = [te.reduce_axis((0, x.shape[a]), name=f"r{a}") for a in axes]
    out_shape = [1 if d in axes else s for d, s in enumerate(x.shape) if keep or d not in axes]
    total = te.compute(out_shape, lambda *i: te.sum(
        tirx.exp(x[_source_index(i, axes, keep, rank, raxes)] - mx_at(i)), axis=raxes), name="lse_sum")
    return te.compute(out_shape, lambda *i: tirx.log(total[i]) + mx_at(i), name="lse")


_te_prod = te.comm_reducer(lambda a, b: a * b, lambda t: tirx.const(1, t), name="prod")


def _extreme(t, sign):
    """Identity of max (sign -1) / min (sign +1): -inf/+inf for floats, so that a row of all
    -inf reduces to -inf as in NumPy (te.max's identity is the lowest finite float)."""
    if "float" in str(t):
        return tirx.const(sign * float("inf"), t)
    return tirx.min_value(t) if sign < 0 else tirx.max_value(t)


_te_max = te.comm_reducer(lambda a, b: tirx.max(a, b), lambda t: _extreme(t, -1), name="max")
_te_min = te.comm_reducer(lambda a, b: tirx.min(a, b), lambda t: _extreme(t, +1), name="min")
# ReduceMax/Min propagate NaN like np.max; softmax's internal max need not (NaN spreads anyway)
_te_nanmax = te.comm_reducer(lambda a, b: _fmax(a, b), lambda t: _extreme(t, -1), name="nanmax")
_te_nanmin = te.comm_reducer(lambda a, b: _fmin(a, b), lambda t: _extreme(t, +1), name="nanmin")


@lowering("ArgMax", "ArgMin")
def _argminmax(ctx, node, x):
    axis = node.attrs["axis"] % len(x.shape)
    keep = node.attrs["keepdims"]
    last = node.attrs["select_last_index"]
    is_max = node.op == "ArgMax"
    r = te.reduce_axis((0, x.shape[axis]), name="r")
    nan_wins = "float" in str(x.dtype)  # as np.argmax / np.argmin: a NaN is the extreme

    def fcombine(a, b):
        better = (b[1] > a[1]) if is_max else (b[1] < a[1])
        tie = b[1] == a[1]
        if nan_wins:
            better = tirx.Or(better, tirx.And(tirx.isnan(b[1]), tirx.Not(tirx.isnan(a[1]))))
            tie = tirx.Or(tie, tirx.And(tirx.isnan(b[1]), tirx.isnan(a[1])))
        # the identity (index -1) loses to any element: a row of -inf (or of the lowest
        # integer) is no better than the identity's value, and must not answer -1
        pick_b = tirx.Or(tirx.Or(a[0] < tirx.IntImm("int64", 0), better),
                         tirx.And(tie, (b[0] > a[0]) if last else (b[0] < a[0])))
        return tirx.Select(pick_b, b[0], a[0]), tirx.Select(pick_b, b[1], a[1])

    def fidentity(t0, t1):
        lim = tirx.min_value(t1) if is_max else tirx.max_value(t1)
        return tirx.const(-1, t0), lim

    reducer = te.comm_reducer(fcombine, fidentity, name="argreduce")

    def body(*idx):
        full, it = [], iter(idx)
        for d in range(len(x.shape)):
            if d == axis:
                if keep:
                    next(it)
                full.append(r)
            else:
                full.append(next(it))
        return reducer((r.var.astype("int64"), x[tuple(full)]), axis=r)

    idx, _ = te.compute(ctx.out_shape(), body, name="arg")
    return idx


@lowering("CumSum", known=(1,))
def _cumsum(ctx, node, x, axis):
    """A scan: a serial loop along the axis, parallel across the others (linear in T)."""
    axis = int(axis.array.reshape(-1)[0]) % len(x.shape)
    return _scan_sum(x, axis, bool(node.attrs["exclusive"]), bool(node.attrs["reverse"]))


def _scan_sum(x, axis, exclusive, reverse):
    """topi.cumsum's loops, reversed in place (not between two flips: their intermediate
    buffer's size was computed dividing by the axis length, SIGFPE for a symbolic axis of 0),
    and with no rows when the axis is empty: TOPI writes each row's first entry
    unconditionally, out of bounds when a symbolic axis is 0 at run time."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T
    one = tirx.IntImm("int64", 1)
    shape, length = list(x.shape), x.shape[axis]
    after = one
    for d in shape[axis + 1:]:
        after = after * d
    rows = one
    for d in shape[:axis]:
        rows = rows * d
    rows = rows * after * tirx.min(length, one)

    def gen_ir(data_buf, out_buf):
        with IRBuilder() as ib:
            data, out = T.buffer_proxy(data_buf), T.buffer_proxy(out_buf)
            with T.parallel(0, rows) as fused:
                base = fused // after * length * after + fused % after

                def at(k):  # the row's k-th entry in scan order
                    return base + ((length - one - k) if reverse else k) * after
                out[at(0)] = tirx.const(0, x.dtype) if exclusive else data[at(0)]
                with T.serial(0, length - one) as k:
                    cur, prev = at(k + one), at(k)
                    out[cur] = out[prev] + data[prev if exclusive else cur]
        return ib.get()

    return te.extern([shape], [x], lambda ins, outs: gen_ir(ins[0], outs[0]), dtype=x.dtype,
                     out_buffers=[tirx.decl_buffer(shape, x.dtype, "out_buf")], name="cumsum",
                     tag="cumsum")


@lowering("Softmax", "LogSoftmax")
def _softmax(ctx, node, x):
    axis = node.attrs["axis"] % len(x.shape)
    r1 = te.reduce_axis((0, x.shape[axis]), name="r1")
    r2 = te.reduce_axis((0, x.shape[axis]), name="r2")
    stat_shape = [1 if d == axis else s for d, s in enumerate(x.shape)]

    def at(idx, r):
        full = list(idx)
        full[axis] = r
        return tuple(full)

    mx = te.compute(stat_shape, lambda *i: _te_max(x[at(i, r1)], axis=r1), name="softmax_max")
    zero = tirx.IntImm("int64", 0)
    sm = te.compute(stat_shape, lambda *i: te.sum(tirx.exp(x[at(i, r2)] - mx[i]), axis=r2), name="softmax_sum")
    if node.op == "LogSoftmax":
        return te.compute(x.shape, lambda *i: x[i] - mx[at(i, zero)] - tirx.log(sm[at(i, zero)]),
                          name="log_softmax")
    return te.compute(x.shape, lambda *i: tirx.exp(x[i] - mx[at(i, zero)]) / sm[at(i, zero)],
                      name="softmax")


# -- normalisation --------------------------------------------------------------------------------

def _row_stats(x, axis, fn, name):
    axes = list(range(axis, len(x.shape)))
    raxes = [te.reduce_axis((0, x.shape[a]), name=f"r{a}") for a in axes]
    stat_shape = list(x.shape[:axis]) + [1] * len(axes)
    count = 1
    for a in axes:
        count = count * x.shape[a]
    total = te.compute(stat_shape, lambda *i: te.sum(fn(x[tuple(list(i[:axis]) + raxes)]), axis=raxes),
                       name=name)
    return total, count


def _stat_index(idx, axis, rank):
    return tuple(list(idx[:axis]) + [tirx.IntImm("int64", 0)] * (rank - axis))


@lowering("RMSNormalization")
def _rms_norm(ctx, node, x, scale):
    axis = node.attrs["axis"] % len(x.shape)
    rank = len(x.shape)
    sq, count = _row_stats(x, axis, lambda v: v * v, "rms_sq")
    eps = tirx.const(node.attrs["epsilon"], x.dtype)
    inv = te.compute(sq.shape, lambda *i: tirx.rsqrt(sq[i] / count.astype(x.dtype) + eps), name="rms_inv")
    return te.compute(x.shape, lambda *i: x[i] * inv[_stat_index(i, axis, rank)] * _read(scale, i, rank),
                      name="rms_norm")


@lowering("LayerNormalization")
def _layer_norm(ctx, node, x, scale, bias=None):
    axis = node.attrs["axis"] % len(x.shape)
    rank = len(x.shape)
    total, count = _row_stats(x, axis, lambda v: v, "ln_sum")
    n = count.astype(x.dtype)
    mean = te.compute(total.shape, lambda *i: total[i] / n, name="ln_mean")
    axes = list(range(axis, rank))
    raxes = [te.reduce_axis((0, x.shape[a]), name=f"v{a}") for a in axes]
    var = te.compute(total.shape, lambda *i: te.sum(
        (x[tuple(list(i[:axis]) + raxes)] - mean[i]) * (x[tuple(list(i[:axis]) + raxes)] - mean[i]),
        axis=raxes), name="ln_var")
    eps = tirx.const(node.attrs["epsilon"], x.dtype)
    inv = te.compute(total.shape, lambda *i: tirx.rsqrt(var[i] / n + eps), name="ln_inv")

    def body(*i):
        y = (x[i] - mean[_stat_index(i, axis, rank)]) * inv[_stat_index(i, axis, rank)] * _read(scale, i, rank)
        return y + _read(bias, i, rank) if bias is not None else y

    y = te.compute(x.shape, body, name="layer_norm")
    return [y, mean, inv][:node.attrs["num_outputs"]]


# -- layout and indexing ----------------------------------------------------------------------------

@lowering("Reshape", "Squeeze", "Unsqueeze", "Flatten", known=(1,))
def _reshape(ctx, node, x, *shape_args):
    return topi.reshape(x, ctx.out_shape())


@lowering("Transpose")
def _transpose(ctx, node, x):
    perm = node.attrs["perm"]
    perm = list(range(len(x.shape)))[::-1] if perm is None else [p % len(x.shape) for p in perm]
    return te.compute(ctx.out_shape(), lambda *i: x[tuple(i[perm.index(d)] for d in range(len(perm)))],
                      name="transpose")


@lowering("Expand", known=(1,))
def _expand(ctx, node, x, shape):
    return broadcast(ctx, [x], lambda v: v, "expand")


@lowering("Tile", known=(1,))
def _tile(ctx, node, x, reps):
    return te.compute(ctx.out_shape(), lambda *i: x[tuple(tirx.floormod(i[d], x.shape[d])
                                                          for d in range(len(i)))], name="tile")


@lowering("Concat")
def _concat(ctx, node, *xs):
    axis = node.attrs["axis"] % len(xs[0].shape)
    offsets, total = [], tirx.IntImm("int64", 0)
    for t in xs:
        offsets.append(total)
        total = total + t.shape[axis]

    def body(*i):
        out = None  # built from the last chunk backwards: chunk k wins where i < its end
        for t, off in reversed(list(zip(xs, offsets))):
            idx = list(i)
            idx[axis] = i[axis] - off
            val = t[tuple(idx)]
            out = val if out is None else tirx.Select(i[axis] < off + t.shape[axis], val, out)
        return out
    return te.compute(ctx.out_shape(), body, name="concat")


@lowering("Split", known=(1,))
def _split(ctx, node, x, *sizes):
    axis = node.attrs["axis"] % len(x.shape)
    outs, offset = [], tirx.IntImm("int64", 0)
    for k, v in enumerate(node.outputs):
        shape = ctx.shape(v.shape)
        outs.append(te.compute(shape, _shifted(x, axis, offset), name=f"split{k}"))
        offset = offset + shape[axis]
    return outs


def _shifted(x, axis, offset):
    """fcompute reading x at index + offset along axis (TE forbids keyword defaults)."""
    def body(*i):
        idx = list(i)
        idx[axis] = i[axis] + offset
        return x[tuple(idx)]
    return body


@lowering("Slice", known=(1, 2, 3, 4))
def _slice(ctx, node, x, starts, ends, axes=None, steps=None):
    from sbc.ir.ops.shape import _slice_range
    rank = len(x.shape)
    in_dims = node.inputs[0].shape
    begin = [tirx.IntImm("int64", 0)] * rank
    stride = [1] * rank
    axes_l = range(len(starts.array)) if axes is None else [int(a) % rank for a in axes.array.reshape(-1)]
    steps_l = [1] * len(starts.array) if steps is None else [int(s) for s in steps.array.reshape(-1)]
    for a, s, e, st in zip(axes_l, starts.array.reshape(-1), ends.array.reshape(-1), steps_l):
        s0, _, _ = _slice_range(in_dims[a], s if isinstance(s, Sym) else int(s),
                                e if isinstance(e, Sym) else int(e), st)
        begin[a] = ctx.expr(s0)
        stride[a] = st
    return te.compute(ctx.out_shape(), lambda *i: x[tuple(begin[d] + i[d] * stride[d] for d in range(rank))],
                      name="slice")


def _wrap(idx, dim):
    idx = idx.astype("int64")
    return tirx.Select(idx < tirx.IntImm("int64", 0), idx + dim, idx)


def _guarded_read(x, index, axes_dims):
    """x[index], or 0 where an index along `axes_dims` ({axis: dim}) is out of range: a bad
    index never reads outside x (the run-time check of codegen.index_checks reports it)."""
    if not axes_dims:  # a GatherND with index tuples of length 0 reads whole slices
        return x[tuple(index)]
    inside = [tirx.And(index[a] >= 0, index[a] < d) for a, d in axes_dims.items()]
    cond = inside[0]
    for c in inside[1:]:
        cond = tirx.And(cond, c)
    return tirx.if_then_else(cond, x[tuple(index)], tirx.const(0, x.dtype))


@lowering("Gather")
def _gather(ctx, node, x, indices):
    axis = node.attrs["axis"] % len(x.shape)
    q = len(indices.shape)

    def body(*i):
        idx = _wrap(indices[tuple(i[axis:axis + q])] if q else indices(), x.shape[axis])
        return _guarded_read(x, list(i[:axis]) + [idx] + list(i[axis + q:]), {axis: x.shape[axis]})
    return te.compute(ctx.out_shape(), body, name="gather")


@lowering("GatherElements")
def _gather_elements(ctx, node, x, indices):
    axis = node.attrs["axis"] % len(x.shape)

    def body(*i):
        idx = list(i)
        idx[axis] = _wrap(indices[i], x.shape[axis])
        # the indices may also be larger than data on the other axes: guard every axis
        return _guarded_read(x, idx, dict(enumerate(x.shape)))
    return te.compute(ctx.out_shape(), body, name="gather_elements")


@lowering("GatherND")
def _gather_nd(ctx, node, x, indices):
    b = node.attrs["batch_dims"]
    last = int(indices.shape[-1])
    q = len(indices.shape)

    def body(*i):
        lead = list(i[:q - 1])
        picked = [_wrap(indices[tuple(lead + [tirx.IntImm("int64", k)])], x.shape[b + k]) for k in range(last)]
        return _guarded_read(x, list(i[:b]) + picked + list(i[q - 1:]),
                             {b + k: x.shape[b + k] for k in range(last)})
    return te.compute(ctx.out_shape(), body, name="gather_nd")


@lowering("Range", known=(0, 1, 2))
def _range(ctx, node, start, limit, delta):
    dtype = ctx.out_dtype()
    s, d = start.scalar(ctx), delta.scalar(ctx)

    def as_dtype(v):
        return tirx.const(v, dtype) if isinstance(v, (int, float)) else v.astype(dtype)
    return te.compute(ctx.out_shape(), lambda i: as_dtype(s) + i.astype(dtype) * as_dtype(d), name="range")


@lowering("ConstantOfShape", known=(0,))
def _constant_of_shape(ctx, node, shape):
    value = node.attrs["value"]
    v = 0 if value is None else value.reshape(-1)[0].item()
    dtype = ctx.out_dtype()
    return te.compute(ctx.out_shape(), lambda *i: tirx.const(v, dtype), name="fill")


@lowering("Trilu")
def _trilu(ctx, node, x, k=None):
    def body(*i):
        row, col = i[-2], i[-1]
        kk = tirx.IntImm("int64", 0) if k is None else (k() if not k.shape else k[0]).astype("int64")
        keep = (col - row >= kk) if node.attrs["upper"] else (col - row <= kk)
        return tirx.Select(keep, x[i], tirx.const(0, x.dtype))
    return te.compute(x.shape, body, name="trilu")


@lowering("Pad", known=(1, 3))
def _pad(ctx, node, x, pads, value=None, axes=None):
    """Output index i reads x at i - before. Negative pads crop first (as in onnxruntime):
    edge and reflect fold that index into the range [lo, lo + kept) left by cropping.
    Inference has made sure that range holds what the mode needs (sbc.ir.ops.shape.pad)."""
    from sbc.ir.ops.shape import _pad_widths, pad_crop, pad_kept
    rank = len(x.shape)
    widths = _pad_widths(node, rank)
    mode = node.attrs["mode"]
    spans = []  # per axis: (before, lo, kept)
    for d, dim in enumerate(node.inputs[0].shape):
        b, a = widths.get(d, (0, 0))
        spans.append((ctx.expr(b), ctx.expr(pad_crop(b)), ctx.expr(pad_kept(dim, b, a))))

    def body(*i):
        src = [i[d] - b for d, (b, _, _) in enumerate(spans)]
        if mode != "constant":
            return x[tuple(lo + _FOLD[mode](s - lo, n) for s, (_, lo, n) in zip(src, spans))]
        inside = None
        for d, s in enumerate(src):
            cond = tirx.And(s >= tirx.IntImm("int64", 0), s < x.shape[d])
            inside = cond if inside is None else tirx.And(inside, cond)
        fill = tirx.const(0, x.dtype) if value is None else (value() if not value.shape else value[0])
        clamped = [tirx.max(tirx.min(s, x.shape[d] - 1), tirx.IntImm("int64", 0)) for d, s in enumerate(src)]
        return tirx.Select(inside, x[tuple(clamped)], fill) if inside is not None else x[tuple(clamped)]
    return te.compute(ctx.out_shape(), body, name="pad")


def _edge(s, n):
    return tirx.max(tirx.min(s, n - 1), tirx.IntImm("int64", 0))


def _reflect(s, n):
    """s reflected into [0, n) without repeating the ends. The period is kept >= 1 so that a
    kernel run with an axis too short (which the run-time checks refuse) cannot divide by 0."""
    period = tirx.max(2 * n - 2, tirx.IntImm("int64", 1))
    m = tirx.floormod(s, period)
    return tirx.Select(m < n, m, period - m)


_FOLD = {"edge": _edge, "reflect": _reflect}
