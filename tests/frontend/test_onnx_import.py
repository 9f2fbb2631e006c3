"""ONNX -> sbc IR: symbolic dims, opset upgrades, constants, initializers, agreement with
onnxruntime, and one clear sbc error per kind of bad model."""

import os
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sbc.errors import InputError, InvalidModelError, SbcError, UnsupportedError
from sbc.frontend import import_onnx
from sbc.frontend.onnx_import import MAX_OPSET, MIN_OPSET
from sbc.frontend.opset_upgrade import upgrade
from sbc.ir import Graph, TensorType, get_op
from sbc.ir.interpreter import run
from sbc.ir.printer import print_graph
from tests.conftest import make_mlp_model


def model(nodes, inputs, outputs, initializers=(), opset=18, **kwargs):
    m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(initializers)),
                          opset_imports=[helper.make_opsetid("", opset)], **kwargs)
    m.ir_version = 10
    return m


def vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def ints(name, values):
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)


def floats(name, array):
    return numpy_helper.from_array(np.asarray(array, np.float32), name)


def rand(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def assert_matches_onnxruntime(proto, feeds, rtol=1e-5, atol=1e-6):
    graph = import_onnx(proto)
    want = ort.InferenceSession(proto.SerializeToString()).run(None, feeds)
    got = run(graph, feeds)
    for o, w in zip(proto.graph.output, want):
        np.testing.assert_allclose(got[o.name], w, rtol=rtol, atol=atol, err_msg=o.name)
    return graph


def raises_one_line(cls, proto_or_path, *fragments, **kwargs):
    """import_onnx raises `cls` whose message is one line containing every fragment."""
    with pytest.raises(cls) as info:
        import_onnx(proto_or_path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# -- symbolic dims -----------------------------------------------------------------------------

def gather_chain():
    """x [batch, seq, 8] -> Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), ..., [2, 4]))."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "i0"], ["b"], axis=0, name="batch"),
        helper.make_node("Gather", ["s", "i1"], ["n"], axis=0, name="seq"),
        helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"], name="unsq_b"),
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"], name="unsq_n"),
        helper.make_node("Concat", ["b1", "n1", "tail"], ["target"], axis=0, name="concat"),
        helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape"),
    ]
    inits = [helper.make_tensor("i0", TensorProto.INT64, [], [0]),
             helper.make_tensor("i1", TensorProto.INT64, [], [1]), ints("ax0", [0]),
             ints("tail", [2, 4])]
    return model(nodes, [vi("x", ["batch", "seq", 8])], [vi("y", ["batch", "seq", 2, 4])], inits)


def reshape_chain():
    """x [batch, seq, 8] -> Reshape(Concat(Shape(x)[0:2], [2, 4])) -> Transpose -> Softmax."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Slice", ["s", "zero", "two"], ["lead"], name="lead"),
        helper.make_node("Concat", ["lead", "tail"], ["target"], axis=0, name="concat"),
        helper.make_node("Reshape", ["x", "target"], ["r"], name="reshape"),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3], name="transpose"),
        helper.make_node("Softmax", ["t"], ["y"], axis=-1, name="softmax"),
    ]
    return model(nodes, [vi("x", ["batch", "seq", 8])], [vi("y", ["batch", 2, "seq", 4])],
                 [ints("zero", [0]), ints("two", [2]), ints("tail", [2, 4])])


def test_symbolic_dims_survive_shape_gather_concat_reshape():
    g = import_onnx(gather_chain())
    assert [(v.name, str(v.type)) for v in g.inputs] == [("x", "f32[batch, seq, 8]")]
    concat = next(n for n in g.nodes if n.op == "Concat")
    assert [str(d) for d in concat.outputs[0].data] == ["batch", "seq", "2", "4"]
    assert str(g.outputs[0].type) == "f32[batch, seq, 2, 4]"
    assert g.output_names == ["y"]


