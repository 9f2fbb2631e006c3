"""Older-opset ONNX node forms -> the newest form, which is what an sbc IR op of that name means.

Over the opsets, several attributes became inputs (Reduce* `axes` in 18, ReduceSum's in 13;
Squeeze/Unsqueeze `axes` and Split `split` in 13; Clip `min`/`max` in 11; Pad `pads` and
Slice `starts`/`ends`/... in 10-11). The ONNX checker only lets such an attribute through at an
opset where it is one, so its presence alone says the node uses the old form: the upgrade
moves it to a Constant input and needs no per-op version table.

The upgrade also fills the sbc-only `num_outputs` of Split (before 18 the count was implied by
the node's outputs) and of LayerNormalization (sbc materialises only the outputs the model uses).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from sbc.ir import Value

# Constant(array, hint) -> Value: a Constant node in the graph being built.
MakeConstant = Callable[[np.ndarray, str], Value]

# op -> the attributes that became inputs, each with its input index in the newest form.
ATTRS_TO_INPUTS: dict[str, dict[str, int]] = {
    "Squeeze": {"axes": 1},
    "Unsqueeze": {"axes": 1},
    "Split": {"split": 1},
    "Slice": {"starts": 1, "ends": 2, "axes": 3},  # Slice-1 had no steps
    "Pad": {"pads": 1, "value": 2},
}
REDUCE_OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
              "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")


def upgrade(op_type: str, inputs: list[Value | None], attrs: dict, n_outputs: int,
            constant: MakeConstant) -> tuple[list[Value | None], dict]:
    """Return the node's inputs and attributes in the newest opset's form."""
    moved = dict(ATTRS_TO_INPUTS.get(op_type, {}))
    if op_type in REDUCE_OPS:
        moved["axes"] = 1
    inputs, attrs = list(inputs), dict(attrs)
    for attr_name, index in sorted(moved.items(), key=lambda kv: kv[1]):
        if attr_name in attrs:
            array = _as_input(op_type, attr_name, attrs.pop(attr_name), inputs)
            inputs += [None] * (index + 1 - len(inputs))
            inputs[index] = constant(array, f"{op_type}_{attr_name}")
    if op_type == "Clip":
        inputs = _clip_bounds(inputs, attrs, constant)
    if op_type == "Split" and (len(inputs) < 2 or inputs[1] is None):
        attrs.setdefault("num_outputs", n_outputs)
    if op_type == "LayerNormalization":
        attrs["num_outputs"] = n_outputs
    while inputs and inputs[-1] is None:  # omitted trailing optional inputs
        inputs.pop()
    return inputs, attrs


def _as_input(op_type: str, attr_name: str, value, inputs: list[Value | None]) -> np.ndarray:
    """An old attribute value as the array the newest form's input takes."""
    if op_type == "Pad" and attr_name == "value":  # the pad value has the data's dtype
        return np.array(value, dtype=_dtype_of_first(inputs))
    return np.array(value, dtype=np.int64)


def _clip_bounds(inputs, attrs, constant: MakeConstant):
    """Clip-6 `min`/`max` attributes -> scalar inputs of the data's dtype."""
    for index, attr_name in ((1, "min"), (2, "max")):
        if attr_name in attrs:
            inputs += [None] * (index + 1 - len(inputs))
            inputs[index] = constant(np.array(attrs.pop(attr_name), dtype=_dtype_of_first(inputs)),
                                     f"Clip_{attr_name}")
    return inputs


def _dtype_of_first(inputs) -> np.dtype:
    from sbc.ir import numpy_dtype
    return numpy_dtype(inputs[0].dtype) if inputs and inputs[0] is not None else np.float32
