"""sbc IR (the graph import_checkpoint builds) -> an ONNX model onnxruntime runs.

Standard ops are written as the ONNX op of the same name (sbc's IR uses ONNX's semantics and
its opset-18+ input forms). sbc's own ops become their decompositions in plain ONNX opset 21
(IR version 10, which onnxruntime 1.31 reads):

    RMSNormalization        Mul, ReduceMean, Add, Sqrt, Reciprocal, Mul (opset 23's op is newer)
    SpikeEncode             Abs, ReduceMean, Div, Clip -> V_th; Round(x / V_th) -> Cast int16
    DequantizeGroups        Cast(int8) * scales, per group of input channels (axis 0)
    LinearAttention         a Scan over the sequence carrying the [B, H_kv, dk, dv] state
                            (gated rule, decay per key channel, GQA as [B, H_kv, groups, dk])
    SlidingWindowAttention  softmax over the T x T scores with the banded causal mask

so the file runs at any length in onnxruntime (the Scan is exact at any T; the attention is
quadratic in T). Only the whole-sequence model is written: no recurrent state inputs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sbc.errors import UnsupportedError
from sbc.ir import Graph, Node, Value
from sbc.ir.dims import Sym

OPSET = 21
IR_VERSION = 10  # what onnxruntime 1.31 reads (onnx 1.23's helper writes 14)
EXTERNAL_DATA_BYTES = 1_800_000_000  # past this the weights go to a side file (protobuf's 2 GB)

ELEMENT = {"f32": TensorProto.FLOAT, "f16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16,
           "f64": TensorProto.DOUBLE,
           "i8": TensorProto.INT8, "i16": TensorProto.INT16, "i32": TensorProto.INT32,
           "i64": TensorProto.INT64, "u8": TensorProto.UINT8, "bool": TensorProto.BOOL}
# standard ops written as they are, with the attributes ONNX opset 21 knows
PLAIN = {op: () for op in (
    "Abs", "Add", "Concat", "Cos", "Div", "Exp", "Log", "MatMul", "Min", "Mul", "Neg", "Range",
    "Relu", "Round", "Sigmoid", "Sin", "Slice", "Sqrt", "Sub", "Unsqueeze", "Shape", "Clip",
    "Reciprocal", "Where", "Softmax")}
PLAIN.update({"Gather": ("axis",), "Cast": ("to",), "Concat": ("axis",), "Softmax": ("axis",),
              "ReduceMax": ("keepdims",), "ReduceMean": ("keepdims",), "Reshape": ("allowzero",)})


def export_graph(graph: Graph, consume: bool = False) -> onnx.ModelProto:
    """The ONNX model of `graph` (no recurrent state; see the module docstring). consume: drop
    each param's array from `graph` once copied, so the weights are held once, not twice."""
    w = _Writer(graph, consume)
    for node in graph.nodes:
        w.node(node)
    g = helper.make_graph(
        w.nodes, graph.name,
        [_value_info(v.name, v) for v in graph.inputs],
        [_value_info(name, v) for v, name in zip(graph.outputs, graph.output_names)],
        initializer=w.initializers)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="sbc")
    model.ir_version = IR_VERSION
    return model


def save_model(model: onnx.ModelProto, path: str, final: str | None = None) -> None:
    """Write `model` to `path` (a temp file that becomes `final`, or `final` itself); weights
    past protobuf's 2 GB go to `<final>.data` beside it."""
    import os
    large = sum(len(t.raw_data) for t in model.graph.initializer) > EXTERNAL_DATA_BYTES
    if large:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=os.path.basename(final or path) + ".data")
    else:
        onnx.save_model(model, path)


def _value_info(name: str, v: Value) -> onnx.ValueInfoProto:
    dims = [str(d) if isinstance(d, Sym) else int(d) for d in v.shape]
    return helper.make_tensor_value_info(name, ELEMENT[v.dtype], dims)


