"""Elementwise ops with ONNX semantics: unary math, binary arithmetic and comparisons with
broadcasting, logic, Where, Clip, Cast. Declared from tables: one line per op."""

from __future__ import annotations

import math

import numpy as np

from sbc.ir.dims import trunc_div
from sbc.ir.ops.common import broadcast_shapes, same_type
from sbc.ir.registry import Attr, OpError, op
from sbc.ir.types import TensorType, dtype_of, numpy_dtype

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _f(fn):
    """A float function evaluated in the input's dtype (no silent float64 results)."""
    return lambda x: np.asarray(fn(x)).astype(x.dtype)


def _gelu(attrs, x):
    """Gelu-20: x * Phi(x), exact (erf) or with the tanh approximation."""
    if attrs["approximate"] == "tanh":
        inner = np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)
        return (0.5 * x * (1 + np.tanh(inner))).astype(x.dtype)
    return (0.5 * x * (1 + _erf(x / np.sqrt(2)))).astype(x.dtype)


UNARY = {
    "Abs": np.abs, "Neg": np.negative, "Sqrt": _f(np.sqrt), "Reciprocal": _f(np.reciprocal),
    "Exp": _f(np.exp), "Log": _f(np.log), "Sin": _f(np.sin), "Cos": _f(np.cos),
    "Tanh": _f(np.tanh), "Sigmoid": _f(lambda x: 1 / (1 + np.exp(-x))),
    "Softplus": _f(lambda x: np.logaddexp(0, x)), "Softsign": _f(lambda x: x / (1 + np.abs(x))),
    "Erf": _f(_erf), "Floor": np.floor, "Ceil": np.ceil, "Round": np.round, "Sign": np.sign,
    "Relu": lambda x: np.where(x < 0, np.zeros((), x.dtype), x),  # -0.0 and NaN stay (ORT)
    "Mish": _f(lambda x: x * np.tanh(np.logaddexp(0, x))),
    "Identity": lambda x: x, "Not": np.logical_not,
}
# which dtypes each unary op accepts (ONNX type constraints); the rest take any number type
FLOAT_ONLY = {"Sqrt", "Reciprocal", "Exp", "Log", "Sin", "Cos", "Tanh", "Sigmoid", "Softplus",
              "Softsign", "Erf", "Floor", "Ceil", "Round", "Mish", "IsNaN", "IsInf", "LeakyRelu",
              "Elu", "Selu", "HardSigmoid", "HardSwish", "Gelu"}
BOOL_ONLY = {"Not", "And", "Or", "Xor"}
ANY_DTYPE = {"Identity", "Equal"}


def check_dtype(node, dtype: str) -> None:
    """Raise an OpError when `dtype` is outside what node.op accepts."""
    if node.op in ANY_DTYPE:
        return
    if node.op in BOOL_ONLY:
        ok, kind = dtype == "bool", "a bool"
    elif node.op in FLOAT_ONLY:
        ok, kind = dtype.startswith("f"), "a float"
    else:
        ok, kind = dtype != "bool", "a number"
    if not ok:
        raise OpError(f"{node.where()}: input must be {kind} tensor, got {dtype}")


def unary_infer(node):
    """Same type as the input."""
    check_dtype(node, node.inputs[0].dtype)
    return same_type(node)


for _name, _fn in UNARY.items():
    op(_name, inputs=["X"])(unary_infer).reference(lambda attrs, x, fn=_fn: np.asarray(fn(x)))

# unary ops with attributes: name -> (attrs, reference(attrs, x))
PARAMETRIC = {
    "LeakyRelu": ({"alpha": Attr("float", 0.01)},
                  lambda a, x: np.where(x < 0, a["alpha"] * x, x).astype(x.dtype)),
    "Elu": ({"alpha": Attr("float", 1.0)},
            lambda a, x: np.where(x < 0, a["alpha"] * (np.exp(x) - 1), x).astype(x.dtype)),
    "Selu": ({"alpha": Attr("float", 1.67326319217681884765625),
              "gamma": Attr("float", 1.05070102214813232421875)},
             lambda a, x: (a["gamma"] * np.where(x <= 0, a["alpha"] * (np.exp(x) - 1), x)
                           ).astype(x.dtype)),
    "HardSigmoid": ({"alpha": Attr("float", 0.2), "beta": Attr("float", 0.5)},
                    lambda a, x: np.clip(a["alpha"] * x + a["beta"], 0, 1).astype(x.dtype)),
    "HardSwish": ({}, lambda a, x: (x * np.clip(x / 6 + 0.5, 0, 1)).astype(x.dtype)),
}
for _name, (_attrs, _fn) in PARAMETRIC.items():
    op(_name, inputs=["X"], attrs=_attrs)(unary_infer).reference(_fn)

GELU_APPROXIMATIONS = ("none", "tanh")


