"""ONNX (default domain, opsets MIN_OPSET-MAX_OPSET) -> sbc IR.

Each ONNX node becomes the sbc op of the same name; older opset forms are first upgraded to
the newest one (`opset_upgrade`), so the rest of sbc sees one form per op. Ops sbc does not
declare but ONNX defines by a function body (Attention, RotaryEmbedding, ...) are imported as
that body. The import is 1:1 — folding and cleanup are passes; compile-time-known values
(shapes, possibly symbolic) propagate by themselves as nodes are added.

`Scan` and `Loop` bodies become closed sbc graphs (see `_BodyImporter`): values a body reads
from the enclosing graph are passed explicitly. `If` is not supported.

Every failure is an sbc error with one readable line that names the file, node or input.
"""

from __future__ import annotations

import copy
import keyword
import os
import re

import numpy as np
import onnx
import onnx.inliner
from onnx import numpy_helper

from sbc.errors import InputError, InvalidModelError, SbcError, UnsupportedError
from sbc.frontend.opset_upgrade import upgrade
from sbc.ir import Graph, OpDef, Sym, TensorType, Value, all_ops, get_op, numpy_dtype
from sbc.ir.ops.control_flow import CONDITION, ITER_NUM
from sbc.ir.registry import OpError
from sbc.ir.verifier import verify

MIN_OPSET, MAX_OPSET = 13, 28  # 13: the first opset with axes/split as inputs for most ops
CONSTANT_LIMIT = 1024  # larger Constant nodes become params, like initializers
CONTROL_FLOW = "control flow If is not supported (Scan and Loop are)"

ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "f32", onnx.TensorProto.FLOAT16: "f16", onnx.TensorProto.DOUBLE: "f64",
    onnx.TensorProto.INT8: "i8", onnx.TensorProto.INT16: "i16", onnx.TensorProto.INT32: "i32",
    onnx.TensorProto.INT64: "i64", onnx.TensorProto.UINT8: "u8", onnx.TensorProto.BOOL: "bool",
}
SUPPORTED_DTYPES = ", ".join(ONNX_DTYPES.values())


def import_onnx(model: str | os.PathLike | onnx.ModelProto, *, input_shapes=None,
                constants=None) -> Graph:
    """Import an ONNX model (a path or a ModelProto) as a verified sbc Graph.

    input_shapes overrides input dims: {"ids": [1, "seq"]} (ints, symbol names, or None to
    keep the model's dim). constants freezes graph inputs to values known at compile time:
    {"axes": array} (for models that take shapes or axes as inputs)."""
    proto = load_model(model)
    opset = check_opsets(proto)
    try:
        graph = _Importer(proto, opset, dict(input_shapes or {}), dict(constants or {})).run()
    except SbcError:
        raise
    except Exception as e:  # a case the checks missed: still one line, the cause chained
        raise UnsupportedError(f"cannot import the model: {type(e).__name__}: {_one_line(e)}") from e
    verify(graph)
    return graph


# -- loading -----------------------------------------------------------------------------------

