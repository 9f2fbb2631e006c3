"""ONNX (default domain, opset 17-27) -> sbc IR.

Each ONNX node becomes the sbc op of the same name; older opset forms are first normalised to
the newest one (axes and split sizes as inputs), so the rest of sbc sees one form per op. The
import is 1:1 — folding and cleanup are passes. Every failure is one readable line.
"""

from __future__ import annotations

import copy
import os
import re

import numpy as np
import onnx
from onnx import numpy_helper

from sbc.errors import InvalidModelError, SbcError, UnsupportedError
from sbc.ir import Graph, Sym, TensorType, Value, all_ops, get_op
from sbc.ir.registry import OpError
from sbc.ir.types import dtype_of
from sbc.ir.verifier import verify

MIN_OPSET, MAX_OPSET = 13, 28  # 13: the first opset with axes/split as inputs for most ops
CONSTANT_LIMIT = 1024  # larger Constant nodes become params

ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "f32", onnx.TensorProto.FLOAT16: "f16", onnx.TensorProto.DOUBLE: "f64",
    onnx.TensorProto.INT8: "i8", onnx.TensorProto.INT16: "i16", onnx.TensorProto.INT32: "i32",
    onnx.TensorProto.INT64: "i64", onnx.TensorProto.UINT8: "u8", onnx.TensorProto.BOOL: "bool",
}


def import_onnx(model: str | os.PathLike | onnx.ModelProto, *, input_shapes=None,
                constants=None) -> Graph:
    """Import an ONNX model (path or ModelProto) as a verified sbc Graph.

    input_shapes optionally overrides input dims: {"ids": [1, "seq"]}.
    constants freezes graph inputs to values known at compile time: {"axes": array}
    (for models that feed shapes or axes as inputs, which a compiler needs to know)."""
    proto = load_model(model)
    opset = check_opsets(proto)
    graph = _Importer(proto, opset, input_shapes or {}, constants or {}).run()
    verify(graph)
    return graph