@op("Gelu", inputs=["X"], attrs={"approximate": Attr("str", "none")})
def gelu(node):
    if node.attrs["approximate"] not in GELU_APPROXIMATIONS:
        raise OpError(f"{node.where()}: approximate must be one of {GELU_APPROXIMATIONS}, "
                      f"got {node.attrs['approximate']!r}")
    return unary_infer(node)


gelu.reference(_gelu)


def _same_dtypes(node, values) -> str:
    dtypes = {v.dtype for v in values}
    if len(dtypes) > 1:
        raise OpError(f"{node.where()}: inputs must have the same dtype, got "
                      f"{', '.join(v.dtype for v in values)}")
    check_dtype(node, values[0].dtype)
    return values[0].dtype


def _binary_infer(node):
    """Same dtype for both inputs; NumPy broadcasting of the shapes."""
    a, b = node.inputs
    return [TensorType(_same_dtypes(node, [a, b]), broadcast_shapes(a.shape, b.shape))]


def _compare_infer(node):
    a, b = node.inputs
    _same_dtypes(node, [a, b])
    return [TensorType("bool", broadcast_shapes(a.shape, b.shape))]


def _div(a, b):
    """ONNX integer Div truncates toward zero; object arrays hold symbolic dims."""
    if a.dtype == object or b.dtype == object:
        return np.asarray(np.frompyfunc(trunc_div, 2, 1)(a, b))
    if a.dtype.kind in "iu":
        # floor division, moved one up where the exact quotient is negative and not whole
        # (integer arithmetic: a detour through float64 would round big int64 values)
        q, r = np.floor_divide(a, b), np.remainder(a, b)
        return (q + ((r != 0) & ((a < 0) != (b < 0)))).astype(a.dtype)
    with np.errstate(divide="ignore", invalid="ignore"):  # x / 0 is +-inf or NaN, as in ONNX
        return (a / b).astype(a.dtype)


def _pow_infer(node):
    """Pow-15: the exponent may have another number type; the result has the base's."""
    x, y = node.inputs
    check_dtype(node, x.dtype)
    check_dtype(node, y.dtype)
    return [TensorType(x.dtype, broadcast_shapes(x.shape, y.shape))]


def _pow(x, y):
    if x.dtype.kind == "f":  # in the base's precision (a float64 exponent must not widen it)
        return np.power(x, y.astype(x.dtype)).astype(x.dtype)
    if x.dtype.kind in "iu" and y.dtype != object:
        # as onnxruntime: pow in double, truncated (2 ** -1 is 0, 3 ** 39 is rounded, an
        # overflow is the C cast's), not NumPy's exact, wrapping integer power
        with np.errstate(all="ignore"):
            return np.power(x.astype(np.float64), y.astype(np.float64)).astype(x.dtype)
    return np.power(x, y).astype(x.dtype)  # symbolic dims


def _same(a, fn):
    result = np.asarray(fn)
    return result if result.dtype == object else result.astype(a.dtype)


ARITHMETIC = {
    "Add": lambda a, b: _same(a, a + b), "Sub": lambda a, b: _same(a, a - b),
    "Mul": lambda a, b: _same(a, a * b), "Div": _div,
}
for _name, _fn in ARITHMETIC.items():
    op(_name, inputs=["A", "B"], outputs=["C"])(_binary_infer).reference(
        lambda attrs, a, b, fn=_fn: fn(np.asarray(a), np.asarray(b)))

op("Pow", inputs=["X", "Y"], outputs=["Z"])(_pow_infer).reference(
    lambda attrs, x, y: _pow(np.asarray(x), np.asarray(y)))

COMPARE = {
    "Equal": np.equal, "Less": np.less, "LessOrEqual": np.less_equal, "Greater": np.greater,
    "GreaterOrEqual": np.greater_equal, "And": np.logical_and, "Or": np.logical_or,
    "Xor": np.logical_xor,
}
for _name, _fn in COMPARE.items():
    op(_name, inputs=["A", "B"], outputs=["C"])(_compare_infer).reference(
        lambda attrs, a, b, fn=_fn: np.asarray(fn(a, b), dtype=bool))


@op("Mod", inputs=["A", "B"], outputs=["C"], attrs={"fmod": Attr("int", 0)})
def mod(node):
    """fmod=0: the remainder takes the divisor's sign (Python %; opset 28 allows floats too);
    fmod=1: C fmod, the dividend's sign."""
    return _binary_infer(node)


@mod.reference
def _(attrs, a, b):
    return np.asarray(np.fmod(a, b) if attrs["fmod"] else np.mod(a, b)).astype(a.dtype)


def _variadic_infer(node):
    """One or more inputs of one dtype, broadcast together."""
    dtype = _same_dtypes(node, node.inputs)
    return [TensorType(dtype, broadcast_shapes(*[v.shape for v in node.inputs]))]


