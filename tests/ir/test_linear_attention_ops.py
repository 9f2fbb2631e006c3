"""LinearAttention (ONNX-27 semantics) and SlidingWindowAttention: inference and references."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from sbc.ir import Graph, TensorType, get_op
from sbc.ir.dims import Sym
from sbc.ir.registry import OpError

B, T = Sym.var("batch"), Sym.var("seq")
HQ, HKV, DK, DV = 4, 2, 3, 5


def onnx_linear_attention(rule, feeds):
    names = ["q", "k", "v", "p", "g" if "g" in feeds else "", "b" if "b" in feeds else ""]
    node = helper.make_node("LinearAttention", names, ["o", "s"], q_num_heads=HQ,
                            kv_num_heads=HKV, update_rule=rule)
    info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in feeds]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("o", "s")]
    model = helper.make_model(helper.make_graph([node], "la", info, outs),
                              opset_imports=[helper.make_opsetid("", 27)])
    return ReferenceEvaluator(model).run(None, feeds)


@pytest.mark.parametrize("rule", ["linear", "gated", "delta", "gated_delta"])
@pytest.mark.parametrize("decay_width", [HKV, HKV * DK])
def test_reference_equals_onnx_reference_evaluator(rule, decay_width):
    rng = np.random.default_rng(0)
    feeds = {"q": rng.normal(size=(2, 6, HQ * DK)), "k": rng.normal(size=(2, 6, HKV * DK)),
             "v": rng.normal(size=(2, 6, HKV * DV)), "p": rng.normal(size=(2, HKV, DK, DV))}
    if "gated" in rule:
        feeds["g"] = -np.abs(rng.normal(size=(2, 6, decay_width)))
    if "delta" in rule:
        feeds["b"] = rng.random(size=(2, 6, HKV))
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    attrs = {"q_num_heads": HQ, "kv_num_heads": HKV, "update_rule": rule, "scale": 0.0, "chunk_size": 64}
    got = get_op("LinearAttention").ref(attrs, feeds["q"], feeds["k"], feeds["v"], feeds["p"],
                                        feeds.get("g"), feeds.get("b"))
    for a, b in zip(got, onnx_linear_attention(rule, feeds)):
        np.testing.assert_array_equal(a, b)


def la_node(rule="gated", decay_width=HKV * DK, q_width=HQ * DK):
    g = Graph()
    q = g.add_input("q", TensorType("f32", (B, T, q_width)))
    k = g.add_input("k", TensorType("f32", (B, T, HKV * DK)))
    v = g.add_input("v", TensorType("f32", (B, T, HKV * DV)))
    d = g.add_input("g", TensorType("f32", (B, T, decay_width)))
    return g.add("LinearAttention", [q, k, v, None, d],
                 {"q_num_heads": HQ, "kv_num_heads": HKV, "update_rule": rule})


def test_inference_keeps_symbolic_dims():
    out, state = la_node().outputs
    assert str(out.type) == "f32[batch, seq, 20]" and str(state.type) == "f32[batch, 2, 3, 5]"


@pytest.mark.parametrize("kwargs, message", [
    ({"rule": "linear"}, "forbids decay"),
    ({"decay_width": 4}, "decay width 4"),
    ({"q_width": 10}, "not a multiple of 4 heads"),
    ({"rule": "fancy"}, "not one of"),
])
def test_misuse_is_an_op_error(kwargs, message):
    with pytest.raises(OpError, match=message):
        la_node(**kwargs)


def swa(q, k, v, window, past=None, position=0):
    attrs = {"q_num_heads": HQ, "kv_num_heads": HKV, "window": window, "scale": 0.0}
    args = [q, k, v] + ([*past, np.array(position)] if past else [])
    return get_op("SlidingWindowAttention").ref(attrs, *args)


def test_sliding_window_equals_banded_softmax_and_streams():
    rng = np.random.default_rng(1)
    q, k, v = (rng.normal(size=(1, 9, h * DK)).astype(np.float32) for h in (HQ, HKV, HKV))
    out, _, _ = swa(q, k, v, window=3)
    # direct: head h sees keys i-2..i of KV head h // 2
    qh, kh, vh = (x.reshape(1, 9, -1, DK).transpose(0, 2, 1, 3) for x in (q, k, v))
    kh, vh = np.repeat(kh, 2, axis=1), np.repeat(vh, 2, axis=1)
    s = qh @ kh.transpose(0, 1, 3, 2) / np.sqrt(DK)
    i, j = np.indices((9, 9))
    s = np.where((i - j >= 0) & (i - j < 3), s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    direct = ((w / w.sum(-1, keepdims=True)) @ vh).transpose(0, 2, 1, 3).reshape(1, 9, -1)
    np.testing.assert_allclose(out, direct, rtol=1e-5, atol=1e-6)
    # the same in chunks with the ring buffer carried along
    ring = (np.zeros((1, HKV, 3, DK), np.float32), np.zeros((1, HKV, 3, DK), np.float32))
    pieces = []
    for lo, hi in ((0, 4), (4, 5), (5, 9)):
        o, *ring = swa(q[:, lo:hi], k[:, lo:hi], v[:, lo:hi], 3, past=ring, position=lo)
        pieces.append(o)
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), out, rtol=1e-6, atol=1e-6)