def load_model(model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """The checked ModelProto with its external data loaded and local functions inlined."""
    if isinstance(model, onnx.ModelProto):
        proto, path = model, None
        _require_graph(proto, "the model")
        for t in _external_tensors(proto):
            raise InvalidModelError(
                f"tensor '{t.name}' keeps its data in the external file "
                f"'{_external_location(t)}'; pass the model's path so sbc can find that file")
        _check(proto, None)
    elif isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        proto = _read(path)
        _require_graph(proto, path)
        _require_external_files(proto, path)
        _check(proto, path)
        _load_external_data(proto, path)
    else:
        raise TypeError(f"import_onnx takes a path or an onnx.ModelProto, not {type(model).__name__}")
    if proto.functions:
        try:
            proto = onnx.inliner.inline_local_functions(proto)
        except Exception as e:
            raise InvalidModelError(f"{path or 'the model'}: cannot inline its local functions "
                                    f"({_one_line(e)})") from e
    return proto


def _read(path: str) -> onnx.ModelProto:
    """Parse the file, telling the usual wrong files (empty, zip, text, truncated) apart."""
    if os.path.isdir(path):
        raise InvalidModelError(f"{path}: is a directory, not an ONNX file")
    if not os.path.isfile(path):
        raise InvalidModelError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        raise InvalidModelError(f"{path}: cannot read it ({e.strerror})") from e
    if not head:
        raise InvalidModelError(f"{path}: the file is empty, not an ONNX model")
    if head.startswith(b"PK\x03\x04"):
        raise InvalidModelError(f"{path}: is a zip archive, not an ONNX model (a PyTorch checkpoint "
                                f"or an .sbc artifact?)")
    if _looks_like_text(head):
        raise InvalidModelError(f"{path}: is a text file, not an ONNX model (a binary protobuf)")
    try:
        return onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise InvalidModelError(f"{path}: not an ONNX model, or a truncated one (protobuf: "
                                f"{_one_line(e)})") from e


def _looks_like_text(head: bytes) -> bool:
    """A serialized ModelProto starts with a field tag byte, never printable text."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def _require_graph(proto: onnx.ModelProto, where: str) -> None:
    # random bytes sometimes parse as a ModelProto of unknown fields: that has no graph
    if not proto.HasField("graph"):
        raise InvalidModelError(f"{where}: holds no ONNX graph (is it an ONNX model?)")
    if not proto.graph.output:
        raise InvalidModelError(f"{where}: the ONNX graph has no outputs")


def _check(proto: onnx.ModelProto, path: str | None) -> None:
    """onnx.checker; by path where external data exists, so the checker can find it."""
    try:
        onnx.checker.check_model(path if path and _external_tensors(proto) else proto)
    except Exception as e:
        raise InvalidModelError(f"{path or 'the model'}: the ONNX checker rejected it: "
                                f"{_one_line(e)}") from e


def _external_tensors(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    from onnx.external_data_helper import uses_external_data
    tensors = list(proto.graph.initializer)
    for node in _all_nodes(proto):
        for a in node.attribute:
            tensors += ([a.t] if a.HasField("t") else []) + list(a.tensors)
    return [t for t in tensors if uses_external_data(t)]


def _all_nodes(proto: onnx.ModelProto):
    """Nodes of the graph, its subgraphs and the model-local functions."""
    pending = [list(proto.graph.node)] + [list(f.node) for f in proto.functions]
    while pending:
        for node in pending.pop():
            yield node
            for a in node.attribute:
                pending += [list(g.node) for g in ([a.g] if a.HasField("g") else []) + list(a.graphs)]


def _external_location(t: onnx.TensorProto) -> str:
    return {e.key: e.value for e in t.external_data}.get("location", "?")


def _require_external_files(proto: onnx.ModelProto, path: str) -> None:
    base = os.path.dirname(os.path.abspath(path))
    for t in _external_tensors(proto):
        location = _external_location(t)
        if not os.path.isfile(os.path.join(base, location)):
            raise InvalidModelError(f"{path}: tensor '{t.name}' keeps its data in '{location}', "
                                    f"which is missing next to the model")


def _load_external_data(proto: onnx.ModelProto, path: str) -> None:
    base = os.path.dirname(os.path.abspath(path))
    if _external_tensors(proto):
        try:
            onnx.external_data_helper.load_external_data_for_model(proto, base)
        except Exception as e:
            raise InvalidModelError(f"{path}: cannot read its external data ({_one_line(e)})") from e


def check_opsets(proto: onnx.ModelProto) -> int:
    """The default-domain opset; raise UnsupportedError for other opsets or domains."""
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    version = opsets.get("ai.onnx")
    if version is None:
        raise UnsupportedError(f"the model imports no default-domain ONNX opset; sbc supports "
                               f"opsets {MIN_OPSET}-{MAX_OPSET}")
    if not MIN_OPSET <= version <= MAX_OPSET:
        raise UnsupportedError(f"ONNX opset {version} is not supported; sbc supports "
                               f"default-domain opsets {MIN_OPSET}-{MAX_OPSET}")
    for index, node in enumerate(proto.graph.node):
        if node.domain not in ("", "ai.onnx"):
            name = node.name or f"{node.op_type}_{index}"
            raise UnsupportedError(
                f"unsupported op '{node.op_type}' of domain '{node.domain}' at node '{name}'; "
                f"sbc supports only the default ONNX domain (opsets {MIN_OPSET}-{MAX_OPSET})")
    return version


def supported_ops() -> list[str]:
    """The ONNX ops sbc declares (sbc-internal ops like MatMulPacked left out), sorted."""
    return [name for name in all_ops() if onnx.defs.has(name)]


def _one_line(e: Exception) -> str:
    text = " ".join((str(e).strip() or type(e).__name__).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _sym_name(text: str) -> str:
    """A dim_param as a symbol name: an identifier of letters, digits and '_'."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", text.strip()) or "dim"
    if name[0].isdigit():
        name = f"d_{name}"
    return name + "_" if keyword.iskeyword(name) or name in ("None", "True", "False") else name


