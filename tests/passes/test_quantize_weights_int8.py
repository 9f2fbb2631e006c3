"""quantize-weights-int8: spiking matmuls' f32 weights -> DequantizeGroups of int8 + scales."""

from __future__ import annotations

import numpy as np
import pytest

from sbc.passes import explain, parse_pipeline, run_passes
from sbc.passes.quantize_weights_int8 import QuantizeSpikeWeight, QuantizeWeightsInt8
from tests.passes.helpers import assert_stable, check_pass, ops, random_feeds
from tests.passes.spike_graphs import spiking_matmul_graph


def dequantize(after):
    return next(n for n in after.nodes if n.op == "DequantizeGroups")


@pytest.mark.parametrize("packed, k, groups", [(False, 256, 2), (True, 256, 2), (False, 64, 1),
                                               (False, 200, 2)])
def test_weights_become_int8_with_one_scale_per_group(packed, k, groups):
    graph = spiking_matmul_graph(k=k, packed=packed)
    w = graph.params[0].data
    # lossy: within the rounding of the int8 weights (checked against the f32 weights below)
    _, after, modified = check_pass(QuantizeWeightsInt8(), graph, tolerance=0.05)
    assert modified and ops(after)["DequantizeGroups"] == 1
    node = dequantize(after)
    q, scales = (v.data for v in node.inputs)
    assert q.dtype == np.int8 and q.shape == w.shape and np.abs(q).max() == 127
    assert node.attrs["axis"] == (1 if packed else 0)
    assert scales.shape[node.attrs["axis"]] == groups
    assert all(p.dtype != "f32" or p.data.ndim != w.ndim or p.shape != w.shape
               for p in after.params), "the f32 weight is dropped"
    per_channel = np.repeat(scales, 128, axis=node.attrs["axis"]).take(np.arange(k),
                                                                       axis=node.attrs["axis"])
    assert np.all(np.abs(q * per_channel - w) <= per_channel / 2 + 1e-7)  # half a step
    assert_stable(QuantizeWeightsInt8(), after)


def test_group_option_and_pipeline_spelling():
    (p,) = parse_pipeline("quantize-weights-int8{group=64}")
    _, after, _ = check_pass(p, spiking_matmul_graph(k=256), tolerance=0.05)
    assert dequantize(after).inputs[1].shape == (4, 32)


def test_survives_constant_folding():
    graph = run_passes(spiking_matmul_graph(), "quantize-weights-int8,fold-constants,dce")
    assert "DequantizeGroups" in ops(graph)


def test_not_spiked_input_is_left_alone_and_explained():
    graph = spiking_matmul_graph(spiked=False)
    feeds = random_feeds(graph)
    _, after, modified = check_pass(QuantizeWeightsInt8(), graph, feeds)
    assert not modified
    notes = explain(after, [QuantizeSpikeWeight(128)])
    assert any("not a Mul (counts * scale) of SpikeEncode" in n for n in notes), notes
