"""Spike encodings in types and the spiking ops: SpikeEncode, SpikeExpand / SpikeCollapse
(lossless in every coding), SpikeMatMul (integer products) and DequantizeGroups."""

from __future__ import annotations

import numpy as np
import pytest

from sbc.ir import Graph, OpError, Sym, TensorType
from sbc.ir.interpreter import run
from sbc.ir.ops.spike import (TRAIN_CODINGS, collapse, expand, pack_spike_weight,
                              quantize_groups, spike_steps)
from sbc.ir.parser import ParseError, parse_graph
from sbc.ir.printer import print_graph
from sbc.ir.verifier import verify

BATCH, SEQ = Sym.var("batch"), Sym.var("seq")


def counts_type(shape, dtype="i16"):
    return TensorType(dtype, shape, "count")


# -- types ------------------------------------------------------------------------------------

def test_encoding_is_part_of_the_type():
    plain, counts = TensorType("i16", (BATCH, 8)), counts_type((BATCH, 8))
    assert plain != counts and counts == counts_type((BATCH, 8))
    assert counts != TensorType("i16", (BATCH, 8), "ternary")
    assert str(plain) == "i16[batch, 8]" and str(counts) == "i16[batch, 8]{spike=count}"


@pytest.mark.parametrize("dtype, encoding, message", [
    ("i16", "rate", "unknown spike encoding"), ("f32", "count", "signed integer")])
def test_bad_encodings_are_rejected(dtype, encoding, message):
    with pytest.raises(TypeError, match=message):
        TensorType(dtype, (4,), encoding)


def spiking_graph() -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType("f32", (BATCH, SEQ, 32)))
    counts, scale = g.add("SpikeEncode", [x], {"k": 3.0}, outputs=["n", "v_th"]).outputs
    train = g.add1("SpikeExpand", counts, coding="bitwise_bidirectional", steps=8)
    back = g.add1("SpikeCollapse", train, coding="bitwise_bidirectional", dtype="i16")
    g.set_outputs([back, scale, train], ["counts", "scale", "train"])
    return g


def test_text_round_trip_keeps_encodings():
    g = spiking_graph()
    text = print_graph(g)
    assert "i16[batch, seq, 32]{spike=count} = SpikeCollapse" in text
    assert "i8[8, batch, seq, 32]{spike=bitwise_bidirectional} = SpikeExpand" in text
    again = parse_graph(text)
    verify(again)
    assert print_graph(again) == text


def test_text_with_an_encoded_graph_input_round_trips():
    text = ("graph main(%n: i8[4, 6]{spike=count}) -> (%t: i8[3, 4, 6]{spike=ternary}) {\n"
            "  %t: i8[3, 4, 6]{spike=ternary} = SpikeExpand(%n) {coding = \"ternary\", "
            "steps = 3}\n  return %t as t\n}\n")
    assert print_graph(parse_graph(text)) == text


def test_parser_checks_encodings():
    text = print_graph(spiking_graph())
    with pytest.raises(ParseError, match="infers"):  # the encoding must match inference
        parse_graph(text.replace("i16[batch, seq, 32]{spike=count} = SpikeCollapse",
                                 "i16[batch, seq, 32] = SpikeCollapse"))
    with pytest.raises(ParseError, match="unknown spike encoding"):
        parse_graph(text.replace("{spike=count} = SpikeCollapse", "{spike=counts} = SpikeCollapse"))


# -- SpikeEncode ------------------------------------------------------------------------------

def exported_spike(x: np.ndarray, k: float = 3.0):
    """The neuron as the exported float ops compute it, op by op in float32."""
    v = np.mean(np.abs(x), axis=-1, keepdims=True).astype(np.float32) / np.float32(k)
    v = np.minimum(np.maximum(v, np.float32(1e-5)), np.float32(1e4))
    return np.round(x / v), v


def test_spike_encode_matches_the_exported_ops_bit_for_bit():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 5, 64)) * rng.uniform(0.01, 10, (3, 5, 1))).astype(np.float32)
    x[0, 0] = 0  # a silent row: V_th clamps at 1e-5
    g = Graph()
    counts, scale = g.add("SpikeEncode", [g.add_input("x", TensorType("f32", x.shape))]).outputs
    g.set_outputs([counts, scale], ["n", "v"])
    got = run(g, {"x": x})
    n, v = exported_spike(x)
    np.testing.assert_array_equal(got["v"], v)
    np.testing.assert_array_equal(got["n"], n.astype(np.int16))
    assert got["n"].dtype == np.int16 and not got["n"][0, 0].any()