def test_symbolic_dims_survive_slice_and_transpose():
    g = import_onnx(reshape_chain())
    reshape = next(n for n in g.nodes if n.op == "Reshape")
    assert str(reshape.outputs[0].type) == "f32[batch, seq, 2, 4]"
    assert str(g.outputs[0].type) == "f32[batch, 2, seq, 4]"
    assert 'loc("reshape")' in print_graph(g)  # ONNX node names survive for error messages


def test_dim_names_are_sanitised_and_unknown_dims_get_fresh_symbols():
    x = helper.make_tensor_value_info("input.ids", TensorProto.INT64, ["batch size", None])
    g = import_onnx(model([helper.make_node("Identity", ["input.ids"], ["y"])], [x],
                          [vi("y", ["batch size", None], TensorProto.INT64)]))
    assert str(g.inputs[0].type) == "i64[batch_size, input_ids_dim1]"


def test_input_shapes_override():
    g = import_onnx(gather_chain(), input_shapes={"x": [1, "tokens", None]})
    assert str(g.inputs[0].type) == "f32[1, tokens, 8]"
    assert str(g.outputs[0].type) == "f32[1, tokens, 2, 4]"
    raises_one_line(InputError, gather_chain(), "'nope'", "['x']", input_shapes={"nope": [1]})
    raises_one_line(InputError, gather_chain(), "rank 2", input_shapes={"x": [1, 2]})


# -- agreement with onnxruntime ------------------------------------------------------------------

def layer_norm_model():
    nodes = [helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y"], axis=-1,
                              epsilon=1e-5, name="ln")]
    return model(nodes, [vi("x", ["batch", 6])], [vi("y", ["batch", 6])],
                 [floats("scale", rand(6, seed=1)), floats("bias", rand(6, seed=2))], opset=17)


def softmax_model():
    nodes = [helper.make_node("Softmax", ["x"], ["y"], axis=1, name="softmax")]
    return model(nodes, [vi("x", [2, "n", 3])], [vi("y", [2, "n", 3])], opset=21)


@pytest.mark.parametrize("proto, x", [
    (make_mlp_model(), rand(3, 8)),
    (softmax_model(), rand(2, 5, 3)),
    (reshape_chain(), rand(2, 5, 8)),
    (gather_chain(), rand(3, 4, 8)),
    (layer_norm_model(), rand(4, 6)),
], ids=["matmul-add-relu", "softmax", "reshape-transpose", "gather-reshape", "layernorm"])
def test_interpreter_matches_onnxruntime(proto, x):
    assert_matches_onnxruntime(proto, {"x": x})


# -- opset upgrades ------------------------------------------------------------------------------

def reduce_mean_model(opset):
    if opset < 18:
        node = helper.make_node("ReduceMean", ["x"], ["y"], axes=[1], keepdims=0, name="mean")
        inits = []
    else:
        node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0, name="mean")
        inits = [ints("axes", [1])]
    return model([node], [vi("x", [3, 4])], [vi("y", [3])], inits, opset=opset)


def structure(g: Graph):
    """Ops, their attributes and where known input values come from, without value names."""
    return [(n.op, sorted((k, str(v)) for k, v in n.attrs.items() if k != "value"),
             [None if v is None else (str(v.type), None if v.data is None else v.data.tolist())
              for v in n.inputs]) for n in g.nodes if n.op != "Constant"]


@pytest.mark.parametrize("old, new", [(17, 18), (13, 27)])
def test_reduce_axes_attribute_imports_like_the_input_form(old, new):
    g_old, g_new = import_onnx(reduce_mean_model(old)), import_onnx(reduce_mean_model(new))
    assert [n.op for n in g_old.nodes] == ["Constant", "ReduceMean"]  # axes moved to an input
    assert structure(g_old) == structure(g_new)
    x = rand(3, 4)
    np.testing.assert_array_equal(run(g_old, {"x": x})["y"], run(g_new, {"x": x})["y"])
    assert_matches_onnxruntime(reduce_mean_model(old), {"x": x})