def _dtype_name(code: int) -> str:
    try:
        return onnx.TensorProto.DataType.Name(code)
    except ValueError:
        return f"dtype {code}"


# -- the importer ------------------------------------------------------------------------------

class _Importer:
    nested = False  # importing a Scan body (see _BodyImporter)

    def __init__(self, proto: onnx.ModelProto, opset: int, input_shapes: dict, constants: dict):
        self.proto = proto
        self.opset = opset
        self.input_shapes = input_shapes
        self.constants = constants
        self.graph = Graph(_sym_name(proto.graph.name or "main"))
        self.env: dict[str, Value | None] = {"": None}  # ONNX value name -> sbc value

    def run(self) -> Graph:
        g = self.proto.graph
        if g.sparse_initializer:
            raise UnsupportedError(f"sparse initializer '{g.sparse_initializer[0].values.name}': "
                                   f"sparse tensors are not supported")
        self._check_options()
        initializers = {t.name for t in g.initializer}
        for t in g.initializer:
            self.env[t.name] = self.graph.add_param(t.name, self._tensor(t, f"initializer '{t.name}'"))
        for vi in g.input:
            if vi.name in self.constants:
                self.env[vi.name] = self._frozen_input(vi, np.asarray(self.constants[vi.name]))
            elif vi.name not in initializers:  # (IR<4 models list initializers as inputs too)
                self.env[vi.name] = self.graph.add_input(vi.name, self._input_type(vi))
        for index, node in enumerate(g.node):
            self._node(node, node.name or f"{node.op_type}_{index}")
        self._outputs(g.output)
        return self.graph

    def _check_options(self) -> None:
        """input_shapes and constants may only name real (non-initializer) graph inputs."""
        initializers = {t.name for t in self.proto.graph.initializer}
        names = [vi.name for vi in self.proto.graph.input if vi.name not in initializers]
        for option, given in (("input_shapes", self.input_shapes), ("constants", self.constants)):
            unknown = sorted(set(given) - set(names))
            if unknown:
                raise InputError(f"{option} names {unknown}, which are not inputs of the model; "
                                 f"its inputs are {names}")

    # -- values ---------------------------------------------------------------------------
    def _tensor(self, t: onnx.TensorProto, what: str) -> np.ndarray:
        if t.data_type not in ONNX_DTYPES:
            raise UnsupportedError(f"{what} has dtype {_dtype_name(t.data_type)}; sbc supports "
                                   f"{SUPPORTED_DTYPES}")
        try:
            return numpy_helper.to_array(t)
        except Exception as e:  # e.g. raw data shorter than the shape says
            raise InvalidModelError(f"{what}: cannot read its data ({_one_line(e)})") from e

    def _frozen_input(self, vi: onnx.ValueInfoProto, value: np.ndarray) -> Value:
        """A graph input frozen by `constants`, in the input's declared dtype."""
        declared = ONNX_DTYPES.get(vi.type.tensor_type.elem_type)
        if declared is not None:  # (a Python list of ints would otherwise stay i64 for an i32 input)
            value = value.astype(numpy_dtype(declared))
        if value.size <= CONSTANT_LIMIT:
            return self.constant(value, vi.name)
        return self.graph.add_param(vi.name, value)

    def _input_type(self, vi: onnx.ValueInfoProto) -> TensorType:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or tt.elem_type not in ONNX_DTYPES:
            kind = (_dtype_name(tt.elem_type) if vi.type.HasField("tensor_type")
                    else vi.type.WhichOneof("value") or "unknown")
            raise UnsupportedError(f"input '{vi.name}' has type {kind}; sbc supports tensors of "
                                   f"{SUPPORTED_DTYPES}")
        override = self.input_shapes.get(vi.name)
        if not tt.HasField("shape"):
            if override is None:
                raise UnsupportedError(f"input '{vi.name}' has no shape (unknown rank); give one "
                                       f"with input_shapes={{'{vi.name}': [...]}}")
            dims = [None] * len(override)
        else:
            dims = [self._dim(vi.name, i, d) for i, d in enumerate(tt.shape.dim)]
        if override is not None:
            dims = self._override(vi.name, dims, override)
        return TensorType(ONNX_DTYPES[tt.elem_type], tuple(dims))

    @staticmethod
    def _dim(input_name: str, i: int, d) -> int | Sym:
        """dim_value -> int; dim_param -> its symbol; unknown (or negative) -> a fresh symbol."""
        if d.HasField("dim_value") and d.dim_value >= 0:
            return d.dim_value
        return Sym.var(_sym_name(d.dim_param or f"{input_name}_dim{i}"))

    @staticmethod
    def _override(name: str, dims: list, override) -> list:
        if len(override) != len(dims):
            raise InputError(f"input_shapes gives input '{name}' rank {len(override)}, the model "
                             f"declares rank {len(dims)}")
        out = []
        for i, (model_dim, d) in enumerate(zip(dims, override)):
            if d is None and model_dim is None:
                raise InputError(f"input_shapes: dim {i} of input '{name}' must be given")
            out.append(model_dim if d is None else
                       Sym.var(_sym_name(d)) if isinstance(d, str) else int(d))
            if isinstance(out[-1], int) and out[-1] < 0:
                raise InputError(f"input_shapes: dim {i} of input '{name}' is negative ({d})")
        return out

    def _outputs(self, outputs) -> None:
        values, names = [], []
        for o in outputs:
            if o.name in names:
                raise InvalidModelError(f"graph output '{o.name}' is listed twice")
            v = self.env.get(o.name)
            if v is None:
                raise InvalidModelError(f"graph output '{o.name}' is not produced by any node")
            if v.producer is None:  # an input or initializer: the output needs its own value
                v = self.graph.add1("Identity", v, name=f"output:{o.name}")
            values.append(v)
            names.append(o.name)
        self.graph.set_outputs(values, names)

    def constant(self, array: np.ndarray, hint: str) -> Value:
        return self.graph.add("Constant", [], {"value": array}, name=hint).outputs[0]

    # -- nodes ----------------------------------------------------------------------------
    def _node(self, node: onnx.NodeProto, name: str) -> None:
        if node.op_type == "Constant":
            return self._constant(node, name)
        if node.op_type == "Scan":
            return self._scan(node, name)
        if node.op_type == "Loop":
            return self._loop(node, name)
        opdef = get_op(node.op_type)
        if opdef is None or opdef.extra.get("decompose"):  # imported as its ONNX function body
            return self._expand(node, name)
        inputs = [self._use(i, name) for i in node.input]
        attrs = {a.name: self._attr(a, node, name, opdef) for a in node.attribute}
        inputs, attrs = upgrade(node.op_type, inputs, attrs, len(node.output), self.constant)
        attrs = self._known_attrs(node.op_type, attrs, name, opdef)
        self._add_node(node, name, inputs, attrs)

    def _add_node(self, node: onnx.NodeProto, name: str, inputs: list, attrs: dict) -> None:
        """Add the sbc node for `node` and bind the ONNX output names to its outputs."""
        opdef = get_op(node.op_type)
        # hints for every output the declaration may infer, not only those the node lists
        hints = [o or f"{name}_unused{i}" for i, o in enumerate(node.output)]
        hints += [f"{name}_unused{i}" for i in range(len(hints), len(hints) + len(opdef.outputs))]
        try:
            ir = self.graph.add(node.op_type, inputs, attrs, name=name, outputs=hints)
        except OpError as e:  # infer_node's messages name the node already
            if f"'{name}'" in str(e):
                raise
            raise OpError(f"node '{name}' ({node.op_type}): {e}") from e
        except SbcError:
            raise
        except Exception as e:  # a bug in an op's value inference: still one readable line
            raise UnsupportedError(f"node '{name}' ({node.op_type}): cannot import it: "
                                   f"{type(e).__name__}: {_one_line(e)}") from e
        for i, out_name in enumerate(node.output):
            if not out_name:
                continue
            if i >= len(ir.outputs):
                raise UnsupportedError(f"node '{name}' ({node.op_type}): sbc produces only "
                                       f"{len(ir.outputs)} output(s), the model uses output {i}")
            self.env[out_name] = ir.outputs[i]

    def _use(self, onnx_name: str, node_name: str) -> Value | None:
        if onnx_name not in self.env:  # the checker enforces order; keep the message anyway
            raise InvalidModelError(f"node '{node_name}' uses '{onnx_name}' before it is defined "
                                    f"(nodes must be in topological order)")
        return self.env[onnx_name]

    def _known_attrs(self, op_type: str, attrs: dict, name: str, opdef: OpDef) -> dict:
        """Drop attributes sbc does not declare when they hold ONNX's default (e.g. Cast's
        round_mode='up'); any other undeclared attribute is unsupported."""
        schema = self._schema(op_type)
        out = {}
        for key, value in attrs.items():
            if key in opdef.attrs:
                out[key] = value
            elif not _is_default(schema, key, value):
                raise UnsupportedError(
                    f"unsupported attribute '{key}' of op '{op_type}' at node '{name}' (opset "
                    f"{self.opset}); sbc supports {op_type} attributes: "
                    f"{', '.join(sorted(opdef.attrs)) or 'none'}")
        return out

    def _schema(self, op_type: str):
        try:
            return onnx.defs.get_schema(op_type, self.opset, "")
        except onnx.defs.SchemaError:
            return None

    def _constant(self, node: onnx.NodeProto, name: str) -> None:
        attr = node.attribute[0] if len(node.attribute) == 1 else None
        if attr is None:
            raise InvalidModelError(f"Constant node '{name}' must have exactly one value attribute")
        if attr.name == "value":
            value = self._tensor(attr.t, f"Constant node '{name}'")
        elif attr.name in ("value_float", "value_floats"):
            value = np.array(onnx.helper.get_attribute_value(attr), dtype=np.float32)
        elif attr.name in ("value_int", "value_ints"):
            value = np.array(onnx.helper.get_attribute_value(attr), dtype=np.int64)
        else:
            raise UnsupportedError(f"Constant node '{name}': attribute '{attr.name}' is not "
                                   f"supported (value, value_float(s) and value_int(s) are)")
        if value.size > CONSTANT_LIMIT and not self.nested:  # (nested graphs hold no params)
            out = self.graph.add_param(node.output[0], value)
        else:
            out = self.graph.add("Constant", [], {"value": value}, name=name,
                                 outputs=[node.output[0]]).outputs[0]
        self.env[node.output[0]] = out

    def _attr(self, a: onnx.AttributeProto, node: onnx.NodeProto, name: str, opdef: OpDef):
        """An ONNX attribute as sbc holds it: scalars, lists, str, numpy tensors, dtype names."""
        if a.type == onnx.AttributeProto.TENSOR:
            return self._tensor(a.t, f"attribute '{a.name}' of node '{name}'")
        if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            raise UnsupportedError(f"unsupported op '{node.op_type}' with a subgraph at node "
                                   f"'{name}'; {CONTROL_FLOW}")
        if a.type in (onnx.AttributeProto.TENSORS, onnx.AttributeProto.SPARSE_TENSOR,
                      onnx.AttributeProto.SPARSE_TENSORS, onnx.AttributeProto.TYPE_PROTO,
                      onnx.AttributeProto.TYPE_PROTOS):
            raise UnsupportedError(f"node '{name}' ({node.op_type}): attribute '{a.name}' of kind "
                                   f"{onnx.AttributeProto.AttributeType.Name(a.type)} is not supported")
        value = onnx.helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode("utf-8", "replace") for v in value]
        spec = opdef.attrs.get(a.name)
        if spec is not None and spec.kind == "dtype":  # e.g. Cast's `to`: an sbc dtype name
            if value not in ONNX_DTYPES:
                raise UnsupportedError(f"node '{name}' ({node.op_type}): {a.name}="
                                       f"{_dtype_name(value)} is not supported; sbc supports "
                                       f"{SUPPORTED_DTYPES}")
            value = ONNX_DTYPES[value]
        return value

    # -- Scan -----------------------------------------------------------------------------
    def _scan(self, node: onnx.NodeProto, name: str) -> None:
        """Scan: the body becomes a closed sbc graph; the values it reads from enclosing
        scopes are appended to the node's inputs (and the body's) as captured values."""
        opdef = get_op("Scan")
        bodies = [a for a in node.attribute if a.name == "body"]
        if len(bodies) != 1 or bodies[0].type != onnx.AttributeProto.GRAPH:
            raise InvalidModelError(f"Scan node '{name}' must have one graph attribute 'body'")
        attrs = {a.name: self._attr(a, node, name, opdef)
                 for a in node.attribute if a.name != "body"}
        attrs = self._known_attrs("Scan", attrs, name, opdef)
        inputs = [self._use(i, name) for i in node.input]
        m = attrs.get("num_scan_inputs", 0)
        if None in inputs or not 1 <= m <= len(inputs):
            raise InvalidModelError(f"Scan node '{name}': num_scan_inputs={m} must be between 1 "
                                    f"and its {len(inputs)} inputs, and no input may be omitted")
        types = self._body_input_types(name, inputs, m, attrs.get("scan_input_axes"))
        sub = _BodyImporter(self, bodies[0].g, name)
        try:
            body = sub.run(types)
        except SbcError as e:  # the same kind of error, saying where it happened
            raise type(e)(f"Scan node '{name}', in its body: {e}") from e
        if len(node.output) != len(body.outputs):
            raise InvalidModelError(f"Scan node '{name}' has {len(node.output)} outputs, its "
                                    f"body returns {len(body.outputs)}")
        attrs.update(body=body, num_captured=len(sub.captured))
        self._add_node(node, name, inputs + sub.captured, attrs)

    @staticmethod
    def _body_input_types(name: str, inputs: list[Value], m: int, axes) -> list[TensorType]:
        """States keep their types; a scan input is sliced along its scan axis."""
        n = len(inputs) - m
        axes = list(axes) if axes else [0] * m
        if len(axes) != m:
            raise InvalidModelError(f"Scan node '{name}': scan_input_axes has {len(axes)} "
                                    f"entries for {m} scan inputs")
        types = [v.type for v in inputs[:n]]
        for v, axis in zip(inputs[n:], axes):
            if not -v.type.rank <= axis < v.type.rank:
                raise InvalidModelError(f"Scan node '{name}': scan axis {axis} is out of range "
                                        f"for scan input '{v.name}' of type {v.type}")
            axis %= v.type.rank
            types.append(TensorType(v.dtype, v.shape[:axis] + v.shape[axis + 1:]))
        return types

    # -- Loop -----------------------------------------------------------------------------
    def _loop(self, node: onnx.NodeProto, name: str) -> None:
        """Loop: like Scan, the body becomes a closed sbc graph and the values it reads from
        enclosing scopes are appended as captured values. The trip count and the condition
        may be omitted (None); the loop-carried values may not."""
        bodies = [a for a in node.attribute if a.name == "body"]
        if len(bodies) != 1 or bodies[0].type != onnx.AttributeProto.GRAPH:
            raise InvalidModelError(f"Loop node '{name}' must have one graph attribute 'body'")
        inputs = [self._use(i, name) for i in node.input]
        inputs += [None] * (2 - len(inputs))  # (the checker allows leaving out a trailing cond)
        if None in inputs[2:]:
            raise InvalidModelError(f"Loop node '{name}': a loop-carried value cannot be omitted")
        types = [ITER_NUM, CONDITION] + [v.type for v in inputs[2:]]
        sub = _BodyImporter(self, bodies[0].g, name,
                            given="the iteration number, the condition and loop-carried values")
        try:
            body = sub.run(types)
        except SbcError as e:  # the same kind of error, saying where it happened
            raise type(e)(f"Loop node '{name}', in its body: {e}") from e
        if len(node.output) != len(body.outputs) - 1:
            raise InvalidModelError(f"Loop node '{name}' has {len(node.output)} outputs, its "
                                    f"body returns {len(body.outputs) - 1} besides the condition")
        self._add_node(node, name, inputs + sub.captured,
                       {"body": body, "num_captured": len(sub.captured)})

    # -- ops defined by an ONNX function body ---------------------------------------------
    def _expand(self, node: onnx.NodeProto, name: str) -> None:
        """An op without an sbc declaration but with an ONNX function body (e.g. Attention,
        RotaryEmbedding) is imported as that official decomposition."""
        unsupported = (f"unsupported op '{node.op_type}' at node '{name}' (opset {self.opset}); "
                       f"sbc supports: {', '.join(supported_ops())}")
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in node.attribute):
            raise UnsupportedError(f"{unsupported}; {CONTROL_FLOW}")
        # (_use, not env.get: inside a Scan body an input may come from an enclosing scope)
        body = function_body(node, name, self.opset, [self._use(i, name) for i in node.input])
        if body is None:
            raise UnsupportedError(unsupported)
        nodes, opset = body
        outer, self.opset = self.opset, opset
        try:
            for k, inner in enumerate(nodes):
                self._node(inner, inner.name or f"{name}/{inner.op_type}_{k}")
        except UnsupportedError as e:  # say which model node needed the missing piece
            raise UnsupportedError(f"op '{node.op_type}' at node '{name}' (opset {outer}) is "
                                   f"imported by its ONNX function body, which failed: {e}") from e
        finally:
            self.opset = outer


