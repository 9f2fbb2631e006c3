"""Elementwise ops with ONNX semantics: unary math, binary arithmetic with broadcasting."""

from __future__ import annotations

import numpy as np

from sbc.ir.ops.common import broadcast_shapes, same_type
from sbc.ir.registry import op
from sbc.ir.types import TensorType


def _binary_infer(node):
    a, b = node.inputs
    return [TensorType(a.dtype, broadcast_shapes(a.shape, b.shape))]


def _int_div(a, b):
    """ONNX integer Div truncates toward zero; object arrays hold symbolic dims."""
    if a.dtype == object or b.dtype == object:
        return np.asarray(a // b)
    return (np.trunc(a / b)).astype(a.dtype) if a.dtype.kind in "iu" else (a / b).astype(a.dtype)


_BINARY = {
    "Add": lambda a, b: np.asarray(a + b),
    "Sub": lambda a, b: np.asarray(a - b),
    "Mul": lambda a, b: np.asarray(a * b),
    "Div": _int_div,
}

for _name, _fn in _BINARY.items():
    op(_name, inputs=["A", "B"], outputs=["C"])(_binary_infer).reference(
        lambda attrs, a, b, fn=_fn: fn(np.asarray(a), np.asarray(b)))


def _relu(attrs, x):
    return np.maximum(x, np.zeros((), x.dtype))


op("Relu", inputs=["X"])(same_type).reference(_relu)
