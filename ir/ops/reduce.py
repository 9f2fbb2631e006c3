"""Reductions with ONNX semantics (axes as an optional input, opset 18+), arg-reductions,
CumSum and (Log)Softmax."""

from __future__ import annotations

import numpy as np

from sbc.errors import InputError
from sbc.ir.assumptions import require
from sbc.ir.dims import prod
from sbc.ir.ops.common import known_ints, normalize_axis, same_type
from sbc.ir.registry import Attr, OpError, op
from sbc.ir.types import TensorType


def _reduce_axes(node, rank):
    axes_value = node.inputs[1] if len(node.inputs) > 1 else None
    axes = [] if axes_value is None else known_ints(axes_value, f"{node.op}'s axes")
    if not axes:
        return [] if node.attrs["noop_with_empty_axes"] else list(range(rank))
    return sorted({normalize_axis(int(a), rank) for a in axes})


def _reduce_infer(node):
    """Reduce over the known axes input (all axes when it is omitted or empty, none when also
    noop_with_empty_axes); keepdims keeps reduced dims as 1."""
    x = node.inputs[0]
    axes = _reduce_axes(node, x.type.rank)
    keep = node.attrs["keepdims"]
    shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape) if keep or i not in axes)
    return [TensorType(x.dtype, shape)]


def _reduce_ref(fn):
    def ref(attrs, x, axes=None):
        axes = [] if axes is None else [int(a) % max(x.ndim, 1) for a in axes]
        if not axes and not attrs["noop_with_empty_axes"]:
            axes = list(range(x.ndim))
        # no axes with noop_with_empty_axes: reduce over the empty set, which still applies
        # the composite reductions' elementwise steps (ReduceL1 -> Abs, ReduceSumSquare -> x*x)
        return np.asarray(fn(x, tuple(axes), bool(attrs["keepdims"]))).astype(x.dtype)
    return ref


def _lowest(dtype):
    return -np.inf if dtype.kind == "f" else (False if dtype == bool else np.iinfo(dtype).min)


def _highest(dtype):
    return np.inf if dtype.kind == "f" else (True if dtype == bool else np.iinfo(dtype).max)


def _logsumexp(x, axes, keep):
    m = np.max(x, axis=axes, keepdims=True, initial=-np.inf)
    m = np.where(np.isfinite(m), m, 0)  # an empty or all -inf set: log(0) = -inf, not nan
    out = np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True)) + m
    return out if keep else np.squeeze(out, axis=axes)


def _mean(x, axes, keep):
    """The mean over an empty set is 0, as in onnxruntime (1.31, floats and ints); ONNX's
    reference implementation (NumPy) gives NaN there, and the lowest int for ints."""
    if prod(x.shape[a] for a in axes) == 0:
        return np.sum(x, axis=axes, keepdims=keep)  # zeros of the result's shape
    return np.mean(x, axis=axes, keepdims=keep)


REDUCTIONS = {
    "ReduceSum": lambda x, a, k: np.sum(x, axis=a, keepdims=k),
    "ReduceMean": _mean,
    # over an empty set: -inf / +inf for floats (ONNX), the extreme integer otherwise
    "ReduceMax": lambda x, a, k: np.max(x, axis=a, keepdims=k, initial=_lowest(x.dtype)),
    "ReduceMin": lambda x, a, k: np.min(x, axis=a, keepdims=k, initial=_highest(x.dtype)),
    "ReduceProd": lambda x, a, k: np.prod(x, axis=a, keepdims=k),
    "ReduceL1": lambda x, a, k: np.sum(np.abs(x), axis=a, keepdims=k),
    "ReduceL2": lambda x, a, k: np.sqrt(np.sum(x * x, axis=a, keepdims=k)),
    "ReduceSumSquare": lambda x, a, k: np.sum(x * x, axis=a, keepdims=k),
    "ReduceLogSumExp": _logsumexp,
}
for _name, _fn in REDUCTIONS.items():
    op(_name, inputs=["data", "axes?"], outputs=["reduced"],
       attrs={"keepdims": Attr("int", 1), "noop_with_empty_axes": Attr("int", 0)}
       )(_reduce_infer).reference(_reduce_ref(_fn))