def test_split_without_num_outputs_imports_like_opset_18():
    def split_model(opset):
        attrs = {"num_outputs": 2} if opset >= 18 else {}
        node = helper.make_node("Split", ["x"], ["a", "b"], axis=1, name="split", **attrs)
        return model([node], [vi("x", [2, 6])], [vi("a", [2, 3]), vi("b", [2, 3])], opset=opset)
    assert structure(import_onnx(split_model(13))) == structure(import_onnx(split_model(18)))
    assert_matches_onnxruntime(split_model(13), {"x": rand(2, 6)})


def test_pre_opset_13_attribute_forms_move_to_inputs():
    """Squeeze/Unsqueeze axes and Split sizes were attributes before opset 13."""
    g = Graph()
    x = g.add_input("x", TensorType("f32", (1, 4, 1)))
    const = lambda array, hint: g.add("Constant", [], {"value": array}, name=hint).outputs[0]  # noqa: E731
    inputs, attrs = upgrade("Squeeze", [x], {"axes": [0, 2]}, 1, const)
    assert attrs == {} and inputs[1].data.tolist() == [0, 2]
    inputs, attrs = upgrade("Split", [x], {"axis": 1, "split": [1, 3]}, 2, const)
    assert attrs == {"axis": 1} and inputs[1].data.tolist() == [1, 3]
    inputs, attrs = upgrade("Clip", [x], {"max": 6.0}, 1, const)
    assert inputs[1] is None and inputs[2].data.dtype == np.float32 and inputs[2].data == 6
    inputs, attrs = upgrade("ReduceSum", [x, None], {"keepdims": 0}, 1, const)
    assert inputs == [x] and attrs == {"keepdims": 0}  # trailing omitted inputs dropped


def test_layer_norm_with_statistics_outputs():
    nodes = [helper.make_node("LayerNormalization", ["x", "scale"], ["y", "", "inv"], axis=1,
                              name="ln")]
    proto = model(nodes, [vi("x", [2, 6])], [vi("y", [2, 6]), vi("inv", [2, 1])],
                  [floats("scale", rand(6))], opset=17)
    g = assert_matches_onnxruntime(proto, {"x": rand(2, 6, seed=3)}, rtol=1e-4, atol=1e-5)
    assert g.output_names == ["y", "inv"]


def test_attributes_holding_the_onnx_default_are_dropped(monkeypatch):
    """An ONNX attribute sbc does not declare is harmless where it holds ONNX's default."""
    monkeypatch.delitem(get_op("Cast").attrs, "round_mode", raising=False)
    node = helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT32, round_mode="up", name="c")
    g = import_onnx(model([node], [vi("x", [3])], [vi("y", [3], TensorProto.INT32)], opset=25))
    assert g.nodes[0].attrs["to"] == "i32" and "round_mode" not in g.nodes[0].attrs


# -- constants, initializers, outputs ------------------------------------------------------------

def test_constant_variants():
    big = np.arange(2000, dtype=np.float32)
    nodes = [
        helper.make_node("Constant", [], ["c1"], value_float=2.0, name="c1"),
        helper.make_node("Constant", [], ["c2"], value_floats=[1.0, 2.0], name="c2"),
        helper.make_node("Constant", [], ["c3"], value_int=3, name="c3"),
        helper.make_node("Constant", [], ["c4"], value_ints=[4, 5], name="c4"),
        helper.make_node("Constant", [], ["c5"], value=floats("t", [[1, 1]]), name="c5"),
        helper.make_node("Constant", [], ["c6"], value=numpy_helper.from_array(big, "b"), name="c6"),
        helper.make_node("Mul", ["x", "c1"], ["m"], name="mul"),
        helper.make_node("Add", ["m", "c2"], ["a"], name="add"),
        helper.make_node("Add", ["a", "c5"], ["y"], name="add2"),
        helper.make_node("Add", ["c3", "c4"], ["k"], name="addk"),
    ]
    proto = model(nodes, [vi("x", [2])], [vi("y", [1, 2]), vi("k", [2], TensorProto.INT64),
                                          vi("c6", [2000])])
    g = assert_matches_onnxruntime(proto, {"x": np.array([1, 2], np.float32)})
    consts = {n.outputs[0].name: n.attrs["value"] for n in g.nodes if n.op == "Constant"}
    assert consts["c1"].dtype == np.float32 and consts["c1"].shape == ()
    assert consts["c4"].dtype == np.int64 and consts["c4"].tolist() == [4, 5]
    assert [p.name for p in g.params] == ["c6"]  # over 1024 elements: a param, not a Constant
    assert next(n for n in g.nodes if n.name == "addk").outputs[0].data.tolist() == [7, 8]


