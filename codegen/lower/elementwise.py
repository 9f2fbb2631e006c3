"""Lowering of the elementwise ops (sbc.ir.ops.elementwise): unary and parametric
activations, broadcast binary arithmetic, comparisons and logic, variadic Max / Min / Sum /
Mean, Where, Clip and Cast."""

from __future__ import annotations

from typing import Callable

import numpy as np
from tvm import te, tirx

from sbc.codegen.lower.common import (TVM_DTYPES, broadcast, divide, dtype_of, fmax, fmin, is_float,
                                      lowering)


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
    "Div": divide, "Pow": _pow,
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
    combine = {"Max": lambda a, b: fmax(a, b, first), "Min": lambda a, b: fmin(a, b, first),
               "Sum": lambda a, b: a + b, "Mean": lambda a, b: a + b}[node.op]

    def fn(*vals):
        out = vals[0]
        for v in vals[1:]:
            out = combine(out, v)
        if node.op != "Mean":
            return out
        return divide(out, tirx.const(len(vals), ctx.out_dtype()), ctx.out_dtype())  # ints truncate
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


def _cast(x, dtype):
    if dtype == "bool" and dtype_of(x) == "bool":  # a != 0 on i1 would be an LLVM fcmp
        return x
    if dtype == "bool":  # NaN is truthy (NumPy); LLVM's ordered != would say False
        nonzero = x != tirx.const(0, x.dtype)
        return tirx.Or(nonzero, tirx.isnan(x)) if is_float(x) else nonzero
    return x.astype(dtype)



@lowering("Cast", "CastLike")
def _cast_rule(ctx, node, x, *like):
    dtype = ctx.out_dtype()
    return te.compute(x.shape, lambda *i: _cast(x[i], dtype), name="cast")