def _arg_infer(node):
    """i64 index of the max/min along `axis` (the first, or with select_last_index the last).
    An empty axis has no such index: onnxruntime fails, unless the result is empty too."""
    x = node.inputs[0]
    axis = normalize_axis(node.attrs["axis"], x.type.rank)
    keep = node.attrs["keepdims"]
    rest = prod(d for i, d in enumerate(x.shape) if i != axis)
    # rest * n >= rest: n >= 1, or rest == 0 (sizes are >= 0)
    if not require(rest * x.shape[axis], ">=", rest,
                   f"{node.op} needs axis {axis} non-empty unless the result is empty"):
        raise OpError(f"{node.where()}: {node.op} over axis {axis} of {x.type}, which is empty")
    shape = tuple(1 if i == axis else d for i, d in enumerate(x.shape) if keep or i != axis)
    return [TensorType("i64", shape)]


def _arg_ref(fn):
    def ref(attrs, x):
        axis = attrs["axis"] % x.ndim
        if x.shape[axis] == 0:  # as onnxruntime: an empty result, else an error
            if prod(d for i, d in enumerate(x.shape) if i != axis) == 0:
                shape = tuple(1 if i == axis else d for i, d in enumerate(x.shape)
                              if attrs["keepdims"] or i != axis)
                return np.zeros(shape, np.int64)
            raise InputError(f"axis {axis} of the {list(x.shape)} input is empty: no index "
                             f"to return")
        if attrs["select_last_index"]:
            out = x.shape[axis] - 1 - fn(np.flip(x, axis), axis=axis)
        else:
            out = fn(x, axis=axis)
        out = np.asarray(out, dtype=np.int64)
        return np.expand_dims(out, axis) if attrs["keepdims"] else out
    return ref


for _name, _fn in {"ArgMax": np.argmax, "ArgMin": np.argmin}.items():
    op(_name, inputs=["data"], outputs=["reduced"], attrs={
        "axis": Attr("int", 0), "keepdims": Attr("int", 1), "select_last_index": Attr("int", 0)},
    )(_arg_infer).reference(_arg_ref(_fn))


@op("CumSum", inputs=["x", "axis"], outputs=["y"], attrs={"exclusive": Attr("int", 0),
                                                         "reverse": Attr("int", 0)})
def cumsum(node):
    """Running sums along the (known, 0-d or 1-element) axis input; exclusive leaves each entry
    out of its own sum, reverse sums from the end."""
    normalize_axis(int(known_ints(node.inputs[1], "CumSum's axis")[0]), node.inputs[0].type.rank)
    return same_type(node)


@cumsum.reference
def _(attrs, x, axis):
    axis = int(np.asarray(axis).reshape(-1)[0]) % x.ndim
    y = np.flip(x, axis) if attrs["reverse"] else x
    out = np.cumsum(y, axis=axis, dtype=x.dtype)
    # exclusive: shift by one (subtracting y would round floats differently); nothing to
    # shift on an empty axis
    if attrs["exclusive"] and x.shape[axis]:
        zero = np.zeros_like(np.take(out, [0], axis=axis))
        out = np.concatenate([zero, np.take(out, np.arange(out.shape[axis] - 1), axis=axis)], axis)
    return np.flip(out, axis) if attrs["reverse"] else out


def _softmax(x, axis):
    if x.size == 0:  # NumPy's max of an empty axis fails; onnxruntime returns the empty tensor
        return x.copy()
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


@op("Softmax", inputs=["input"], outputs=["output"], attrs={"axis": Attr("int", -1)})
def softmax(node):
    """exp(x - max) / sum(exp(x - max)) along `axis` (opset 13: one axis, not a 2-D coercion)."""
    normalize_axis(node.attrs["axis"], node.inputs[0].type.rank)
    return same_type(node)


softmax.reference(lambda attrs, x: _softmax(x, attrs["axis"]).astype(x.dtype))


@op("LogSoftmax", inputs=["input"], outputs=["output"], attrs={"axis": Attr("int", -1)})
def log_softmax(node):
    normalize_axis(node.attrs["axis"], node.inputs[0].type.rank)
    return same_type(node)


@log_softmax.reference
def _(attrs, x):
    if x.size == 0:  # as Softmax
        return x.copy()
    shifted = x - np.max(x, axis=attrs["axis"], keepdims=True)
    return (shifted - np.log(np.sum(np.exp(shifted), axis=attrs["axis"], keepdims=True))
            ).astype(x.dtype)