def test_string_constant_is_unsupported():
    node = helper.make_node("Constant", [], ["s"], value_string="hi", name="str")
    raises_one_line(UnsupportedError, model([node], [], [vi("s", [], TensorProto.STRING)]),
                    "'str'", "value_string")


def test_initializers_become_named_params():
    g = import_onnx(make_mlp_model())
    assert [(p.name, str(p.type)) for p in g.params] == [("W", "f32[8, 4]"), ("b", "f32[4]")]
    assert [v.name for v in g.inputs] == ["x"]


def test_initializer_listed_as_input_is_a_param():
    """IR<4 models list every initializer among the graph inputs too."""
    proto = make_mlp_model()
    proto.graph.input.append(vi("W", [8, 4]))
    g = import_onnx(proto)
    assert [v.name for v in g.inputs] == ["x"] and "W" in [p.name for p in g.params]


def test_outputs_that_are_inputs_or_initializers():
    nodes = [helper.make_node("Add", ["x", "w"], ["y"], name="add")]
    proto = model(nodes, [vi("x", [2])], [vi("y", [2]), vi("x", [2]), vi("w", [2])],
                  [floats("w", [5, 6])])
    g = assert_matches_onnxruntime(proto, {"x": np.ones(2, np.float32)})
    assert g.output_names == ["y", "x", "w"]
    assert [v.producer.op for v in g.outputs] == ["Add", "Identity", "Identity"]


def test_optional_inputs_given_as_empty_names():
    nodes = [helper.make_node("Clip", ["x", "", "hi"], ["y"], name="clip")]
    proto = model(nodes, [vi("x", [4])], [vi("y", [4])], [floats("hi", 0.5)])
    g = assert_matches_onnxruntime(proto, {"x": rand(4)})
    assert g.nodes[0].inputs[1] is None


def test_constants_option_freezes_inputs():
    nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1, name="sum")]
    m = model(nodes, [vi("x", [2, 3]), vi("axes", [1], TensorProto.INT64)], [vi("y", [2, 1])])
    g = import_onnx(m, constants={"axes": np.array([1])})
    assert [v.name for v in g.inputs] == ["x"]
    np.testing.assert_array_equal(run(g, {"x": np.ones((2, 3), np.float32)})["y"], [[3], [3]])


def test_external_data_next_to_the_file(tmp_path):
    proto = make_mlp_model()
    for i, t in enumerate(proto.graph.initializer):  # only raw_data tensors go external
        proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t), t.name))
    weight = numpy_helper.to_array(proto.graph.initializer[0])
    onnx.save(proto, str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.bin",
              size_threshold=0)
    g = import_onnx(tmp_path / "m.onnx")
    np.testing.assert_array_equal(g.params[0].data, weight)
    unloaded = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    raises_one_line(InvalidModelError, unloaded, "'W'", "m.bin", "path")
    os.remove(tmp_path / "m.bin")
    raises_one_line(InvalidModelError, tmp_path / "m.onnx", "'W'", "m.bin", "missing")


