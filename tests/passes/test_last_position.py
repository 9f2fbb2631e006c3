"""last-position: a step program's per-position logits -> the last position's only."""

import numpy as np
import pytest

from sbc.ir import Graph, TensorType
from sbc.ir.interpreter import run
from sbc.ir.verifier import verify
from sbc.passes.last_position import LastPosition
from sbc.passes.to_recurrent import ToRecurrent
from tests.passes.attention_graphs import B, T, const
from tests.passes.helpers import sym
from tests.passes.test_to_recurrent import NAMES, mixer_graph, zero_state

SIZES = {"batch": 2, "seq": 7}


def head_graph(extra: str | None = None, batch=B, seq=T):
    """The recurrent mixer graph followed by an RMS-normalised LM head (a position-wise tail)."""
    g = ToRecurrent().run(mixer_graph(batch=batch, seq=seq)).graph
    y = g.outputs[0]
    rng = np.random.default_rng(1)
    norm = g.add1("Mul", y, g.add1("Reciprocal", g.add1("Sqrt", g.add1(
        "ReduceMean", g.add1("Mul", y, y), const(g, [-1])))))
    logits = g.add1("MatMul", norm, g.add_param("lm_head", rng.normal(size=(8 * 4, 11)).astype(np.float32)))
    if extra == "cumsum":  # mixes positions: must stay where it is
        logits = g.add1("CumSum", logits, const(g, np.int64(1)))
    if extra == "shared":  # the normalised stream is also a second output
        g.set_outputs([logits, norm] + g.outputs[1:], ["logits", "norm"] + g.output_names[1:])
    else:
        g.set_outputs([logits] + g.outputs[1:], ["logits"] + g.output_names[1:])
    return g


def feeds_for(graph, seed=0):
    rng = np.random.default_rng(seed)
    feeds = zero_state(graph, SIZES["batch"])
    feeds["x"] = rng.normal(size=(SIZES["batch"], SIZES["seq"], 16)).astype(np.float32)
    feeds["position"] = np.int64(0)
    return feeds


@pytest.mark.parametrize("batch, seq", [("batch", "seq")] + NAMES)
def test_tail_runs_at_the_last_position_only(batch, seq):
    """Whatever the exporter called the dims: the sequence symbol is found, not assumed."""
    graph = head_graph(batch=sym(batch), seq=sym(seq))
    before = run(graph, feeds_for(graph))
    result = LastPosition().run(graph)
    verify(result.graph)
    assert result.modified
    assert str(graph.outputs[0].type) == f"f32[{batch}, 1, 11]"  # one row, whatever seq is
    # cut where the stateful mixers (and the Unsqueeze, a layout op) hand over to the tail
    cut = sorted(n.inputs[0].producer.op for n in graph.nodes if n.op == "Gather")
    assert cut == ["LinearAttention", "SlidingWindowAttention", "Unsqueeze"]
    mm = next(n for n in graph.nodes if n.op == "MatMul" and n.outputs[0] is graph.outputs[0])
    assert mm.inputs[0].shape == (sym(batch), 1, 32)
    after = run(graph, feeds_for(graph))
    np.testing.assert_allclose(after["logits"], before["logits"][:, -1:], rtol=1e-6, atol=1e-6)
    for name in graph.output_names[1:]:  # the state still sees every position
        np.testing.assert_array_equal(after[name], before[name])


def test_does_not_fire_on_position_mixing_tail():
    graph = head_graph("cumsum")
    result = LastPosition().run(graph)
    assert not result.modified and "Slice" not in graph.op_counts()
    assert str(graph.outputs[0].type) == "f32[batch, seq, 11]"


def test_values_another_output_needs_stay_whole():
    graph = head_graph("shared")
    before = run(graph, feeds_for(graph))
    assert LastPosition().run(graph).modified
    verify(graph)
    assert str(graph.outputs[1].type) == "f32[batch, seq, 32]"  # the second output keeps every row
    after = run(graph, feeds_for(graph))
    np.testing.assert_allclose(after["logits"], before["logits"][:, -1:], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(after["norm"], before["norm"])


def test_output_without_sequence_axis_is_left_alone():
    g = Graph("pooled")
    x = g.add_input("x", TensorType("f32", (B, T, 4)))
    g.set_outputs([g.add1("ReduceMean", x, const(g, [1]))], ["y"])
    assert not LastPosition().run(g).modified


def test_the_program_is_the_same_in_every_process():
    """The cut values are sliced in graph order, not in the order of a set of nodes (which
    follows their addresses): three processes give the same IR text, so the same library."""
    import subprocess
    import sys
    script = ("from sbc.ir.printer import print_graph; from sbc.passes.last_position import "
              "LastPosition; from tests.passes.test_last_position import head_graph; "
              "print(print_graph(LastPosition().run(head_graph()).graph))")
    texts = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True).stdout for _ in range(3)}
    assert len(texts) == 1