class _Writer:
    def __init__(self, graph: Graph, consume: bool):
        self.graph = graph
        self.nodes: list[onnx.NodeProto] = []
        self.initializers = []
        for p in graph.params:
            self.initializers.append(numpy_helper.from_array(np.asarray(p.data), p.name))
            if consume:
                p.data = None
        self.users = graph.users()
        self._count = 0
        # graph outputs carry the signature's names (output_names), not their values' names
        self.names = {id(v): name for v, name in zip(graph.outputs, graph.output_names)}

    def name(self, v: Value | None) -> str:
        return "" if v is None else self.names.get(id(v), v.name)

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}__{self._count}"

    def emit(self, op: str, inputs: list[str], output: str | None = None, name: str = "",
             **attrs) -> str:
        out = output or self.fresh(name or op)
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.fresh(name or op), **attrs))
        return out

    def const(self, value, dtype=np.int64, hint: str = "const") -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(self, node: Node) -> None:
        ins = [self.name(v) for v in node.inputs]
        outs = [self.name(v) for v in node.outputs]
        if node.op in PLAIN:
            attrs = {k: self._attr(k, v) for k, v in node.attrs.items() if k in PLAIN[node.op]}
            self.nodes.append(helper.make_node(node.op, ins, outs, name=node.name or None, **attrs))
            return
        handler = getattr(self, f"_{node.op}", None)
        if handler is None:
            raise UnsupportedError(f"ONNX export: {node.where()} has no ONNX form in sbc's "
                                   f"exporter")
        for extra in node.outputs[1:]:
            if self.users.get(extra) and node.op in ("LinearAttention", "SlidingWindowAttention"):
                raise UnsupportedError(f"ONNX export: {node.where()}'s state output is used; "
                                       f"only whole-sequence models are exported")
        handler(node, ins, outs)

    @staticmethod
    def _attr(key, value):
        return ELEMENT[value] if key == "to" else value

    # -- decompositions
    def _RMSNormalization(self, node, ins, outs):
        x, scale = ins
        if node.attrs["axis"] not in (-1, node.inputs[0].type.rank - 1):
            raise UnsupportedError(f"ONNX export: {node.where()} normalises from axis "
                                   f"{node.attrs['axis']}; the exporter writes the last axis only")
        mean = self.emit("ReduceMean", [self.emit("Mul", [x, x]), self.const([-1])], keepdims=1)
        eps = self.const(node.attrs["epsilon"], np.float32)
        inv = self.emit("Reciprocal", [self.emit("Sqrt", [self.emit("Add", [mean, eps])])])
        self.emit("Mul", [self.emit("Mul", [x, inv]), scale], outs[0], name=node.name)

    def _SpikeEncode(self, node, ins, outs):
        a = node.attrs
        if a["clip"] or a["k_form"] != "div":
            raise UnsupportedError(f"ONNX export: {node.where()} (clip or k_form mul) is not "
                                   f"written by the exporter")
        x = ins[0]
        mean = self.emit("ReduceMean", [self.emit("Abs", [x]), self.const([-1])], keepdims=1)
        v = self.emit("Div", [mean, self.const(a["k"], np.float32)])
        self.emit("Clip", [v, self.const(a["lo"], np.float32), self.const(a["hi"], np.float32)],
                  outs[1])
        rounded = self.emit("Round", [self.emit("Div", [x, outs[1]])])
        self.emit("Cast", [rounded], outs[0], to=ELEMENT[node.outputs[0].dtype])

    def _DequantizeGroups(self, node, ins, outs):
        q = node.inputs[0]
        group = node.attrs["group"]
        k, n = q.shape
        if node.attrs["axis"] % 2 != 0 or k % group:
            raise UnsupportedError(f"ONNX export: {node.where()} needs axis 0 and whole groups")
        grouped = self.emit("Reshape", [self.emit("Cast", [ins[0]], to=TensorProto.FLOAT),
                                        self.const([k // group, group, n])])
        scaled = self.emit("Mul", [grouped, self.emit("Unsqueeze", [ins[1], self.const([1])])])
        self.emit("Reshape", [scaled, self.const([k, n])], outs[0])

    def _LinearAttention(self, node, ins, outs):
        a = node.attrs
        q, k, v, past = ins[:4]
        decay = ins[4] if len(ins) > 4 else ""
        if a["update_rule"] != "gated" or past or not decay or \
                node.inputs[4].shape[-1] != node.inputs[1].shape[-1]:
            raise UnsupportedError(f"ONNX export: {node.where()}: the exporter writes the gated "
                                   f"rule with per-key-channel decay and no past state")
        hq, hkv = a["q_num_heads"], a["kv_num_heads"]
        dk = node.inputs[0].shape[-1] // hq
        dv = node.inputs[2].shape[-1] // hkv
        groups = hq // hkv
        q5 = self.emit("Reshape", [q, self.const([0, 0, hkv, groups, dk])])
        k4, g4 = (self.emit("Reshape", [x, self.const([0, 0, hkv, dk])]) for x in (k, decay))
        v4 = self.emit("Reshape", [v, self.const([0, 0, hkv, dv])])
        batch = self.emit("Slice", [self.emit("Shape", [q]), self.const([0]), self.const([1])])
        shape = self.emit("Concat", [batch, self.const([hkv, dk, dv])], axis=0)
        zero = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
        s0 = self.emit("ConstantOfShape", [shape], value=zero)
        scale = a["scale"] or dk ** -0.5
        out5, state = self.fresh("la_out"), outs[1]
        self.nodes.append(helper.make_node(
            "Scan", [s0, q5, k4, v4, g4], [state, out5], name=node.name or None,
            num_scan_inputs=4, scan_input_axes=[1, 1, 1, 1], scan_output_axes=[1],
            body=_gated_step(scale)))
        self.emit("Reshape", [out5, self.const([0, 0, hq * dv])], outs[0])

    def _SlidingWindowAttention(self, node, ins, outs):
        a = node.attrs
        if any(ins[3:]) or a["full"]:
            raise UnsupportedError(f"ONNX export: {node.where()}: the exporter writes windowed "
                                   f"attention without past state")
        q, k, v = ins[:3]
        hq, hkv, window = a["q_num_heads"], a["kv_num_heads"], a["window"]
        d = node.inputs[0].shape[-1] // hq
        dv = node.inputs[2].shape[-1] // hkv
        groups = hq // hkv
        q5 = self.emit("Transpose", [self.emit("Reshape", [q, self.const([0, 0, hkv, groups, d])])],
                       perm=[0, 2, 3, 1, 4])  # [B, H_kv, groups, T, d]

        def kv_heads(x, width, perm):  # [B, H_kv, 1, ...]
            heads = self.emit("Transpose", [self.emit("Reshape", [x, self.const([0, 0, hkv, width])])],
                              perm=perm)
            return self.emit("Unsqueeze", [heads, self.const([2])])

        k_t = kv_heads(k, d, [0, 2, 3, 1])  # [B, H_kv, 1, d, T]
        v5 = kv_heads(v, dv, [0, 2, 1, 3])  # [B, H_kv, 1, T, dv]
        scale = a["scale"] or d ** -0.5
        scores = self.emit("Mul", [self.emit("MatMul", [q5, k_t]), self.const(scale, np.float32)])
        t = self.emit("Gather", [self.emit("Shape", [q]), self.const(1)], axis=0)
        pos = self.emit("Range", [self.const(0), t, self.const(1)])
        offset = self.emit("Sub", [self.emit("Unsqueeze", [pos, self.const([1])]),
                                   self.emit("Unsqueeze", [pos, self.const([0])])])
        band = self.emit("And", [self.emit("GreaterOrEqual", [offset, self.const(0)]),
                                 self.emit("Less", [offset, self.const(window)])])
        masked = self.emit("Where", [band, scores, self.const(-np.inf, np.float32)])
        probs = self.emit("Softmax", [masked], axis=-1)
        out = self.emit("Transpose", [self.emit("MatMul", [probs, v5])], perm=[0, 3, 1, 2, 4])
        self.emit("Reshape", [out, self.const([0, 0, hq * dv])], outs[0], name=node.name)


def _gated_step(scale: float) -> onnx.GraphProto:
    """One step of gated linear attention: S = exp(g) S + k v^T; o = scale * q S."""
    f = TensorProto.FLOAT
    axes = lambda name, values: helper.make_node(  # noqa: E731
        "Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [1], values))
    nodes = [
        axes("last", [-1]), axes("second_last", [-2]),
        helper.make_node("Constant", [], ["scale"], value=helper.make_tensor("scale", f, [], [scale])),
        helper.make_node("Exp", ["g"], ["eg"]),
        helper.make_node("Unsqueeze", ["eg", "last"], ["eg_col"]),
        helper.make_node("Mul", ["state", "eg_col"], ["decayed"]),
        helper.make_node("Unsqueeze", ["k", "last"], ["k_col"]),
        helper.make_node("Unsqueeze", ["v", "second_last"], ["v_row"]),
        helper.make_node("Mul", ["k_col", "v_row"], ["kv"]),
        helper.make_node("Add", ["decayed", "kv"], ["state_out"]),
        helper.make_node("MatMul", ["q", "state_out"], ["qs"]),
        helper.make_node("Mul", ["qs", "scale"], ["o"]),
    ]
    inputs = [helper.make_tensor_value_info(n, f, None) for n in ("state", "q", "k", "v", "g")]
    outputs = [helper.make_tensor_value_info(n, f, None) for n in ("state_out", "o")]
    return helper.make_graph(nodes, "gated_linear_attention_step", inputs, outputs)