class _BodyImporter(_Importer):
    """Imports a Scan or Loop body as a closed sbc graph.

    A name the body does not define is looked up in the enclosing scopes. A small value known
    at compile time (a constant, a shape whose symbols the body's inputs bind) is copied into
    the body as a Constant, so the body's own inference still knows it (Unsqueeze axes,
    Reshape shapes, a scale); any other value becomes a captured input: appended to the
    body's inputs and, by the caller, to the Scan node's. Body initializers and large
    constants stay Constant nodes: a nested graph holds no params."""
    nested = True

    def __init__(self, parent: _Importer, proto: onnx.GraphProto, scan_name: str,
                 given: str = "states and scan inputs"):
        self.parent = parent
        self.given = given  # what the node passes to the body, for the input-count error
        self.body = proto
        self.scan_name = scan_name
        self.proto, self.opset = parent.proto, parent.opset
        self.input_shapes, self.constants = {}, {}
        self.graph = Graph(_sym_name(proto.name or "body"))
        self.env = {"": None}
        self.captured: list[Value] = []  # enclosing-scope values, in captured-input order
        self.bound: set[str] = set()  # symbols the body's declared inputs bind at run time

    def run(self, types: list[TensorType]) -> Graph:
        g = self.body
        if len(g.input) != len(types):
            raise InvalidModelError(f"the body takes {len(g.input)} inputs, but the node gives "
                                    f"{len(types)} ({self.given})")
        if g.sparse_initializer:
            raise UnsupportedError("sparse initializers are not supported")
        for vi, t in zip(g.input, types):
            self._check_declared(vi, t)
            self.env[vi.name] = self.graph.add_input(vi.name, t)
            self.bound |= t.symbols
        for t in g.initializer:
            self.env[t.name] = self.constant(self._tensor(t, f"initializer '{t.name}'"), t.name)
        for index, node in enumerate(g.node):
            self._node(node, node.name or f"{self.scan_name}/body/{node.op_type}_{index}")
        self._outputs(g.output)
        return self.graph

    @staticmethod
    def _check_declared(vi: onnx.ValueInfoProto, t: TensorType) -> None:
        """A body input may leave its type out (it follows from the node's inputs); one it
        declares must agree in dtype and rank."""
        tt = vi.type.tensor_type
        if tt.elem_type and ONNX_DTYPES.get(tt.elem_type) != t.dtype:
            raise InvalidModelError(f"body input '{vi.name}' is declared "
                                    f"{_dtype_name(tt.elem_type)}, the node gives {t}")
        if tt.HasField("shape") and len(tt.shape.dim) != t.rank:
            raise InvalidModelError(f"body input '{vi.name}' is declared rank "
                                    f"{len(tt.shape.dim)}, the node gives {t}")

    def _node(self, node: onnx.NodeProto, name: str) -> None:
        if node.domain not in ("", "ai.onnx"):  # (check_opsets sees only the main graph)
            raise UnsupportedError(f"unsupported op '{node.op_type}' of domain "
                                   f"'{node.domain}' at node '{name}'; sbc supports only the "
                                   f"default ONNX domain")
        super()._node(node, name)

    def _use(self, onnx_name: str, node_name: str) -> Value | None:
        if onnx_name not in self.env:  # from an enclosing scope (which raises if undefined)
            outer = self.parent._use(onnx_name, node_name)
            self.env[onnx_name] = None if outer is None else self._capture(outer, onnx_name)
        return self.env[onnx_name]

    def _capture(self, outer: Value, name: str) -> Value:
        if self._inlinable(outer.data):
            return self.constant(outer.data, name)
        self.captured.append(outer)
        return self.graph.add_input(name, outer.type)

    def _inlinable(self, data: np.ndarray | None) -> bool:
        if data is None or data.size > CONSTANT_LIMIT:
            return False
        symbols = {s for d in data.reshape(-1) if isinstance(d, Sym) for s in d.symbols}
        return symbols <= self.bound  # the body's interpreter must be able to bind them

    def _outputs(self, outputs) -> None:
        for o in outputs:  # a body may return a value of an enclosing scope as it is
            if o.name and o.name not in self.env:
                self._use(o.name, f"{self.scan_name} (body output)")
        super()._outputs(outputs)


