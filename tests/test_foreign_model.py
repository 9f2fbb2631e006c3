"""A SpikingBrain-style block that sbc did not write: built by hand with onnx.helper at opset 23
from the standard ops (RMSNormalization, the W8ASpike pattern, RotaryEmbedding, GQA Attention
with is_causal, residual), compiled by sbc and compared with onnxruntime."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import sbc

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, MAX_POS = 32, 4, 2, 8, 64


def spike_nodes(x: str, out: str, prefix: str):
    """V_th = clamp(mean|x| / 3, 1e-5, 1e4); out = round(x / V_th) * V_th."""
    return [
        helper.make_node("Abs", [x], [f"{prefix}abs"]),
        helper.make_node("ReduceMean", [f"{prefix}abs", "last_axis"], [f"{prefix}mean"], keepdims=1),
        helper.make_node("Div", [f"{prefix}mean", "k"], [f"{prefix}scaled"]),
        helper.make_node("Clip", [f"{prefix}scaled", "lo", "hi"], [f"{prefix}vth"]),
        helper.make_node("Div", [x, f"{prefix}vth"], [f"{prefix}ratio"]),
        helper.make_node("Round", [f"{prefix}ratio"], [f"{prefix}n"]),
        helper.make_node("Mul", [f"{prefix}n", f"{prefix}vth"], [out]),
    ]


def swa_block() -> bytes:
    rng = np.random.default_rng(0)

    def weight(name, *shape):
        return numpy_helper.from_array((rng.normal(size=shape) / np.sqrt(shape[0])).astype(np.float32), name)

    inv_freq = 1.0 / (1e6 ** (np.arange(0, HEAD_DIM, 2) / HEAD_DIM))
    angles = np.arange(MAX_POS)[:, None] * inv_freq[None, :]
    inits = [
        weight("wq", HIDDEN, HEADS * HEAD_DIM), weight("wk", HIDDEN, KV_HEADS * HEAD_DIM),
        weight("wv", HIDDEN, KV_HEADS * HEAD_DIM), weight("wo", HEADS * HEAD_DIM, HIDDEN),
        numpy_helper.from_array(np.ones(HIDDEN, np.float32), "norm_w"),
        numpy_helper.from_array(np.cos(angles).astype(np.float32), "cos"),
        numpy_helper.from_array(np.sin(angles).astype(np.float32), "sin"),
        numpy_helper.from_array(np.array([-1], np.int64), "last_axis"),
        numpy_helper.from_array(np.array(3.0, np.float32), "k"),
        numpy_helper.from_array(np.array(1e-5, np.float32), "lo"),
        numpy_helper.from_array(np.array(1e4, np.float32), "hi"),
        numpy_helper.from_array(np.array([0, 0, HEADS, HEAD_DIM], np.int64), "q_shape"),
        numpy_helper.from_array(np.array([0, 0, KV_HEADS, HEAD_DIM], np.int64), "kv_shape"),
        numpy_helper.from_array(np.array([0, 0, HEADS * HEAD_DIM], np.int64), "o_shape"),
    ]
    nodes = [helper.make_node("RMSNormalization", ["x", "norm_w"], ["h"], epsilon=1e-6, axis=-1)]
    nodes += spike_nodes("h", "hs", "s1_")
    for name, w, shape in (("q", "wq", "q_shape"), ("k", "wk", "kv_shape"), ("v", "wv", "kv_shape")):
        nodes += [helper.make_node("MatMul", ["hs", w], [f"{name}_flat"]),
                  helper.make_node("Reshape", [f"{name}_flat", shape], [f"{name}_bshd"]),
                  helper.make_node("Transpose", [f"{name}_bshd"], [f"{name}_bhsd"], perm=[0, 2, 1, 3])]
    nodes += [helper.make_node("RotaryEmbedding", ["q_bhsd", "cos", "sin", "pos"], ["q_rot"]),
              helper.make_node("RotaryEmbedding", ["k_bhsd", "cos", "sin", "pos"], ["k_rot"]),
              helper.make_node("Attention", ["q_rot", "k_rot", "v_bhsd"], ["attn"], is_causal=1),
              helper.make_node("Transpose", ["attn"], ["attn_bshd"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["attn_bshd", "o_shape"], ["attn_flat"])]
    nodes += spike_nodes("attn_flat", "attn_s", "s2_")
    nodes += [helper.make_node("MatMul", ["attn_s", "wo"], ["o"]),
              helper.make_node("Add", ["x", "o"], ["y"])]
    graph = helper.make_graph(
        nodes, "swa_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", HIDDEN]),
         helper.make_tensor_value_info("pos", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", HIDDEN])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    return model.SerializeToString()


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    path = tmp_path_factory.mktemp("foreign") / "swa_block.onnx"
    path.write_bytes(swa_block())
    return str(path)


def test_foreign_block_compiles_and_matches_onnxruntime(block):
    module = sbc.compile(block)
    session = ort.InferenceSession(block, providers=["CPUExecutionProvider"])
    for batch, seq in ((1, 5), (2, 17)):
        x = np.random.default_rng(seq).normal(size=(batch, seq, HIDDEN)).astype(np.float32)
        pos = np.tile(np.arange(seq), (batch, 1))
        ours = module.run({"x": x, "pos": pos})["y"]
        theirs = session.run(None, {"x": x, "pos": pos})[0]
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
