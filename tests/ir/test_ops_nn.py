"""Linear algebra, normalization, RotaryEmbedding and Attention against onnx's reference;
symbolic inference; errors. (Harness: test_ops.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from sbc.ir import OpError, get_op
from tests.ir.test_ops import K, T, bools, check, f32, i64, infer, ints, pos

CASES = [
    ("MatMul", [f32(3, 4), f32(4, 5)], {}), ("MatMul", [f32(2, 3, 4), f32(4, 5)], {}),
    ("MatMul", [f32(2, 1, 3, 4), f32(5, 4, 2)], {}), ("MatMul", [f32(4), f32(2, 4, 3)], {}),
    ("MatMul", [f32(2, 3, 4), f32(4)], {}), ("MatMul", [f32(4), f32(4)], {}),
    ("MatMul", [ints(2, 3, dtype=np.int32), ints(3, 2, dtype=np.int32)], {}),
    ("Gemm", [f32(3, 4), f32(4, 5)], {}), ("Gemm", [f32(4, 3), f32(4, 5), f32(5)], {"transA": 1}),
    ("Gemm", [f32(3, 4), f32(5, 4), f32(3, 1)], {"transB": 1, "alpha": 0.5, "beta": 2.0}),
    ("Gemm", [f32(4, 3), f32(5, 4), np.float32(1.0)], {"transA": 1, "transB": 1}),
    ("Einsum", [f32(3, 4), f32(4, 5)], {"equation": "ij,jk->ik"}),
    ("Einsum", [f32(2, 3, 4), f32(2, 4, 5)], {"equation": "bij,bjk->bik"}),
    ("Einsum", [f32(2, 3, 4), f32(4, 5)], {"equation": "...ij,jk->...ik"}),
    ("Einsum", [f32(3, 4)], {"equation": "ij->ji"}), ("Einsum", [f32(4), f32(4)], {"equation": "i,i->"}),
    ("Einsum", [f32(3, 4), f32(4, 5)], {"equation": "ij,jk"}), ("Einsum", [f32(3, 3)], {"equation": "ii->i"}),
    ("Einsum", [f32(2, 4, 3, 8), f32(2, 4, 5, 8)], {"equation": "bhqd,bhkd->bhqk"}),
    ("Einsum", [f32(2, 3)], {"equation": "ij"}), ("Einsum", [f32(1, 3, 4), f32(2, 4, 5)], {"equation": "...ij,...jk"}),
    ("LayerNormalization", [f32(2, 3, 4), f32(4), f32(4)], {}),
    ("LayerNormalization", [f32(2, 3, 4), f32(3, 4)], {"axis": 1, "epsilon": 1e-3, "num_outputs": 3}),
    ("LayerNormalization", [f32(2, 3, 4), f32(4)], {"axis": -1, "num_outputs": 2}),
    ("RMSNormalization", [f32(2, 3, 4), f32(4)], {}),
    ("RMSNormalization", [f32(2, 3, 4), f32(3, 4)], {"axis": 1, "epsilon": 1e-2}),
    ("RMSNormalization", [f32(2, 3, 4), f32(1)], {"axis": -2}),
]


@pytest.mark.parametrize("op, inputs, attrs", CASES, ids=[c[0] for c in CASES])
def test_nn_ops(op, inputs, attrs):
    check(op, inputs, attrs, rtol=1e-4, atol=1e-5)


def _rope_inputs(b, s, h, d, rot, positions):
    """cos/sin caches [max_pos, rot/2] with position ids, or [b, s, rot/2] without."""
    n = 16 if positions else None
    angles = pos(n, rot // 2) * 3 if positions else pos(b, s, rot // 2) * 3
    extra = [ints(b, s, lo=0, hi=n)] if positions else []
    return [np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)] + extra


@pytest.mark.parametrize("layout, attrs, positions", [
    ("4d", {}, True), ("4d", {"interleaved": 1}, True), ("4d", {"rotary_embedding_dim": 4}, False),
    ("3d", {"num_heads": 2}, True), ("3d", {"num_heads": 2, "interleaved": 1, "rotary_embedding_dim": 4}, False),
])
def test_rotary_embedding(layout, attrs, positions):
    b, s, h, d = 2, 3, 2, 8
    x = f32(b, h, s, d) if layout == "4d" else f32(b, s, h * d)
    rot = attrs.get("rotary_embedding_dim") or d
    check("RotaryEmbedding", [x] + _rope_inputs(b, s, h, d, rot, positions), attrs)


def _mask(kind, shape):
    if kind == "bool":
        m = bools(*shape)
        m[..., 0] = True  # keep a key per row (fully-masked rows are tested separately)
        return m
    return (f32(*shape) * 2).astype(np.float32)


ATTENTION = [  # (q, k, v shapes, extra inputs, attrs)
    ("mha", (2, 4, 3, 8), (2, 4, 5, 8), (2, 4, 5, 6), {}, {}),
    ("causal", (2, 4, 5, 8), (2, 4, 5, 8), (2, 4, 5, 8), {}, {"is_causal": 1}),
    ("gqa", (1, 6, 4, 8), (1, 2, 4, 8), (1, 2, 4, 8), {}, {"is_causal": 1}),
    ("mqa-scale", (1, 4, 3, 8), (1, 1, 6, 8), (1, 1, 6, 4), {}, {"scale": 0.3}),
    ("3d", (2, 3, 16), (2, 5, 8), (2, 5, 12), {}, {"q_num_heads": 4, "kv_num_heads": 2}),
    ("bool-mask", (2, 2, 3, 4), (2, 2, 5, 4), (2, 2, 5, 4), {"mask": ("bool", (2, 1, 3, 5))}, {}),
    ("float-mask", (2, 2, 3, 4), (2, 2, 5, 4), (2, 2, 5, 4), {"mask": ("float", (3, 5))}, {}),
    ("short-mask", (1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 5, 4), {"mask": ("bool", (3, 3))}, {}),
    ("mask+causal", (1, 2, 4, 4), (1, 2, 4, 4), (1, 2, 4, 4), {"mask": ("float", (1, 2, 4, 4))},
     {"is_causal": 1}),
    ("past", (1, 2, 2, 4), (1, 2, 2, 4), (1, 2, 2, 4), {"past": 3}, {"is_causal": 1}),
    ("past-3d", (1, 2, 8), (1, 2, 8), (1, 2, 8), {"past": 3},
     {"q_num_heads": 2, "kv_num_heads": 2, "is_causal": 1}),
    ("softcap", (1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 5, 4), {}, {"softcap": 2.0, "qk_matmul_output_mode": 1}),
    ("mode2", (1, 2, 3, 4), (1, 2, 3, 4), (1, 2, 3, 4), {"mask": ("float", (3, 3))},
     {"qk_matmul_output_mode": 2, "is_causal": 1}),
    ("mode3", (1, 2, 3, 4), (1, 2, 3, 4), (1, 2, 3, 4), {}, {"qk_matmul_output_mode": 3}),
    ("precision", (1, 2, 3, 4), (1, 2, 3, 4), (1, 2, 3, 4), {}, {"softmax_precision": 11}),
    ("nonpad", (2, 2, 2, 4), (2, 2, 6, 4), (2, 2, 6, 4), {"nonpad": i64(4, 6)}, {"is_causal": 1}),
    ("nonpad-nocausal", (2, 2, 2, 4), (2, 2, 6, 4), (2, 2, 6, 4), {"nonpad": i64(3, 5)}, {}),
    ("fully-masked", (1, 1, 3, 4), (1, 1, 3, 4), (1, 1, 3, 4), {"mask": ("fixed", None)}, {}),
    ("window", (1, 2, 4, 4), (1, 2, 6, 4), (1, 2, 6, 4), {},
     {"left_window_size": 2, "right_window_size": 1}),
    ("window-causal-past", (1, 2, 2, 4), (1, 2, 2, 4), (1, 2, 2, 4), {"past": 3},
     {"left_window_size": 1, "is_causal": 1}),
]


@pytest.mark.parametrize("name, qs, ks, vs, extra, attrs", ATTENTION, ids=[c[0] for c in ATTENTION])
def test_attention(name, qs, ks, vs, extra, attrs):
    q, k, v = f32(*qs), f32(*ks), f32(*vs)
    mask = past_k = past_v = nonpad = None
    if "mask" in extra:
        kind, shape = extra["mask"]
        mask = np.array([[True, False, False], [False, False, False], [True, True, True]]) \
            if kind == "fixed" else _mask(kind, shape)
    if "past" in extra:
        heads = ks[1] if len(ks) == 4 else attrs["kv_num_heads"]
        d = ks[-1] if len(ks) == 4 else ks[-1] // heads
        dv = vs[-1] if len(vs) == 4 else vs[-1] // heads
        past_k, past_v = f32(ks[0], heads, extra["past"], d), f32(ks[0], heads, extra["past"], dv)
    if "nonpad" in extra:
        nonpad = extra["nonpad"]
    inputs = [q, k, v, mask, past_k, past_v, nonpad]
    while inputs[-1] is None:
        inputs.pop()
    check("Attention", inputs, attrs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_attention_num_outputs(n):
    check("Attention", [f32(1, 2, 3, 4), f32(1, 2, 5, 4), f32(1, 2, 5, 4)], {"num_outputs": n})


def test_attention_and_rope_are_marked_for_decomposition():
    assert get_op("Attention").extra["decompose"] and get_op("RotaryEmbedding").extra["decompose"]


def test_attention_qk_mode0_is_raw_even_with_softcap():
    """The spec's mode 0 is the raw Q K^T (onnx's reference returns it softcapped)."""
    from sbc.ir.registry import normalize_attrs
    opdef = get_op("Attention")
    attrs = normalize_attrs(opdef, {"softcap": 1.0}, "test")
    q, k, v = f32(1, 1, 2, 4), f32(1, 1, 3, 4), f32(1, 1, 3, 4)
    qk = opdef.ref(attrs, q, k, v)[3]
    np.testing.assert_allclose(qk, q @ k.transpose(0, 1, 3, 2) / 2, rtol=1e-5)


# -- symbolic inference ------------------------------------------------------------------------

INFERENCE = [
    ("MatMul", ["f32[batch, seq, 64]", "f32[64, 128]"], {}, ["f32[batch, seq, 128]"]),
    ("MatMul", ["f32[batch, h, seq, d]", "f32[batch, h, d, seq]"], {}, ["f32[batch, h, seq, seq]"]),
    ("MatMul", ["f32[k]", "f32[k, n]"], {}, ["f32[n]"]),
    ("Gemm", ["f32[batch, 4]", "f32[8, 4]", "f32[8]"], {"transB": 1}, ["f32[batch, 8]"]),
    ("Einsum", ["f32[batch, seq, 8]", "f32[8, 4]"], {"equation": "bsd,de->bse"}, ["f32[batch, seq, 4]"]),
    ("Einsum", ["f32[batch, h, seq, 8]", "f32[8, 4]"], {"equation": "...d,de->...e"},
     ["f32[batch, h, seq, 4]"]),
    ("Einsum", ["f32[batch, seq]"], {"equation": "ij->"}, ["f32[]"]),
    ("LayerNormalization", ["f32[batch, seq, 8]", "f32[8]", "f32[8]"], {"num_outputs": 3},
     ["f32[batch, seq, 8]", "f32[batch, seq, 1]", "f32[batch, seq, 1]"]),
    ("RMSNormalization", ["f32[batch, seq, 8]", "f32[8]"], {}, ["f32[batch, seq, 8]"]),
    ("RotaryEmbedding", ["f32[batch, 4, seq, 16]", "f32[256, 8]", "f32[256, 8]", "i64[batch, seq]"],
     {}, ["f32[batch, 4, seq, 16]"]),
    ("Attention", ["f32[batch, 8, seq, 16]", "f32[batch, 2, seq, 16]", "f32[batch, 2, seq, 16]"],
     {"is_causal": 1}, ["f32[batch, 8, seq, 16]", "f32[batch, 2, seq, 16]",
                        "f32[batch, 2, seq, 16]", "f32[batch, 8, seq, seq]"]),
    ("Attention", ["f32[batch, seq, 64]", "f32[batch, seq, 32]", "f32[batch, seq, 32]", None,
                   "f32[batch, 2, past, 16]", "f32[batch, 2, past, 16]"],
     {"q_num_heads": 4, "kv_num_heads": 2},
     ["f32[batch, seq, 64]", "f32[batch, 2, past + seq, 16]", "f32[batch, 2, past + seq, 16]",
      "f32[batch, 4, seq, past + seq]"]),
]


@pytest.mark.parametrize("op, inputs, attrs, expected", INFERENCE, ids=[c[0] for c in INFERENCE])
def test_symbolic_inference(op, inputs, attrs, expected):
    assert infer(op, inputs, attrs) == [T(e) for e in expected]


ERRORS = [
    ("MatMul", ["f32[2, 3]", "f32[4, 5]"], {}, "inner dims differ"),
    ("MatMul", ["f32[]", "f32[4, 5]"], {}, "rank >= 1"),
    ("MatMul", ["f32[2, 3]", "i64[3, 5]"], {}, "one dtype"),
    ("MatMul", ["f32[2, 2, 3]", "f32[3, 3, 5]"], {}, "do not broadcast"),
    ("Gemm", ["f32[2, 3]", "f32[4, 5]"], {}, "inner dims differ"),
    ("Gemm", ["f32[2, 3]", "f32[3, 5]", "f32[3]"], {}, "does not broadcast"),
    ("Gemm", ["f32[2, 3, 1]", "f32[3, 5]"], {}, "2-D"),
    ("Einsum", ["f32[2, 3]", "f32[4, 5]"], {"equation": "ij,jk->ik"}, "'j' is 3"),
    ("Einsum", ["f32[2, 3]"], {"equation": "ijk->i"}, "rank"),
    ("Einsum", ["f32[2, 3]"], {"equation": "ij->k"}, "occur in no input"),
    ("LayerNormalization", ["f32[2, 3]", "f32[2]"], {}, "normalized dims"),
    ("LayerNormalization", ["f32[2, 3]", "f32[3]"], {"axis": 2}, "out of range"),
    ("LayerNormalization", ["f32[2, 3]", "f32[3]"], {"stash_type": 7}, "stash_type"),
    ("RMSNormalization", ["i64[2, 3]", "i64[3]"], {}, "float"),
    ("RotaryEmbedding", ["f32[1, 3, 16]", "f32[1, 3, 4]", "f32[1, 3, 4]"], {}, "num_heads"),
    ("RotaryEmbedding", ["f32[1, 2, 3, 8]", "f32[1, 3, 2]", "f32[1, 3, 2]"], {}, "rotary_embedding_dim / 2"),
    ("RotaryEmbedding", ["f32[1, 2, 3, 8]", "f32[1, 3, 4]", "f32[1, 3, 4]"], {"rotary_embedding_dim": 3}, "even"),
    ("Attention", ["f32[1, 3, 8]", "f32[1, 3, 8]", "f32[1, 3, 8]"], {}, "q_num_heads"),
    ("Attention", ["f32[1, 6, 3, 8]", "f32[1, 4, 3, 8]", "f32[1, 4, 3, 8]"], {}, "not a multiple"),
    ("Attention", ["f32[1, 2, 3, 8]", "f32[1, 2, 3, 4]", "f32[1, 2, 3, 8]"], {}, "head sizes differ"),
    ("Attention", ["f32[1, 2, 3, 8]", "f32[1, 2, 3, 8]", "f32[1, 2, 3, 8]", "i64[3, 3]"], {}, "attn_mask"),
    ("Attention", ["f32[1, 2, 3, 8]", "f32[1, 2, 3, 8]", "f32[1, 2, 3, 8]", None, "f32[1, 2, 4, 8]"], {},
     "together"),
    ("Attention", ["f32[1, 2, 3, 8]", "f32[1, 2, 3, 8]", "f32[1, 2, 3, 8]"], {"q_num_heads": 4},
     "contradicts"),
]


@pytest.mark.parametrize("op, inputs, attrs, message", ERRORS, ids=[f"{c[0]}-{c[3]}" for c in ERRORS])
def test_errors(op, inputs, attrs, message):
    with pytest.raises(OpError, match=message):
        infer(op, inputs, attrs)