def test_model_local_functions_are_inlined():
    body = [helper.make_node("Mul", ["a", "a"], ["sq"]), helper.make_node("Relu", ["sq"], ["out"])]
    fn = helper.make_function("local", "SquareRelu", ["a"], ["out"], body,
                              [helper.make_opsetid("", 18)])
    node = helper.make_node("SquareRelu", ["x"], ["y"], domain="local", name="sr")
    proto = model([node], [vi("x", [3])], [vi("y", [3])], functions=[fn])
    proto.opset_import.append(helper.make_opsetid("local", 1))
    g = assert_matches_onnxruntime(proto, {"x": rand(3)})
    assert [n.op for n in g.nodes] == ["Mul", "Relu"]


# -- a torch.onnx (dynamo) export ----------------------------------------------------------------

def test_torch_export_keeps_dynamic_dims(tmp_path):
    import torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)
            self.weight = torch.nn.Parameter(torch.linspace(0.5, 1.5, 8))

        def forward(self, x):
            h = self.proj(x)
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight  # RMSNorm
            return torch.softmax(h @ h.transpose(1, 2), dim=-1)  # over the dynamic seq dim

    path = tmp_path / "block.onnx"
    dims = {"x": {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}}
    torch.onnx.export(Block().eval(), (torch.randn(2, 5, 8),), str(path), input_names=["x"],
                      output_names=["y"], dynamic_shapes=dims, dynamo=True)
    proto = onnx.load(str(path))
    proto.ir_version = min(proto.ir_version, 10)  # what onnxruntime 1.31 accepts
    g = assert_matches_onnxruntime(proto, {"x": rand(3, 7, 8, seed=2)})
    assert str(g.inputs[0].type) == "f32[batch, seq, 8]"
    assert str(g.outputs[0].type) == "f32[batch, seq, seq]"


def test_tiny_reference_model_signature(tiny_onnx):
    g = import_onnx(tiny_onnx)
    assert [(v.name, str(v.type)) for v in g.inputs] == [("ids", "i64[batch, seq]")]
    assert [(n, str(v.type)) for n, v in zip(g.output_names, g.outputs)] == \
        [("logits", "f32[batch, seq, 256]")]
    assert g.op_counts()["MatMul"] > 0 and all(p.data is not None for p in g.params)


# -- bad models: one sbc error, one line ---------------------------------------------------------

def test_missing_file(tmp_path):
    raises_one_line(InvalidModelError, tmp_path / "absent.onnx", "absent.onnx", "no such file")
    raises_one_line(InvalidModelError, tmp_path, "directory")


@pytest.mark.parametrize("content, fragment", [
    (os.urandom(300), "not an ONNX model"),
    (b"", "empty"),
    (b"name,value\n1,2\n" * 10, "text file"),
], ids=["random-bytes", "empty", "text"])
def test_not_a_protobuf(tmp_path, content, fragment):
    path = tmp_path / "m.onnx"
    path.write_bytes(content)
    raises_one_line(InvalidModelError, path, str(path), fragment)


def test_zip_file(tmp_path):
    with zipfile.ZipFile(tmp_path / "m.onnx", "w") as z:
        z.writestr("data.pkl", b"\x80\x04" * 100)
    raises_one_line(InvalidModelError, tmp_path / "m.onnx", "zip archive")


