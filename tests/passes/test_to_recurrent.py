"""to-recurrent: full-sequence graph -> step program with explicit state and position."""

import numpy as np
import pytest

from sbc.errors import UnsupportedError
from sbc.ir import Graph, TensorType
from sbc.ir.interpreter import run
from sbc.ir.verifier import verify
from sbc.passes.to_recurrent import ToRecurrent, memory_certificate
from tests.passes.attention_graphs import B, T, band_mask, const
from tests.passes.helpers import check_pass

HQ, HKV, D, WINDOW = 4, 2, 8, 3


def mixer_graph(extra_mixing: str | None = None):
    """x [B, T, 16] -> LinearAttention and SlidingWindowAttention on projections of x, plus a
    position-dependent term (Range over T, like RoPE angles). extra_mixing adds a node that
    mixes positions: 'cumsum' or 'mask'."""
    g = Graph("mixer")
    x = g.add_input("x", TensorType("f32", (B, T, 16)))
    rng = np.random.default_rng(0)

    def proj(width, name):
        return g.add1("MatMul", x, g.add_param(name, (rng.normal(size=(16, width)) * 0.3).astype(np.float32)))

    q, k, v = proj(HQ * D, "wq"), proj(HKV * D, "wk"), proj(HKV * D, "wv")
    decay = g.add1("Neg", g.add1("Sigmoid", proj(HKV * D, "wg")))
    la = g.add("LinearAttention", [q, k, v, None, decay],
               {"q_num_heads": HQ, "kv_num_heads": HKV, "update_rule": "gated"}, name="la").outputs[0]
    swa = g.add("SlidingWindowAttention", [q, k, v],
                {"q_num_heads": HQ, "kv_num_heads": HKV, "window": WINDOW}, name="swa").outputs[0]
    n = g.add1("Constant", value=np.array(T, dtype=object))
    angle = g.add1("Range", const(g, np.float32(0)), g.add1("Cast", n, to="f32"), const(g, np.float32(1)))
    pos = g.add1("Unsqueeze", g.add1("Sin", angle), const(g, [1]))  # [T, 1]
    y = g.add1("Add", g.add1("Add", la, swa), pos)
    if extra_mixing == "cumsum":
        y = g.add1("CumSum", y, const(g, np.int64(1)))
    if extra_mixing == "mask":
        y = g.add1("Where", g.add1("Unsqueeze", band_mask(g), const(g, [0])), y, const(g, np.float32(0)))
    g.set_outputs([y], ["y"])
    return g


def test_state_and_position_become_inputs_and_outputs():
    graph = mixer_graph()
    result = ToRecurrent().run(graph)
    verify(result.graph)
    assert result.modified
    names = [v.name for v in graph.inputs]
    assert names == ["x", "position", "state.la", "state.swa.key", "state.swa.value"]
    assert graph.output_names == ["y", "state.la", "state.swa.key", "state.swa.value"]
    assert str(graph.value("state.la").type) == "f32[batch, 2, 8, 8]"
    assert str(graph.value("state.swa.key").type) == "f32[batch, 2, 3, 8]"


def zero_state(graph, batch):
    return {v.name: np.zeros([batch if d == B else d for d in v.shape], np.float32)
            for v in graph.inputs if v.name.startswith("state.")}


def test_chunks_with_state_equal_the_whole_sequence():
    whole = mixer_graph()
    x = np.random.default_rng(1).normal(size=(2, 13, 16)).astype(np.float32)
    expected = run(whole, {"x": x})["y"]
    step = mixer_graph()
    ToRecurrent().run(step)
    state, position, outputs = zero_state(step, 2), 0, []
    for lo, hi in ((0, 5), (5, 6), (6, 7), (7, 13)):  # prefill, two decode steps, a chunk
        out = run(step, {"x": x[:, lo:hi], "position": np.array(position), **state})
        state = {n: out[n] for n in state}
        position += hi - lo
        outputs.append(out["y"])
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), expected, rtol=1e-5, atol=1e-5)


def test_zero_state_reproduces_the_graph_before():
    graph = mixer_graph()
    x = np.random.default_rng(2).normal(size=(1, 6, 16)).astype(np.float32)
    expected = run(graph, {"x": x})["y"]
    ToRecurrent().run(graph)
    got = run(graph, {"x": x, "position": np.array(0), **zero_state(graph, 1)})["y"]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mixing, reason", [("cumsum", "works along the sequence axis"),
                                            ("mask", "pairs of positions")])
def test_sequence_mixing_prevents_it_and_is_named(mixing, reason):
    graph = mixer_graph(mixing)
    result = ToRecurrent().run(graph)
    assert not result.modified and [v.name for v in graph.inputs] == ["x"]
    with pytest.raises(UnsupportedError, match=reason):
        ToRecurrent(required=True).run(graph)


def test_memory_certificate_lists_constant_buffers():
    graph = mixer_graph()
    ToRecurrent().run(graph)
    cert = memory_certificate(graph)
    assert not cert["depends_on_sequence_length"]
    # per sequence: LA state 2*8*8 floats + two SWA rings of 2*3*8 floats; plus the position
    assert cert["state_bytes"] == f"{(2 * 8 * 8 + 2 * 2 * 3 * 8) * 4}*batch + 8"
    assert all("seq" not in b["bytes"] for b in cert["decode_buffers"])
