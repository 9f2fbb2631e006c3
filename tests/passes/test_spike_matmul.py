"""spike-matmul: MatMul / MatMulPacked of dequantised spikes -> SpikeMatMul on the counts."""

from __future__ import annotations

import pytest

from sbc.passes import explain, run_passes
from sbc.passes.spike_matmul import AbsorbBias, SpikeMatMul, SpikeMatMulRule
from tests.passes.helpers import assert_stable, check_pass, ops
from tests.passes.spike_graphs import spiking_matmul_graph


def quantised(graph):
    return run_passes(graph, "quantize-weights-int8")


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_weights_become_an_integer_spike_matmul(packed, bias):
    graph = quantised(spiking_matmul_graph(packed=packed, bias=bias))
    # the int32 sums are exact; only the f32 epilogue's order of rounding differs
    _, after, modified = check_pass(SpikeMatMul(), graph, tolerance=1e-5)
    assert modified
    counts = ops(after)
    assert counts["SpikeMatMul"] == 1 and not {"MatMul", "MatMulPacked", "DequantizeGroups",
                                               "Add", "Mul", "Cast"} & set(counts)
    node = next(n for n in after.nodes if n.op == "SpikeMatMul")
    assert node.inputs[0].type.encoding == "count"
    assert node.inputs[2].dtype == "i8" and node.inputs[2].shape == (2, 64, 16, 4)
    assert node.inputs[3].shape == (2, 32)
    assert (len(node.inputs) == 5 and node.inputs[4] is not None) == bias
    assert_stable(SpikeMatMul(), after)


def test_float_weights_only_with_the_option():
    graph = spiking_matmul_graph(packed=True)
    _, after, modified = check_pass(SpikeMatMul(), graph)
    assert not modified
    assert any("float-weights option is off" in n for n in explain(after, [SpikeMatMulRule()]))
    _, after, modified = check_pass(SpikeMatMul(float_weights=True), graph, tolerance=1e-5)
    assert modified and ops(after)["SpikeMatMul"] == 1
    assert next(n for n in after.nodes if n.op == "SpikeMatMul").inputs[2].shape == (2, 256, 16)


@pytest.mark.parametrize("graph, reason", [
    (lambda: spiking_matmul_graph(spiked=False), "not a Mul (counts * scale) of SpikeEncode"),
    (lambda: quantised(spiking_matmul_graph(counts_dtype="i32")), "counts are i32"),
    (lambda: quantised(spiking_matmul_graph(n=24)), "N = 24 is not a multiple of 16"),
])
def test_near_misses_are_left_alone_and_explained(graph, reason):
    g = graph()
    _, after, modified = check_pass(SpikeMatMul(float_weights=True), g)
    assert not modified
    notes = explain(after, [SpikeMatMulRule(True), AbsorbBias()])
    assert any(reason in n for n in notes), notes


@pytest.mark.parametrize("k", [255, 258])
def test_k_not_in_quads_is_refused_for_int8(k):
    graph = quantised(spiking_matmul_graph(k=k))
    _, after, modified = check_pass(SpikeMatMul(), graph)
    assert not modified
    assert any("must be multiples of 4" in n for n in explain(after, [SpikeMatMulRule()]))


def test_after_the_default_pipeline_with_quantisation():
    graph = spiking_matmul_graph(bias=True)
    graph = run_passes(graph, "fold-constants,quantize-weights-int8,spike-matmul,"
                              "pack-matmul-weights,dce")
    assert ops(graph) == {"SpikeEncode": 1, "SpikeMatMul": 1}
