"""ONNX -> sbc IR: symbolic dims, opset normalisation, constants, and agreement with onnxruntime."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from sbc.frontend import import_onnx
from sbc.ir.interpreter import run
from sbc.ir.printer import print_graph


def model(nodes, inputs, outputs, initializers=(), opset=18):
    m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(initializers)),
                          opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def ints(name, values):
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)


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


def test_symbolic_dims_survive_shape_arithmetic():
    g = import_onnx(reshape_chain())
    assert str(g.inputs[0].type) == "f32[batch, seq, 8]"
    reshape = next(n for n in g.nodes if n.op == "Reshape")
    assert str(reshape.outputs[0].type) == "f32[batch, seq, 2, 4]"
    assert str(g.outputs[0].type) == "f32[batch, 2, seq, 4]"
    assert 'loc("reshape")' in print_graph(g)


@pytest.mark.parametrize("proto", [reshape_chain()], ids=["reshape-chain"])
def test_interpreter_matches_onnxruntime(proto):
    g = import_onnx(proto)
    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype(np.float32)
    want = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(run(g, {"x": x})["y"], want, rtol=1e-6, atol=1e-6)


def reduce_mean_model(opset):
    if opset < 18:
        node = helper.make_node("ReduceMean", ["x"], ["y"], axes=[1], keepdims=0, name="mean")
        inits = []
    else:
        node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0, name="mean")
        inits = [ints("axes", [1])]
    return model([node], [vi("x", [3, 4])], [vi("y", [3])], inits, opset=opset)


def test_old_opset_forms_import_to_the_newest_form():
    old, new = import_onnx(reduce_mean_model(17)), import_onnx(reduce_mean_model(18))
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_array_equal(run(old, {"x": x})["y"], run(new, {"x": x})["y"])
    assert [n.op for n in old.nodes] == ["Constant", "ReduceMean"]  # axes moved to an input


def test_constant_variants_and_outputs_that_are_inputs():
    nodes = [helper.make_node("Constant", [], ["c"], value_floats=[1.0, 2.0], name="c"),
             helper.make_node("Add", ["x", "c"], ["y"], name="add")]
    g = import_onnx(model(nodes, [vi("x", [2])], [vi("y", [2]), vi("x", [2])]))
    assert g.output_names == ["y", "x"]
    out = run(g, {"x": np.ones(2, np.float32)})
    np.testing.assert_array_equal(out["y"], [2, 3])
    np.testing.assert_array_equal(out["x"], [1, 1])


def test_constants_option_freezes_inputs():
    nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1, name="sum")]
    m = model(nodes, [vi("x", [2, 3]), vi("axes", [1], TensorProto.INT64)], [vi("y", [2, 1])], opset=18)
    g = import_onnx(m, constants={"axes": np.array([1])})
    assert [v.name for v in g.inputs] == ["x"]
    np.testing.assert_array_equal(run(g, {"x": np.ones((2, 3), np.float32)})["y"], [[3], [3]])


def test_torch_export_keeps_dynamic_dims(tmp_path):
    import torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)

        def forward(self, x):
            h = self.proj(x)
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
            return torch.softmax(h @ h.transpose(1, 2), dim=-1)

    path = tmp_path / "block.onnx"
    dims = {"x": {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}}
    torch.onnx.export(Block().eval(), (torch.randn(2, 5, 8),), str(path), input_names=["x"],
                      output_names=["y"], dynamic_shapes=dims, dynamo=True)
    proto = onnx.load(str(path))
    proto.ir_version = min(proto.ir_version, 10)
    g = import_onnx(proto)
    assert str(g.inputs[0].type) == "f32[batch, seq, 8]"
    assert str(g.outputs[0].type) == "f32[batch, seq, seq]"
    x = np.random.default_rng(2).normal(size=(3, 7, 8)).astype(np.float32)
    want = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(run(g, {"x": x})["y"], want, rtol=1e-5, atol=1e-6)


def test_tiny_reference_model_signature(tiny_onnx):
    g = import_onnx(tiny_onnx)
    assert [(v.name, str(v.type)) for v in g.inputs] == [("ids", "i64[batch, seq]")]
    assert [(n, str(v.type)) for n, v in zip(g.output_names, g.outputs)] == [("logits", "f32[batch, seq, 256]")]