def test_spike_encode_clip_and_mul_form():
    x = np.array([[-9.0, 1.0, 0.5, 0.0]], np.float32)
    g = Graph()
    xin = g.add_input("x", TensorType("f32", (1, 4)))
    counts, _ = g.add("SpikeEncode", [xin], {"k": np.float32(1 / 3), "k_form": "mul",
                                             "clip": 3, "dtype": "i8"}).outputs
    g.set_outputs([counts], ["n"])
    assert g.outputs[0].type == counts_type((1, 4), "i8")
    # mean|x| = 2.625, V_th = 0.875: -9 / V_th = -10.3 -> clipped to -3
    np.testing.assert_array_equal(run(g, {"x": x})["n"], [[-3, 1, 1, 0]])


def test_spike_encode_rejects_integers():
    g = Graph()
    with pytest.raises(OpError, match="float tensor"):
        g.add("SpikeEncode", [g.add_input("x", TensorType("i32", (4,)))])


# -- spike trains -----------------------------------------------------------------------------

SIGNED = np.array([[-7, -1, 0, 3], [5, 0, -4, 1]], np.int16)
UNSIGNED = np.abs(SIGNED)


@pytest.mark.parametrize("coding, counts, steps", [
    ("binary", UNSIGNED, 7), ("ternary", SIGNED, 7), ("bitwise", UNSIGNED, 3),
    ("bitwise_bidirectional", SIGNED, 3), ("twos_complement", SIGNED, 4)])
def test_steps_follow_the_codings_rules(coding, counts, steps):
    assert spike_steps(counts, coding) == steps


@pytest.mark.parametrize("coding", TRAIN_CODINGS)
def test_expand_then_collapse_is_exact(coding):
    rng = np.random.default_rng(1)
    signed = coding in ("ternary", "bitwise_bidirectional", "twos_complement")
    counts = rng.integers(-20 if signed else 0, 21, (2, 3, 16)).astype(np.int16)
    steps = spike_steps(counts, coding)
    g = Graph()
    n = g.add_input("n", counts_type(counts.shape))
    train = g.add1("SpikeExpand", n, coding=coding, steps=steps)
    back = g.add1("SpikeCollapse", train, coding=coding)
    g.set_outputs([back, train], ["n", "train"])
    verify(g)
    out = run(g, {"n": counts})
    np.testing.assert_array_equal(out["n"], counts)
    values = set(np.unique(out["train"]).tolist())
    assert values <= ({-1, 0, 1} if coding in ("ternary", "bitwise_bidirectional") else {0, 1})
    assert out["train"].shape == (steps,) + counts.shape


def test_bitwise_planes_are_msb_first_and_twos_complement_has_a_sign_plane():
    np.testing.assert_array_equal(expand(np.array([6]), "bitwise", 3)[:, 0], [1, 1, 0])
    np.testing.assert_array_equal(expand(np.array([-6]), "bitwise_bidirectional", 3)[:, 0],
                                  [-1, -1, 0])
    np.testing.assert_array_equal(expand(np.array([-6]), "twos_complement", 4)[:, 0],
                                  [1, 0, 1, 0])  # -8 + 2
    np.testing.assert_array_equal(expand(np.array([3]), "binary", 4)[:, 0], [1, 1, 1, 0])


def test_more_steps_than_needed_still_collapse_exactly():
    counts = SIGNED.astype(np.int64)
    for coding in ("ternary", "bitwise_bidirectional", "twos_complement"):
        steps = spike_steps(counts, coding) + 2
        np.testing.assert_array_equal(collapse(expand(counts, coding, steps), coding), counts)


@pytest.mark.parametrize("coding, counts, message", [
    ("bitwise", SIGNED, "only counts >= 0"), ("ternary", SIGNED * 3, "need 21 ternary steps")])
def test_lossy_expansions_are_refused(coding, counts, message):
    with pytest.raises(ValueError, match=message):
        expand(counts, coding, 7)


def test_trains_need_counts_and_collapse_needs_its_coding():
    g = Graph()
    plain = g.add_input("x", TensorType("i16", (4,)))
    with pytest.raises(OpError, match="spike counts"):
        g.add("SpikeExpand", [plain], {"coding": "binary", "steps": 2})
    train = g.add1("SpikeExpand", g.add_input("n", counts_type((4,))), coding="binary", steps=2)
    with pytest.raises(OpError, match="ternary spike train"):
        g.add("SpikeCollapse", [train], {"coding": "ternary"})


# -- SpikeMatMul and DequantizeGroups ---------------------------------------------------------

