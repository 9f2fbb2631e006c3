"""spike-sparsity: the per-layer kernel choice from calibrated tile density and break-even."""

import json

import numpy as np

from sbc.passes.calibration import calibrate
from sbc.passes import parse_pipeline, run_passes
from sbc.passes.spike_sparsity import SpikeSparsity, spike_site
from tests.passes.helpers import check_pass
from tests.passes.spike_graphs import spiking_matmul_graph

K = 256  # two 128-channel groups: tiles of 6 rows x 128


def int8_layer():
    """x -> SpikeEncode -> SpikeMatMul with int8 weights (the quantised default pipeline)."""
    return run_passes(spiking_matmul_graph(k=K, n=32), "quantize-weights-int8,spike-matmul,dce")


def half_silent_inputs():
    """12 tokens (two row tiles); channels 128.. never fire: half the tiles are all zero."""
    x = np.random.default_rng(0).standard_normal((1, 12, K)).astype(np.float32)
    x[..., 128:] = 0
    return {"x": x}


def kernels(sparsity) -> list[dict]:
    """The choices the pass reports (PassResult.facts) for the int8 layer."""
    return sparsity.run(int8_layer()).facts["kernels"]


def spike_matmul(graph):
    (node,) = [n for n in graph.nodes if n.op == "SpikeMatMul"]
    return node


def test_below_break_even_skips_zero_tiles():
    graph = int8_layer()
    feeds = half_silent_inputs()
    stats = calibrate(graph, feeds)
    assert stats["sites"][0]["tile_density"] == 0.5
    sparsity = SpikeSparsity(stats=stats, break_even=0.6)
    (choice,) = sparsity.run(int8_layer()).facts["kernels"]
    _, after, modified = check_pass(sparsity, graph, feeds)
    assert modified and spike_matmul(after).attrs["kernel"] == "skip_zero_tiles"
    assert choice["site"] == spike_site(spike_matmul(after)) == stats["sites"][0]["name"]
    assert (choice["tile_density"], choice["break_even"]) == (0.5, 0.6)
    assert choice["shape"] == [512, K, 32]  # the rows option, K, N
    # run again: the choice is already made, nothing changes
    assert not SpikeSparsity(stats=stats, break_even=0.6).run(after).modified


def test_above_break_even_stays_dense():
    graph = int8_layer()
    feeds = half_silent_inputs()
    sparsity = SpikeSparsity(stats=calibrate(graph, feeds), break_even=0.4)
    _, after, modified = check_pass(sparsity, graph, feeds)
    assert not modified and spike_matmul(after).attrs["kernel"] == "dense"
    assert kernels(sparsity)[0]["why"] == "tile density 0.500 >= break-even 0.400"


def test_without_calibration_data_stays_dense():
    graph = int8_layer()
    sparsity = SpikeSparsity()
    _, after, modified = check_pass(sparsity, graph, half_silent_inputs())
    assert not modified and spike_matmul(after).attrs["kernel"] == "dense"
    assert kernels(sparsity)[0]["tile_density"] is None
    assert "no calibration data" in kernels(sparsity)[0]["why"]


def test_float_weights_stay_dense():
    graph = run_passes(spiking_matmul_graph(k=K, n=32), "spike-matmul{float-weights=1}")
    stats = calibrate(graph, half_silent_inputs())
    sparsity = SpikeSparsity(stats=stats, break_even=1.0)
    result = sparsity.run(graph)
    assert not result.modified
    assert result.facts["kernels"][0]["why"] == "f32 weights: no zero-tile skipping kernel"


def test_pipeline_options_read_a_stats_file(tmp_path):
    graph = int8_layer()
    path = tmp_path / "stats.json"
    path.write_text(json.dumps(calibrate(graph, half_silent_inputs())))
    (sparsity,) = parse_pipeline(f"spike-sparsity{{stats-file={path},break-even=0.75}}")
    assert sparsity.run(graph).modified
    assert spike_matmul(graph).attrs["kernel"] == "skip_zero_tiles"


def test_measured_break_even_comes_from_the_measure_option():
    """The pass times nothing itself (that is codegen's): it calls `measure`, and without one
    or a fixed break-even the layer stays dense, saying why."""
    graph = int8_layer()
    stats = calibrate(graph, half_silent_inputs())
    asked = []
    measure = lambda *shape: asked.append(shape) or {"break_even": 0.7}  # noqa: E731
    result = SpikeSparsity(stats=stats, measure=measure).run(graph)
    assert spike_matmul(result.graph).attrs["kernel"] == "skip_zero_tiles"
    assert asked == [(512, K, 32, 128, "i16")] and result.facts["break_even"] == [{"break_even": 0.7}]
    unmeasured = SpikeSparsity(stats=stats).run(int8_layer())
    assert not unmeasured.modified
    assert unmeasured.facts["kernels"][0]["why"].startswith("no break-even density")