def extremum(a, b, larger: bool):
    """max (larger) or min of two arrays as onnxruntime computes them: a NaN on either side
    wins; of two equal values (0.0, -0.0) its float16 kernel keeps the first, its float and
    double ones (Eigen) the second. NumPy's choice on ties depends on its SIMD code paths."""
    if a.dtype.kind != "f" or b.dtype.kind != "f":  # no NaN, no signed zero (or symbolic)
        return np.maximum(a, b) if larger else np.minimum(a, b)
    first = a.dtype == np.float16
    wins = (a >= b if first else a > b) if larger else (a <= b if first else a < b)
    return np.where(wins | np.isnan(a), a, b)


def _fold(xs, larger: bool):
    out = np.asarray(xs[0])
    for x in xs[1:]:
        out = extremum(out, np.asarray(x), larger)
    return np.broadcast_to(out, np.broadcast_shapes(*[np.shape(x) for x in xs]))


VARIADIC = {
    "Max": lambda xs: _fold(xs, larger=True),
    "Min": lambda xs: _fold(xs, larger=False),
    "Sum": lambda xs: sum(np.broadcast_arrays(*xs)),
    "Mean": lambda xs: sum(np.broadcast_arrays(*xs)) / len(xs),
}
for _name, _fn in VARIADIC.items():
    op(_name, inputs=["data_0*"], outputs=["out"])(_variadic_infer).reference(
        lambda attrs, *xs, fn=_fn: np.asarray(fn(xs)).astype(xs[0].dtype))


@op("Where", inputs=["condition", "X", "Y"], outputs=["output"])
def where(node):
    """Elementwise condition ? X : Y, all three broadcast together."""
    c, x, y = node.inputs
    if c.dtype != "bool":
        raise OpError(f"{node.where()}: condition must be bool, got {c.dtype}")
    if x.dtype != y.dtype:
        raise OpError(f"{node.where()}: X and Y must have the same dtype, got {x.dtype}, {y.dtype}")
    return [TensorType(x.dtype, broadcast_shapes(c.shape, x.shape, y.shape))]


@where.reference
def _(attrs, c, x, y):
    out = np.where(c, x, y)
    return out if out.dtype == object else out.astype(x.dtype)


@op("Clip", inputs=["input", "min?", "max?"], outputs=["output"])
def clip(node):
    """Clamp to [min, max]; an omitted bound does not clamp. Bounds are scalars (one element)
    of the input's dtype."""
    x = node.inputs[0]
    for bound in node.inputs[1:]:
        if bound is None:
            continue
        if bound.dtype != x.dtype:
            raise OpError(f"{node.where()}: bounds must have the input's dtype {x.dtype}, "
                          f"got {bound.dtype}")
        if bound.type.numel != 1:
            raise OpError(f"{node.where()}: bounds must be scalars, got {bound.type}")
    return same_type(node)


@clip.reference
def _(attrs, x, lo=None, hi=None):
    """As onnxruntime: lo where x < lo, then hi where hi < x. A NaN x stays NaN, a NaN bound
    clamps nothing, and x equal to a bound is kept (-0.0 stays -0.0 under a bound of 0.0)."""
    if lo is not None:
        x = np.where(x < np.reshape(lo, ()), np.reshape(lo, ()), x)
    if hi is not None:
        x = np.where(np.reshape(hi, ()) < x, np.reshape(hi, ()), x)
    return np.asarray(x)


@op("Cast", inputs=["input"], outputs=["output"], attrs={
    "to": Attr("dtype"), "saturate": Attr("int", 1), "round_mode": Attr("str", "up")})
def cast(node):
    """Convert to dtype `to` (an sbc dtype name). saturate and round_mode only concern float8
    types, which sbc does not have."""
    return [TensorType(node.attrs["to"], node.inputs[0].shape)]


@cast.reference
def _(attrs, x):
    return _cast(x, attrs["to"])


def _cast(x, to: str):
    if x.dtype == object and to != "bool":
        return x  # symbolic dims stay symbolic through numeric casts (e.g. seq as a float bound)
    return np.asarray(x).astype(numpy_dtype(to))


@op("CastLike", inputs=["input", "target_type"], outputs=["output"],
    attrs={"saturate": Attr("int", 1), "round_mode": Attr("str", "up")})
def cast_like(node):
    """Cast to the dtype of target_type."""
    return [TensorType(node.inputs[1].dtype, node.inputs[0].shape)]


@cast_like.reference
def _(attrs, x, like):
    return _cast(x, dtype_of(like))


@op("IsNaN", inputs=["X"])
def isnan(node):
    check_dtype(node, node.inputs[0].dtype)
    return [TensorType("bool", node.inputs[0].shape)]


isnan.reference(lambda attrs, x: np.isnan(x))


@op("IsInf", inputs=["X"], attrs={"detect_negative": Attr("int", 1),
                                  "detect_positive": Attr("int", 1)})
def isinf(node):
    check_dtype(node, node.inputs[0].dtype)
    return [TensorType("bool", node.inputs[0].shape)]


@isinf.reference
def _(attrs, x):
    return (np.isposinf(x) & bool(attrs["detect_positive"])) | (
        np.isneginf(x) & bool(attrs["detect_negative"]))
