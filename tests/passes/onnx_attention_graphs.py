"""ONNX `Attention` (opset 23) models built with onnx.helper and imported by sbc's frontend,
which expands Attention through its ONNX function body: the inputs of the sliding-window
fusion tests for that form. The boolean mask is built from Range and comparisons on the
query's length, so it follows the dynamic seq dim."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from sbc.frontend import import_onnx
from sbc.ir import Graph
from sbc.passes import run_passes

D = 8
BEFORE_FUSION = ["fold-constants", "fold-reshape-transpose", "cse", "dce"]  # (the pipeline's)


def _constant(name: str, value) -> helper.NodeProto:
    tensor = numpy_helper.from_array(np.asarray(value), name)
    return helper.make_node("Constant", [], [name], value=tensor)


def band_mask_nodes(kind: str, window: int, seq_axis: int) -> list[helper.NodeProto]:
    """bool [T, T] named `mask`: band (0 <= i-j < window), strict (0 < i-j <= window: off by
    one), causal (i >= j), window_only (i - j < window, for is_causal=1 to complete)."""
    nodes = [helper.make_node("Shape", ["q"], ["q_len"], start=seq_axis, end=seq_axis + 1),
             helper.make_node("Squeeze", ["q_len"], ["n"]),
             _constant("zero", np.int64(0)), _constant("one", np.int64(1)),
             _constant("w", np.int64(window)),
             _constant("axis1", np.array([1], np.int64)),
             _constant("axis0", np.array([0], np.int64)),
             helper.make_node("Range", ["zero", "n", "one"], ["positions"]),
             helper.make_node("Unsqueeze", ["positions", "axis1"], ["rows"]),
             helper.make_node("Unsqueeze", ["positions", "axis0"], ["cols"]),
             helper.make_node("Sub", ["rows", "cols"], ["offset"])]
    lower, upper = ("Greater", "LessOrEqual") if kind == "strict" else ("GreaterOrEqual", "Less")
    if kind == "causal":
        return nodes + [helper.make_node("GreaterOrEqual", ["offset", "zero"], ["mask"])]
    if kind == "window_only":
        return nodes + [helper.make_node("Less", ["offset", "w"], ["mask"])]
    return nodes + [helper.make_node(lower, ["offset", "zero"], ["seen"]),
                    helper.make_node(upper, ["offset", "w"], ["recent"]),
                    helper.make_node("And", ["seen", "recent"], ["mask"])]


def attention_model(mask="band", is_causal=0, packed=False, q_heads=4, kv_heads=2, window=4,
                    scale=None):
    """q/k/v [B, H, T, D] (packed: [B, T, H*D] with q_num_heads/kv_num_heads), an optional
    bool mask (None: no attn_mask input)."""
    seq_axis = 1 if packed else 2
    nodes = band_mask_nodes(mask, window, seq_axis) if mask else []
    attrs = {"is_causal": is_causal}
    if packed:
        attrs.update(q_num_heads=q_heads, kv_num_heads=kv_heads)
    if scale is not None:
        attrs["scale"] = scale
    nodes.append(helper.make_node("Attention", ["q", "k", "v"] + (["mask"] if mask else []), ["o"],
                                  name="attention", **attrs))

    def io(name, heads):
        shape = ["batch", "seq", heads * D] if packed else ["batch", heads, "seq", D]
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
    graph = helper.make_graph(nodes, "attention", [io("q", q_heads), io("k", kv_heads),
                                                   io("v", kv_heads)], [io("o", q_heads)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


def attention_graph(folded=True, **options) -> Graph:
    """The imported model, after the passes that run before the fusions (folded) or raw."""
    graph = import_onnx(attention_model(**options))
    return run_passes(graph, BEFORE_FUSION) if folded else graph
