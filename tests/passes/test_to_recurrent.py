"""to-recurrent: full-sequence graph -> step program with explicit state and position."""

import numpy as np
import pytest

from sbc.errors import UnsupportedError
from sbc.ir import Graph, TensorType
from sbc.ir.interpreter import run
from sbc.ir.verifier import verify
from sbc.passes.to_recurrent import ToRecurrent, memory_certificate, sequence_symbol
from tests.passes.attention_graphs import B, T, band_mask, const, symbolic
from tests.passes.helpers import check_pass, sym

HQ, HKV, D, WINDOW, MAX_POSITION, VOCAB = 4, 2, 8, 3, 64, 32
# what exporters call (batch, sequence): torch's dynamo numbers them, either way round
NAMES = [("batch", "T"), ("batch", "sequence_length"), ("s1", "s0"), ("s0", "s1")]


def mixer_graph(extra_mixing: str | None = None, batch=B, seq=T, positions: str = "range",
                tokens: bool = False):
    """x [batch, seq, 16] -> LinearAttention and SlidingWindowAttention on projections of x,
    plus a position-dependent term: sin(Range over seq) like RoPE angles ("range"), or a table
    gathered by position_ids, which are an input ("input") or Hugging Face's
    arange(seq).unsqueeze(0).expand(batch, seq) ("hf"). extra_mixing adds a node that mixes
    positions: 'cumsum' or 'mask'. tokens: x is the embedding of an input ids [batch, seq]."""
    g = Graph("mixer")
    rng = np.random.default_rng(0)
    if tokens:
        ids = g.add_input("ids", TensorType("i64", (batch, seq)))
        embed = rng.normal(size=(VOCAB, 16)).astype(np.float32)
        x = g.add1("Gather", g.add_param("embed", embed), ids, axis=0)
    else:
        x = g.add_input("x", TensorType("f32", (batch, seq, 16)))

    def proj(width, name):
        return g.add1("MatMul", x, g.add_param(name, (rng.normal(size=(16, width)) * 0.3).astype(np.float32)))

    q, k, v = proj(HQ * D, "wq"), proj(HKV * D, "wk"), proj(HKV * D, "wv")
    decay = g.add1("Neg", g.add1("Sigmoid", proj(HKV * D, "wg")))
    la = g.add("LinearAttention", [q, k, v, None, decay],
               {"q_num_heads": HQ, "kv_num_heads": HKV, "update_rule": "gated"}, name="la").outputs[0]
    swa = g.add("SlidingWindowAttention", [q, k, v],
                {"q_num_heads": HQ, "kv_num_heads": HKV, "window": WINDOW}, name="swa").outputs[0]
    n = g.add1("Constant", value=np.array(seq, dtype=object))
    if positions == "range":
        angle = g.add1("Range", const(g, np.float32(0)), g.add1("Cast", n, to="f32"), const(g, np.float32(1)))
        pos = g.add1("Unsqueeze", g.add1("Sin", angle), const(g, [1]))  # [T, 1]
    else:
        if positions == "input":
            ids = g.add_input("position_ids", TensorType("i64", (batch, seq)))
        else:
            cache_position = g.add1("Range", const(g, np.int64(0)), n, const(g, np.int64(1)))
            ids = g.add1("Expand", g.add1("Unsqueeze", cache_position, const(g, [0])),
                         symbolic(g, [batch, seq]))
        table = np.sin(np.arange(MAX_POSITION * HQ * D) / 7.0).reshape(MAX_POSITION, HQ * D)
        pos = g.add1("Gather", g.add_param("rope", table.astype(np.float32)), ids, axis=0)
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
    return {v.name: np.zeros([d if isinstance(d, int) else batch for d in v.shape], np.float32)
            for v in graph.inputs if v.name.startswith("state.")}


@pytest.mark.parametrize("positions", ["range", "hf", "input"])
@pytest.mark.parametrize("batch, seq", [("batch", "seq")] + NAMES)
def test_chunks_with_state_equal_the_whole_sequence(batch, seq, positions):
    """Whatever the dims are called, and however the positions are made: position_ids given as
    an input are the caller's to offset; a Range is offset by the pass."""
    make = lambda: mixer_graph(batch=sym(batch), seq=sym(seq), positions=positions)  # noqa: E731
    whole = make()
    x = np.random.default_rng(1).normal(size=(2, 13, 16)).astype(np.float32)

    def ids(lo, hi):  # absolute positions, where the graph takes them as an input
        return {"position_ids": np.tile(np.arange(lo, hi), (2, 1))} if positions == "input" else {}

    expected = run(whole, {"x": x, **ids(0, 13)})["y"]
    step = make()
    assert ToRecurrent().run(step).modified
    state, position, outputs = zero_state(step, 2), 0, []
    for lo, hi in ((0, 5), (5, 6), (6, 7), (7, 13)):  # prefill, two decode steps, a chunk
        out = run(step, {"x": x[:, lo:hi], **ids(lo, hi), "position": np.array(position), **state})
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


def renamed(text: str, batch: str, seq: str) -> str:
    return text.replace("batch", "\0").replace("seq", seq).replace("\0", batch)


@pytest.mark.parametrize("batch, seq", NAMES)
def test_the_sequence_symbol_is_found_whatever_its_name(batch, seq):
    graph = mixer_graph(batch=sym(batch), seq=sym(seq))
    assert sequence_symbol(graph) == seq
    assert ToRecurrent().run(graph).modified
    assert sequence_symbol(graph) == seq  # the step program still runs along it
    cert = memory_certificate(graph)
    seq_named = memory_certificate(ToRecurrent().run(mixer_graph()).graph)
    assert cert["sequence_symbol"] == seq and not cert["depends_on_sequence_length"]
    for key in ("state", "decode_buffers"):
        assert cert[key] == [{k: renamed(v, batch, seq) if isinstance(v, str) else v
                              for k, v in b.items()} for b in seq_named[key]]
    assert cert["state_bytes"] == renamed(seq_named["state_bytes"], batch, seq)


def test_without_mixers_the_sequence_is_the_inputs_second_axis():
    g = Graph("mlp")
    ids = g.add_input("ids", TensorType("i64", (sym("s0"), sym("s1"))))
    embed = g.add_param("embed", np.ones((4, 2), np.float32))
    g.set_outputs([g.add1("Gather", embed, ids, axis=0)], ["y"])
    assert sequence_symbol(g) == "s1"
    pooled = Graph("pooled")
    x = pooled.add_input("x", TensorType("f32", (B, 16)))
    pooled.set_outputs([pooled.add1("Relu", x)], ["y"])
    assert sequence_symbol(pooled) is None


def test_no_sequence_symbol_is_named():
    """Mixers over a fixed length: nothing says which symbol is the sequence."""
    graph = mixer_graph(seq=8)
    assert sequence_symbol(graph) is None
    assert not ToRecurrent().run(graph).modified and [v.name for v in graph.inputs] == ["x"]
    why = r"found no sequence symbol: the sequence axis \(axis 1\) of the LinearAttention or " \
          r"SlidingWindowAttention inputs \[B, T, H\*D\] is 8, not one symbolic dim"
    with pytest.raises(UnsupportedError, match=why):
        ToRecurrent(required=True).run(graph)
    with pytest.raises(UnsupportedError, match="found no sequence symbol"):
        memory_certificate(graph)