def spike_matmul_graph(counts, scale, w, w_scale=None, bias=None, group=128):
    g = Graph()
    n = g.add_input("n", counts_type(counts.shape, str(counts.dtype).replace("int", "i")))
    s = g.add_input("s", TensorType("f32", scale.shape))
    params = [g.add_param(name, a) if a is not None else None
              for name, a in (("w", w), ("w_scale", w_scale), ("b", bias))]
    while params and params[-1] is None:
        params.pop()
    g.set_outputs([g.add1("SpikeMatMul", n, s, *params, group=group)], ["y"])
    verify(g)
    return g


def step_weight(coding: str, t: int, steps: int) -> int:
    if coding == "ternary":
        return 1
    weight = 2 ** (steps - 1 - t)
    return -weight if coding == "twos_complement" and t == 0 else weight


@pytest.mark.parametrize("coding", ["ternary", "bitwise_bidirectional", "twos_complement"])
def test_spike_matmul_equals_the_dense_matmul_of_the_decoded_spikes(coding):
    rng = np.random.default_rng(2)
    counts = rng.integers(-9, 10, (2, 5, 256)).astype(np.int16)
    scale = rng.uniform(0.1, 1, (2, 5, 1)).astype(np.float32)
    wq = rng.integers(-127, 128, (256, 32)).astype(np.int8)
    w_scale = rng.uniform(0.001, 0.01, (2, 32)).astype(np.float32)
    bias = rng.standard_normal(32).astype(np.float32)
    g = spike_matmul_graph(counts, scale, pack_spike_weight(wq), w_scale, bias)
    y = run(g, {"n": counts, "s": scale})["y"]
    # the spikes one step at a time: W n = sum_t weight_t W s_t (exact integers), then scales
    train = expand(counts, coding, spike_steps(counts, coding))
    steps = [step_weight(coding, t, len(train)) for t in range(len(train))]
    w_dense = wq.astype(np.int64)
    y_dense = np.zeros((2, 5, 32))
    for grp in range(2):
        rows = slice(128 * grp, 128 * (grp + 1))
        acc = sum(c * (s[..., rows].astype(np.int64) @ w_dense[rows]) for c, s in zip(steps, train))
        y_dense += acc * w_scale[grp].astype(np.float64)
    y_dense = y_dense * scale + bias
    np.testing.assert_allclose(y, y_dense, rtol=1e-5, atol=1e-4)


def test_spike_matmul_float_weight_and_odd_group_count():
    rng = np.random.default_rng(3)
    counts = rng.integers(-5, 6, (7, 200)).astype(np.int8)
    scale = rng.uniform(0.1, 1, (7, 1)).astype(np.float32)
    w = rng.standard_normal((200, 16)).astype(np.float32)
    y = run(spike_matmul_graph(counts, scale, pack_spike_weight(w)), {"n": counts, "s": scale})
    np.testing.assert_allclose(y["y"], (counts * scale) @ w, rtol=1e-5, atol=1e-5)
    wq, ws = quantize_groups(w, 0, 128)  # K = 200: a full group and a partial one
    assert ws.shape == (2, 16)
    y = run(spike_matmul_graph(counts, scale, pack_spike_weight(wq), ws),
            {"n": counts, "s": scale})
    dequantised = wq * np.repeat(ws, 128, axis=0)[:200]
    np.testing.assert_allclose(y["y"], (counts * scale) @ dequantised, rtol=1e-5, atol=1e-5)


def test_spike_matmul_checks_its_weight_layout():
    counts, scale = np.zeros((2, 64), np.int16), np.ones((2, 1), np.float32)
    with pytest.raises(OpError, match="needs W_scale"):
        spike_matmul_graph(counts, scale, np.zeros((1, 16, 16, 4), np.int8))
    with pytest.raises(OpError, match="neither"):  # the pair layout of earlier artifacts
        spike_matmul_graph(counts, scale, np.zeros((1, 32, 16, 2), np.int8))
    with pytest.raises(OpError, match="neither"):
        spike_matmul_graph(counts, scale, np.zeros((64, 16), np.float32))


def test_quantize_and_dequantize_groups():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((300, 24)).astype(np.float32)
    q, scales = quantize_groups(w, 0, 128)
    assert q.dtype == np.int8 and scales.shape == (3, 24) and np.abs(q).max() == 127
    g = Graph()
    y = g.add1("DequantizeGroups", g.add_param("q", q), g.add_param("s", scales), axis=0)
    g.set_outputs([y], ["w"])
    w_hat = run(g, {})["w"]
    # symmetric rounding: at most half a step per channel group
    assert np.all(np.abs(w_hat - w) <= np.repeat(scales, 128, axis=0)[:300] / 2 + 1e-7)
