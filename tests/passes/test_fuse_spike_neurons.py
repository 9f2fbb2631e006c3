"""fuse-spike-neurons: the exported adaptive-threshold neuron -> SpikeEncode + Mul, with
counts bit-identical to the graph before, its variants, and the near misses it must leave."""

from __future__ import annotations

import numpy as np
import pytest

from sbc.ir import Graph, TensorType
from sbc.ir.interpreter import run
from sbc.passes import explain
from sbc.passes.fuse_spike_neurons import FuseSpikeNeurons, SpikeNeuron
from tests.passes.helpers import assert_stable, check_pass, ops, sym

ROW = 48


def const(g: Graph, value, dtype=np.float32):
    return g.add1("Constant", value=np.asarray(value, dtype=dtype))


def neuron_graph(scaling="div", clamp="clip", quantiser="Round", abs_=True, axes=(-1,),
                 k=None, mul_order=("counts", "v"), count_output=False) -> Graph:
    """x -> spike(x) @ W as an exporter writes it, with the chosen variant of each step."""
    g = Graph()
    x = g.add_input("x", TensorType("f32", (sym("batch"), sym("seq"), ROW)))
    magnitude = g.add1("Abs", x) if abs_ else x
    mean = g.add1("ReduceMean", magnitude, const(g, list(axes), np.int64), keepdims=1)
    k = const(g, 3.0) if k is None else k(g)
    scaled = g.add1("Div", mean, k) if scaling == "div" else g.add1("Mul", const(g, 1 / 3), mean)
    lo, hi = const(g, 1e-5), const(g, 1e4)
    if clamp == "clip":
        v = g.add1("Clip", scaled, lo, hi)
    elif clamp == "max-min":
        v = g.add1("Min", g.add1("Max", scaled, lo), hi)
    else:  # min-max
        v = g.add1("Max", g.add1("Min", hi, scaled), lo)
    counts = g.add1(quantiser, g.add1("Div", x, v))
    pair = {"counts": counts, "v": v}
    spiked = g.add1("Mul", *[pair[name] for name in mul_order])
    w = g.add_param("w", np.random.default_rng(0).standard_normal((ROW, 8)).astype(np.float32))
    outputs, names = [g.add1("MatMul", spiked, w)], ["y"]
    if count_output:
        outputs, names = outputs + [counts], names + ["counts"]
    g.set_outputs(outputs, names)
    return g


def spiky_feeds(seed=0):
    """Rows of very different scales, a silent row (V_th clamps at lo) and exact .5 ties."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((2, 9, ROW)) * rng.uniform(1e-3, 30, (2, 9, 1))).astype(np.float32)
    x[0, 0] = 0
    x[1, 0] = np.float32(0.5) * np.arange(ROW) % 3  # many x / V_th near n + .5
    return {"x": x}


def fused(graph: Graph, **options):
    before, after, modified = check_pass(FuseSpikeNeurons(**options), graph, spiky_feeds(),
                                         tolerance=0)
    return before, after, modified


@pytest.mark.parametrize("variant", [
    {}, {"scaling": "mul"}, {"clamp": "max-min"}, {"clamp": "min-max"},
    {"mul_order": ("v", "counts")}])
def test_fuses_the_neuron_and_keeps_outputs_bit_identical(variant):
    before, after, modified = fused(neuron_graph(**variant))
    assert modified and "Round" in before
    counts = ops(after)
    assert counts["SpikeEncode"] == 1
    assert not {"Abs", "ReduceMean", "Round", "Clip", "Max", "Min", "Div"} & set(counts)
    encode = next(n for n in after.nodes if n.op == "SpikeEncode")
    assert encode.outputs[0].type == TensorType("i16", encode.inputs[0].shape, "count")
    assert encode.attrs["k_form"] == variant.get("scaling", "div")
    assert (encode.attrs["lo"], encode.attrs["hi"]) == (float(np.float32(1e-5)), 1e4)
    assert_stable(FuseSpikeNeurons(), after)


def test_counts_read_as_an_output_are_bit_identical():
    graph = neuron_graph(count_output=True)
    expected = run(graph, spiky_feeds(1))["counts"]
    _, after, modified = fused(graph)
    assert modified
    got = run(after, spiky_feeds(1))["counts"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_counts_dtype_holds_the_bound_or_is_forced():
    # row 48, k = 3: |counts| <= 144 > 127, so i8 would not be exact
    _, after, _ = fused(neuron_graph())
    assert next(n for n in after.nodes if n.op == "SpikeEncode").attrs["dtype"] == "i16"
    graph = neuron_graph()
    FuseSpikeNeurons(count_dtype="i8").run(graph)
    assert next(n for n in graph.nodes if n.op == "SpikeEncode").attrs["dtype"] == "i8"


def per_row_k(g: Graph):
    return g.add_input("k", TensorType("f32", (sym("batch"), sym("seq"), 1)))


@pytest.mark.parametrize("variant, reason", [
    ({"k": per_row_k}, "is not a compile-time scalar"),
    ({"quantiser": "Floor"}, "the counts come from Floor, not Round"),
    ({"abs_": False}, "the mean is not over |x| (no Abs"),
    ({"axes": (1,)}, "the mean is over axes [1], not the last axis"),
])
def test_near_misses_are_left_alone_and_explained(variant, reason):
    graph = neuron_graph(**variant)
    feeds = spiky_feeds()
    if "k" in variant:
        feeds["k"] = np.full((2, 9, 1), 3, np.float32)
    _, after, modified = check_pass(FuseSpikeNeurons(), graph, feeds, tolerance=0)
    assert not modified and "SpikeEncode" not in ops(after)
    notes = explain(after, [SpikeNeuron()])
    assert any(reason in note for note in notes), notes
