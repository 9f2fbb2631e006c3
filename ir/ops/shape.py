"""Shape ops: Shape, Reshape, Constant. Shapes computed from shapes are known at compile time
(possibly symbolic), which is what lets Reshape keep symbolic dims."""

from __future__ import annotations

import numpy as np

from sbc.ir.dims import prod
from sbc.ir.ops.common import known_ints
from sbc.ir.registry import Attr, OpError, op
from sbc.ir.types import TensorType, dtype_of


@op("Shape", inputs=["data"], outputs=["shape"], attrs={"start": Attr("int", 0),
                                                        "end": Attr("int", None)})
def shape_(node):
    return [TensorType("i64", (len(_shape_slice(node)),))]


def _shape_slice(node):
    shape = node.inputs[0].shape
    return shape[node.attrs["start"]:node.attrs["end"]]


@shape_.value
def _(node):
    dims = _shape_slice(node)
    static = all(isinstance(d, int) for d in dims)
    return [np.array(dims, dtype=np.int64 if static else object)]


@shape_.reference
def _(attrs, x):
    return np.array(x.shape[attrs["start"]:attrs["end"]], dtype=np.int64)


@op("Reshape", inputs=["data", "shape"], outputs=["reshaped"], attrs={"allowzero": Attr("int", 0)})
def reshape(node):
    x, shape = node.inputs
    return [TensorType(x.dtype, resolve_reshape(x.shape, known_ints(shape, "Reshape's shape"),
                                                node.attrs["allowzero"]))]


def resolve_reshape(in_shape, target, allowzero=0):
    """ONNX Reshape target: 0 copies the input dim (unless allowzero), -1 is inferred."""
    out = [in_shape[i] if (d == 0 and not allowzero) else d for i, d in enumerate(target)]
    if sum(1 for d in out if isinstance(d, int) and d == -1) > 1:
        raise OpError("Reshape: more than one -1 in the target shape")
    if any(isinstance(d, int) and d == -1 for d in out):
        known_part = prod(d for d in out if not (isinstance(d, int) and d == -1))
        out = [prod(in_shape) // known_part if isinstance(d, int) and d == -1 else d for d in out]
    if prod(out) != prod(in_shape):
        raise OpError(f"Reshape: cannot reshape {list(map(str, in_shape))} to "
                      f"{list(map(str, out))}")
    return tuple(out)


@reshape.reference
def _(attrs, x, shape):
    return np.reshape(x, resolve_reshape(x.shape, [int(d) for d in shape], attrs["allowzero"]))


@op("Constant", inputs=[], outputs=["output"], attrs={"value": Attr("tensor")})
def constant(node):
    value = node.attrs["value"]
    return [TensorType("i64" if value.dtype == object else dtype_of(value), value.shape)]


@constant.value
def _(node):
    return [node.attrs["value"]]


@constant.reference
def _(attrs, *unused):
    return attrs["value"]