def load_model(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        proto = model
    else:
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise InvalidModelError(f"{path}: no such file")
        try:
            proto = onnx.load(path)
        except Exception as e:  # protobuf's DecodeError and friends
            raise InvalidModelError(f"{path}: not a valid ONNX model ({_first_line(e)})") from e
    if not proto.HasField("graph") or not proto.graph.node and not proto.graph.output:
        raise InvalidModelError("the file holds no ONNX graph (is it an ONNX model?)")
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        raise InvalidModelError(f"ONNX checker rejected the model: {_first_line(e)}") from e
    if proto.functions:
        proto = onnx.inliner.inline_local_functions(proto)
    return proto


def check_opsets(proto: onnx.ModelProto) -> int:
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    version = opsets.get("ai.onnx")
    if version is None or not MIN_OPSET <= version <= MAX_OPSET:
        raise UnsupportedError(f"ONNX opset {version} is not supported; sbc supports default-domain "
                               f"opsets {MIN_OPSET}-{MAX_OPSET}")
    for node in proto.graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedError(f"unsupported op '{node.op_type}' of domain '{node.domain}' at "
                                   f"node '{node.name}'; sbc supports only the default ONNX domain")
    return version


def _first_line(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split())[:300]


def _sym_name(text: str) -> str:
    name = re.sub(r"\W", "_", text)
    return name if name and not name[0].isdigit() else f"d_{name}"


class _Importer:
    def __init__(self, proto: onnx.ModelProto, opset: int, input_shapes: dict, constants: dict):
        self.proto = proto
        self.opset = opset
        self.input_shapes = input_shapes
        self.constants = constants
        self.graph = Graph(_sym_name(proto.graph.name or "main"))
        self.env: dict[str, Value | None] = {"": None}

    def run(self) -> Graph:
        g = self.proto.graph
        initializers = {t.name: t for t in g.initializer}
        for t in g.initializer:
            self.env[t.name] = self.graph.add_param(t.name, self._tensor(t, f"initializer '{t.name}'"))
        for vi in g.input:
            if vi.name in self.constants:
                value = np.asarray(self.constants[vi.name])
                self.env[vi.name] = (self.constant(value, vi.name) if value.size <= CONSTANT_LIMIT
                                     else self.graph.add_param(vi.name, value))
            elif vi.name not in initializers:
                self.env[vi.name] = self.graph.add_input(vi.name, self._input_type(vi))
        for index, node in enumerate(g.node):
            self._node(node, index)
        self._outputs(g.output)
        return self.graph

    # -- values ---------------------------------------------------------------------------
    def _tensor(self, t: onnx.TensorProto, what: str) -> np.ndarray:
        if t.data_type not in ONNX_DTYPES:
            raise UnsupportedError(f"{what} has dtype {onnx.TensorProto.DataType.Name(t.data_type)}"
                                   f"; sbc supports {', '.join(sorted(set(ONNX_DTYPES.values())))}")
        return numpy_helper.to_array(t)

    def _input_type(self, vi: onnx.ValueInfoProto) -> TensorType:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or tt.elem_type not in ONNX_DTYPES:
            kind = (onnx.TensorProto.DataType.Name(tt.elem_type) if vi.type.HasField("tensor_type")
                    else vi.type.WhichOneof("value"))
            raise UnsupportedError(f"input '{vi.name}' has type {kind}; sbc supports tensors of "
                                   f"{', '.join(sorted(set(ONNX_DTYPES.values())))}")
        dims = []
        for i, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value"):
                dims.append(d.dim_value)
            else:
                dims.append(Sym.var(_sym_name(d.dim_param or f"{vi.name}_dim{i}")))
        override = self.input_shapes.get(vi.name)
        if override is not None:
            dims = [Sym.var(_sym_name(d)) if isinstance(d, str) else int(d) for d in override]
        return TensorType(ONNX_DTYPES[tt.elem_type], tuple(dims))

    def _outputs(self, outputs) -> None:
        values, names = [], []
        for o in outputs:
            v = self.env.get(o.name)
            if v is None:
                raise InvalidModelError(f"graph output '{o.name}' is not produced by any node")
            if v.producer is None:  # an input or initializer: the output needs its own value
                v = self.graph.add1("Identity", v, name=f"output:{o.name}")
            values.append(v)
            names.append(o.name)
        self.graph.set_outputs(values, names)

    # -- nodes ----------------------------------------------------------------------------
    def _node(self, node: onnx.NodeProto, index: int) -> None:
        name = node.name or f"{node.op_type}_{index}"
        if node.op_type == "Constant":
            return self._constant(node, name)
        if get_op(node.op_type) is None:
            return self._expand(node, name)
        inputs = []
        for i in node.input:
            if i not in self.env:
                raise InvalidModelError(f"node '{name}' uses '{i}' before it is defined")
            inputs.append(self.env[i])
        while inputs and inputs[-1] is None:
            inputs.pop()
        attrs = {a.name: self._attr(a, node, name) for a in node.attribute}
        op_type, inputs, attrs = normalize(node.op_type, inputs, attrs, self, len(node.output))
        try:
            ir = self.graph.add(op_type, inputs, attrs, name=name,
                                outputs=[o or f"{name}_unused{i}" for i, o in enumerate(node.output)])
        except OpError as e:
            raise UnsupportedError(str(e) if name in str(e) else f"node '{name}': {e}") from e
        except SbcError:
            raise
        if len(ir.outputs) < len([o for o in node.output if o]):
            raise UnsupportedError(f"node '{name}' ({node.op_type}): sbc produces "
                                   f"{len(ir.outputs)} outputs, the model uses {len(node.output)}")
        for out_name, value in zip(node.output, ir.outputs):
            if out_name:
                self.env[out_name] = value

    def _expand(self, node: onnx.NodeProto, name: str) -> None:
        """An op without an sbc declaration but with an ONNX function body (e.g. Attention,
        RotaryEmbedding) is imported as that official decomposition."""
        body = function_body(node, self.opset, [self.env.get(i) for i in node.input])
        if body is None:
            raise UnsupportedError(
                f"unsupported op '{node.op_type}' at node '{name}' (opset {self.opset}); "
                f"sbc supports: {', '.join(all_ops())}")
        nodes, opset = body
        outer, self.opset = self.opset, opset
        try:
            for k, inner in enumerate(nodes):
                if not inner.name:
                    inner.name = f"{name}/{inner.op_type}_{k}"
                self._node(inner, k)
        finally:
            self.opset = outer

    def _constant(self, node: onnx.NodeProto, name: str) -> None:
        attr = node.attribute[0] if node.attribute else None
        if attr is None:
            raise InvalidModelError(f"Constant node '{name}' has no value")
        if attr.name == "value":
            value = self._tensor(attr.t, f"Constant node '{name}'")
        elif attr.name in ("value_float", "value_floats"):
            value = np.array(onnx.helper.get_attribute_value(attr), dtype=np.float32)
        elif attr.name in ("value_int", "value_ints"):
            value = np.array(onnx.helper.get_attribute_value(attr), dtype=np.int64)
        else:
            raise UnsupportedError(f"Constant node '{name}': attribute '{attr.name}' is not "
                                   f"supported (value, value_float(s), value_int(s) are)")
        if value.size > CONSTANT_LIMIT:
            self.env[node.output[0]] = self.graph.add_param(node.output[0], value)
        else:
            self.env[node.output[0]] = self.graph.add(
                "Constant", [], {"value": value}, name=name, outputs=[node.output[0]]).outputs[0]

    def _attr(self, a: onnx.AttributeProto, node: onnx.NodeProto, name: str):
        if a.type == onnx.AttributeProto.TENSOR:
            return self._tensor(a.t, f"attribute '{a.name}' of node '{name}'")
        if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            raise UnsupportedError(f"unsupported op '{node.op_type}' with a subgraph at node "
                                   f"'{name}'; control flow (If/Loop/Scan) is not supported yet")
        value = onnx.helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode()
        if a.name == "to" and node.op_type == "Cast":
            if value not in ONNX_DTYPES:
                raise UnsupportedError(f"node '{name}': Cast to "
                                       f"{onnx.TensorProto.DataType.Name(value)} is not supported")
            value = ONNX_DTYPES[value]
        return value

    def constant(self, array: np.ndarray, hint: str) -> Value:
        return self.graph.add("Constant", [], {"value": array}, name=hint).outputs[0]


# -- function expansion ------------------------------------------------------------------------

def _type_proto(v: Value | None) -> onnx.TypeProto:
    if v is None:
        return onnx.TypeProto()
    elem = {name: code for code, name in ONNX_DTYPES.items()}[v.dtype]
    dims = [d if isinstance(d, int) else str(d) for d in v.shape]
    return onnx.helper.make_tensor_type_proto(elem, dims)


def function_body(node: onnx.NodeProto, opset: int, inputs: list) -> tuple[list, int] | None:
    """The nodes of the op's ONNX function body (renamed into the caller's namespace) and the
    body's opset, or None when the op has no function for this opset."""
    from onnx.backend.test.case.node import function_expand_helper  # onnx's own inliner
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain or "")
    except onnx.defs.SchemaError:
        return None
    protos = []
    plain = [v for v in schema.function_opset_versions if v <= opset]
    if plain:
        protos.append(schema.get_function_with_opset_version(max(plain)))
    else:
        dependent = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
        if dependent:
            protos.append(schema.get_context_dependent_function_with_opset_version(
                max(dependent), node.SerializeToString(), [_type_proto(v).SerializeToString() for v in inputs]))
    if not protos:
        return None
    function = onnx.FunctionProto()
    function.ParseFromString(protos[0])
    node = copy.deepcopy(node)
    given = {a.name for a in node.attribute}
    for attr_name, attr in schema.attributes.items():
        if attr_name not in given and attr.default_value.name:
            node.attribute.append(attr.default_value)
    body_opset = {o.domain or "": o.version for o in function.opset_import}.get("", opset)
    return function_expand_helper(node, function, f"{node.name}/"), body_opset


# -- opset normalisation ----------------------------------------------------------------------

REDUCE_AXES_INPUT_SINCE = {"ReduceSum": 13}  # every other Reduce* takes axes as input from 18


def normalize(op_type: str, inputs: list, attrs: dict, importer: _Importer, n_outputs: int):
    """Rewrite older-opset forms to the newest: attributes that became inputs move over."""
    opset = importer.opset
    if op_type.startswith("Reduce") and "axes" in attrs and opset < REDUCE_AXES_INPUT_SINCE.get(op_type, 18):
        axes = attrs.pop("axes")
        inputs = [inputs[0], importer.constant(np.array(axes, np.int64), f"{op_type}_axes")]
    if op_type == "Split":
        attrs.setdefault("num_outputs", n_outputs if len(inputs) < 2 else None)
    if op_type == "LayerNormalization":
        attrs["num_outputs"] = n_outputs
    return op_type, inputs, attrs