def test_truncated_model(tmp_path):
    data = make_mlp_model().SerializeToString()
    for cut in (len(data) // 2, len(data) - 3):
        (tmp_path / "m.onnx").write_bytes(data[:cut])
        with pytest.raises(InvalidModelError) as info:
            import_onnx(tmp_path / "m.onnx")
        assert "\n" not in str(info.value)


def test_model_without_graph():
    raises_one_line(InvalidModelError, onnx.ModelProto(), "no ONNX graph")


def test_checker_failure():
    proto = make_mlp_model()
    proto.graph.node[0].input[0] = "nowhere"
    raises_one_line(InvalidModelError, proto, "checker", "nowhere")


def test_unsupported_op_names_op_node_opset_and_what_is_supported():
    nodes = [helper.make_node("Hardmax", ["x"], ["y"], name="the_node")]
    message = raises_one_line(UnsupportedError, model(nodes, [vi("x", [2, 3])], [vi("y", [2, 3])]),
                              "'Hardmax'", "'the_node'", "opset 18", "supports", "MatMul, ")
    assert "MatMulPacked" not in message  # sbc-internal ops are not offered


def test_unnamed_node_is_named_by_op_and_index():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Hardmax", ["r"], ["y"])]
    raises_one_line(UnsupportedError, model(nodes, [vi("x", [2])], [vi("y", [2])]), "'Hardmax_1'")


def test_unsupported_attribute_names_op_node_attribute_and_alternatives(monkeypatch):
    monkeypatch.delitem(get_op("Cast").attrs, "round_mode", raising=False)  # as if undeclared
    node = helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT32, round_mode="down", name="c")
    raises_one_line(UnsupportedError, model([node], [vi("x", [3])], [vi("y", [3], TensorProto.INT32)],
                                            opset=25),
                    "'round_mode'", "'Cast'", "'c'", "saturate, to")


def test_inference_failure_names_the_node():
    nodes = [helper.make_node("Add", ["x", "z"], ["y"], name="bad_add")]
    raises_one_line(UnsupportedError, model(nodes, [vi("x", [2, 3]), vi("z", [4])], [vi("y", [2, 3])]),
                    "'bad_add'", "broadcast")


def test_unsupported_domain():
    node = helper.make_node("FusedGemm", ["x"], ["y"], domain="com.microsoft", name="fg")
    proto = model([node], [vi("x", [2])], [vi("y", [2])])
    proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    raises_one_line(UnsupportedError, proto, "com.microsoft", "FusedGemm", "'fg'")


@pytest.mark.parametrize("opset", [MIN_OPSET - 1, MAX_OPSET + 1])
def test_unsupported_opset(opset):
    proto = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [vi("y", [2])], opset=opset)
    raises_one_line(UnsupportedError, proto, f"opset {opset}", f"{MIN_OPSET}-{MAX_OPSET}")


@pytest.mark.parametrize("dtype, name", [(TensorProto.STRING, "STRING"),
                                         (TensorProto.BFLOAT16, "BFLOAT16")])
def test_unsupported_input_dtype(dtype, name):
    proto = model([helper.make_node("Identity", ["x"], ["y"])], [vi("x", [2], dtype)],
                  [vi("y", [2], dtype)])
    raises_one_line(UnsupportedError, proto, "'x'", name, "f32")


def test_unsupported_initializer_and_cast_dtypes():
    w = helper.make_tensor("w", TensorProto.BFLOAT16, [2], [1, 2])
    proto = model([helper.make_node("Identity", ["w"], ["y"])], [], [vi("y", [2], TensorProto.BFLOAT16)], [w])
    raises_one_line(UnsupportedError, proto, "'w'", "BFLOAT16")
    node = helper.make_node("Cast", ["x"], ["y"], to=TensorProto.BFLOAT16, name="to_bf16")
    raises_one_line(UnsupportedError, model([node], [vi("x", [2])], [vi("y", [2], TensorProto.BFLOAT16)]),
                    "'to_bf16'", "BFLOAT16")


def test_control_flow_is_unsupported():
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "then", [], [vi("t", [2])])
    node = helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=then, name="branch")
    proto = model([node], [vi("c", [], TensorProto.BOOL), vi("x", [2])], [vi("y", [2])])
    raises_one_line(UnsupportedError, proto, "'If'", "'branch'", "control flow")


def test_every_error_is_an_sbc_error(tmp_path):
    """Nothing raw (KeyError, DecodeError, ...) escapes for a handful of odd models."""
    odd = [onnx.ModelProto(), tmp_path / "nope.onnx"]
    proto = make_mlp_model()
    proto.graph.output[0].name = "never_made"
    odd.append(proto)
    for m in odd:
        with pytest.raises(SbcError):
            import_onnx(m)