def _is_default(schema, key: str, value) -> bool:
    if schema is None or key not in schema.attributes:
        return False
    default = schema.attributes[key].default_value
    if not default.name:
        return False
    expected = onnx.helper.get_attribute_value(default)
    return (expected.decode() if isinstance(expected, bytes) else expected) == value


def _type_proto(v: Value | None) -> onnx.TypeProto:
    if v is None:
        return onnx.TypeProto()
    elem = {name: code for code, name in ONNX_DTYPES.items()}[v.dtype]
    dims = [d if isinstance(d, int) else str(d) for d in v.shape]
    return onnx.helper.make_tensor_type_proto(elem, dims)


def function_body(node: onnx.NodeProto, name: str, opset: int,
                  inputs: list) -> tuple[list[onnx.NodeProto], int] | None:
    """The nodes of the op's ONNX function body for this opset, renamed into the caller's
    namespace (prefix `name/`), and the body's opset; None when the op has no function."""
    from onnx.backend.test.case.node import function_expand_helper  # onnx's own expander
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain or "")
    except onnx.defs.SchemaError:
        return None
    plain = [v for v in schema.function_opset_versions if v <= opset]
    dependent = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
    if plain:
        serialized = schema.get_function_with_opset_version(max(plain))
    elif dependent:
        serialized = schema.get_context_dependent_function_with_opset_version(
            max(dependent), node.SerializeToString(),
            [_type_proto(v).SerializeToString() for v in inputs])
    else:
        return None
    function = onnx.FunctionProto()
    function.ParseFromString(serialized)
    node = copy.deepcopy(node)
    given = {a.name for a in node.attribute}
    for attr_name, attr in schema.attributes.items():  # the body may refer to defaults
        if attr_name not in given and attr.default_value.name:
            node.attribute.append(attr.default_value)
    body_opset = {o.domain or "": o.version for o in function.opset_import}.get("", opset)
    return function_expand_helper(node, function, f"{name}/"), body_opset
