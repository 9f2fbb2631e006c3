"""Spike sparsity calibration and the energy report: every figure equals a direct NumPy
computation on the same data; the CLI writes JSON and PNGs and fails in one line."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from sbc.passes.calibration import _complete, calibrate
from sbc.report import ENERGY_PJ, load_stats, report
from sbc.cli import main
from sbc.errors import InputError
from sbc.frontend import import_onnx
from sbc.passes import run_passes

K, N = 16, 8


def neuron_model(path):
    """x [b, t, 16] -> the exported adaptive-threshold neuron -> MatMul W [16, 8]."""
    rng = np.random.default_rng(1)
    const = lambda name, v, dt=TensorProto.FLOAT: helper.make_tensor(  # noqa: E731
        name, dt, np.shape(v), np.ravel(v))
    inits = [const("W", rng.normal(size=(K, N)).astype(np.float32)),
             const("axes", [-1], TensorProto.INT64), const("k", np.float32(3)),
             const("lo", np.float32(1e-5)), const("hi", np.float32(1e4))]
    nodes = [helper.make_node("Abs", ["x"], ["a"]),
             helper.make_node("ReduceMean", ["a", "axes"], ["m"], keepdims=1),
             helper.make_node("Div", ["m", "k"], ["v0"]),
             helper.make_node("Clip", ["v0", "lo", "hi"], ["v"]),
             helper.make_node("Div", ["x", "v"], ["d"]),
             helper.make_node("Round", ["d"], ["r"]),
             helper.make_node("Mul", ["r", "v"], ["s"]),
             helper.make_node("MatMul", ["s", "W"], ["y"])]
    graph = helper.make_graph(
        nodes, "neuron", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", N])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return str(path)


def neuron_data(samples=3):
    """Heavy tails (counts past 7 and 15), signs, and two channels that never fire."""
    rng = np.random.default_rng(2)
    x = rng.standard_t(2, size=(samples, 2, 5, K)).astype(np.float32)
    x[..., [0, 5]] = 0
    return x


def counts_of(x):
    """The neuron in plain NumPy, in float32 as the exported graph computes it."""
    v = np.clip(np.mean(np.abs(x), axis=-1, keepdims=True) / np.float32(3),
                np.float32(1e-5), np.float32(1e4)).astype(np.float32)
    return np.round((x / v).astype(np.float32)).astype(np.int64)


def expected(n, fan_out):
    """Every figure of one site from its counts n [..., channels], directly."""
    m = np.abs(n).reshape(-1, n.shape[-1])
    popcount = lambda a: sum((a >> b) & 1 for b in range(3))  # noqa: E731
    train = {"binary": np.minimum(m, 3), "ternary": np.minimum(m, 3),
             "bitwise": popcount(np.minimum(m, 7)),
             "bitwise_bidirectional": popcount(np.minimum(m, 7))}
    hist = [int((m == i).sum()) for i in range(16)] + [int((m > 15).sum())]
    return {"tokens": m.shape[0], "channels": m.shape[1], "entries": m.size,
            "firing_rate": np.count_nonzero(m) / m.size, "spikes_per_channel": m.mean(),
            "spikes": int(m.sum()), "silent_channels": (m.max(axis=0) == 0).mean(),
            "histogram": hist, "mean_max_abs": m.max(axis=1).mean(),
            "zero_fraction": {c: 1 - t.sum() / (3 * m.size) for c, t in train.items()},
            "clipped": {c: (m > (3 if c in ("binary", "ternary") else 7)).mean()
                        for c in train},
            "fan_out": fan_out}


def assert_site(site, want):
    for key, value in want.items():
        if isinstance(value, dict):
            for c, v in value.items():
                assert site[key][c] == pytest.approx(v, rel=1e-12, abs=1e-15), (key, c)
        elif isinstance(value, list):
            assert site[key] == value, key
        else:
            assert site[key] == pytest.approx(value, rel=1e-12), key


@pytest.fixture(scope="module")
def neuron(tmp_path_factory):
    d = tmp_path_factory.mktemp("neuron")
    path = neuron_model(d / "neuron.onnx")
    data = d / "calib.npz"
    np.savez(data, x=neuron_data())
    return path, str(data), d


def test_small_graph_figures_equal_numpy(neuron):
    path, _, _ = neuron
    x = neuron_data()
    stats = calibrate(run_passes(import_onnx(path), None), {"x": x})
    assert stats["samples"] == 3 and len(stats["sites"]) == 1
    want = expected(counts_of(x), N)
    assert want["silent_channels"] == 2 / K and max(want["histogram"][8:]) > 0
    assert_site(stats["sites"][0], want)
    # one batch (no sample axis) gives the same figures as its samples one by one
    one = calibrate(run_passes(import_onnx(path), None), {"x": x.reshape(-1, 5, K)})
    assert one["samples"] == 1
    assert_site(one["sites"][0], want)


def test_tiny_model_figures_equal_numpy(tiny_onnx):
    from sbc.ir import interpreter
    graph = run_passes(import_onnx(tiny_onnx), None)
    ids = np.random.default_rng(0).integers(0, 256, size=(2, 16))
    stats = calibrate(graph, {"ids": ids})
    seen = {}  # the counts every SpikeEncode produced, seen independently
    feeds = _complete(graph, {"ids": ids})  # zero state, position 0
    interpreter.run(graph, feeds, lambda node, outs: node.op == "SpikeEncode"
                    and seen.setdefault(node.name, outs[0].astype(np.int64)))
    assert [s["name"] for s in stats["sites"]] == list(seen) and len(seen) == 12
    for site in stats["sites"]:
        assert site["fan_out"] > 0
        assert_site(site, expected(seen[site["name"]], site["fan_out"]))


def test_report_energy_arithmetic():
    site = lambda name, entries, nonzero, spikes, fan: {  # noqa: E731
        "name": name, "entries": entries, "firing_rate": nonzero / entries, "spikes": spikes,
        "spikes_per_channel": spikes / entries, "channels": 4, "silent_channel_count": 1,
        "silent_channels": 0.25, "zero_fraction": {"bitwise_bidirectional": 0.5},
        "fan_out": fan}
    rep = report({"sites": [site("a", 100, 40, 90, 10), site("b", 50, 50, 0, 6)]})
    a, b = rep["layers"]
    assert (a["macs"], a["accumulates"], b["macs"], b["accumulates"]) == (1000, 900, 300, 0)
    assert a["energy_fp16_pj"] == pytest.approx(1000 * 1.5)
    assert a["energy_int8_pj"] == pytest.approx(1000 * 0.23)
    assert a["energy_spiking_pj"] == pytest.approx(900 * 0.03)
    assert a["saving_vs_fp16"] == pytest.approx(1.5 * 1000 / (0.03 * 900))
    assert b["saving_vs_int8"] is None  # no spikes: no finite ratio (and JSON has no inf)
    t = rep["total"]
    assert (t["macs"], t["accumulates"], t["nonzero"]) == (1300, 900, 90)
    assert t["sparsity"] == pytest.approx(1 - 90 / 150)
    assert t["saving_vs_int8"] == pytest.approx(1300 * ENERGY_PJ["int8_mac"] / (900 * 0.03))
    assert t["silent_channels"] == pytest.approx(2 / 8)


def test_cli_calibrate_report_json_and_plots(neuron, capsys):
    path, data, d = neuron
    out = d / "stats.json"
    assert main(["calibrate", path, "--data", data, "-o", out]) == 0
    printed = capsys.readouterr().out
    assert "1 spiking sites, 3 sample(s)" in printed and "total: firing rate" in printed
    stats = load_stats(str(out))  # JSON round trip: the same figures as calibrate's dict
    direct = calibrate(run_passes(import_onnx(path), None), {"x": neuron_data()})
    direct["source"] = stats["source"]
    assert stats == json.loads(json.dumps(direct))
    plots = d / "plots"
    assert main(["report", out, "--json", "--plots", plots]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep == json.loads(json.dumps(dict(report(direct), plots=rep["plots"])))
    assert len(rep["plots"]) == 2
    for png in rep["plots"]:
        with open(png, "rb") as f:
            head = f.read()
        assert head.startswith(b"\x89PNG") and len(head) > 1000
    assert main(["report", out]) == 0
    assert "energy (45 nm)" in capsys.readouterr().out


def _one_line_error(argv, capsys, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sbc: error: ") and err.count("\n") == 1 and needle in err, err


def test_cli_errors_are_one_line(neuron, mlp_module, tmp_path, capsys):
    path, data, _ = neuron
    _one_line_error(["calibrate", path, "--data", tmp_path / "none.npz"], capsys, "no such")
    np.savez(tmp_path / "wrong.npz", y=np.zeros((2, 5, K), np.float32))
    _one_line_error(["calibrate", path, "--data", tmp_path / "wrong.npz", "-o",
                     tmp_path / "s.json"], capsys, "not model inputs")
    np.savez(tmp_path / "empty.npz")
    _one_line_error(["calibrate", path, "--data", tmp_path / "empty.npz", "-o",
                     tmp_path / "s.json"], capsys, "lacks input 'x'")
    assert not (tmp_path / "s.json").exists()
    (tmp_path / "bad.json").write_text("{not json")
    _one_line_error(["report", tmp_path / "bad.json"], capsys, "not an sbc artifact or calibration JSON")
    (tmp_path / "other.json").write_text('{"a": 1}')
    _one_line_error(["report", tmp_path / "other.json"], capsys, "not spike statistics")
    _one_line_error(["report", tmp_path / "missing.json"], capsys, "no such file")
    mlp_module.save(tmp_path / "mlp.sbc")
    _one_line_error(["report", tmp_path / "mlp.sbc"], capsys, "no spike statistics")
    (tmp_path / "junk.sbc").write_bytes(b"PK\x03\x04junk")
    _one_line_error(["report", tmp_path / "junk.sbc"], capsys, "junk.sbc")


def test_compile_calibrate_stores_the_figures_report_reads(neuron, capsys, tmp_path):
    """`sbc compile --calibrate` keeps the figures in the artifact's manifest for `sbc report`."""
    path, data, _ = neuron
    artifact = tmp_path / "n.sbc"
    assert main(["compile", path, "--calibrate", data, "-o", artifact]) == 0
    stats = load_stats(str(artifact))
    direct = calibrate(run_passes(import_onnx(path), None), {"x": neuron_data()})
    assert stats["sites"] == json.loads(json.dumps(direct["sites"]))
    capsys.readouterr()
    assert main(["report", artifact, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == json.loads(json.dumps(report(stats)["total"]))
    with pytest.raises(InputError):
        load_stats(str(tmp_path))


def test_tile_density_counts_all_zero_kernel_tiles(neuron):
    """Tiles of 6 tokens x 128 channels (here all 16), per sample: 10 tokens make a full and a
    short tile; quiet tokens zero a tile only if all of its tokens are quiet."""
    path, _, _ = neuron
    x = neuron_data()
    x[0, 0] = 0  # sample 0, tokens 0..4: with 5..5 the first tile is still live
    x[1, 0, :] = 0
    x[1, 1, 0] = 0  # sample 1: tokens 0..5 quiet -> its first tile is all zero
    stats = calibrate(run_passes(import_onnx(path), None), {"x": x})
    site = stats["sites"][0]
    n = counts_of(x).reshape(3, 10, K)
    live = sum(bool(np.any(s[r:r + 6])) for s in n for r in (0, 6))
    assert (site["tile"], live) == ([6, 128], 5)
    assert site["tile_density"] == live / 6


def test_break_even_measures_both_kernels():
    from sbc.codegen.spike_breakeven import DENSITIES, break_even, crossing
    result = break_even(96, 256, 64, repeats=3)
    assert 0.0 <= result["break_even"] <= 1.0
    assert len(result["skip_ms"]) == len(DENSITIES) and result["dense_ms"] > 0
    assert break_even(96, 256, 64) is result  # measured once per shape
    # the line through the skipping times meets the dense time: 1 + 2d = 2.5 at d = 0.75
    assert crossing([0.0, 0.5, 1.0], [1.0, 2.0, 3.0], 2.5) == pytest.approx(0.75)
    assert crossing([0.0, 0.5, 1.0], [3.0, 4.0, 5.0], 2.5) == 0.0  # never wins
    assert crossing([0.0, 0.5, 1.0], [1.0, 1.5, 2.0], 2.5) == 1.0  # always wins
    assert crossing([0.0, 1.0], [1.0, 1.0], 2.5) == 1.0  # flat and below


def test_compile_calibrate_chooses_spike_kernels(tmp_path, capsys, monkeypatch):
    """sbc.compile(calibrate=) runs spike-sparsity: per SpikeMatMul the kernel, the density
    and the measured break-even land in the manifest and the report, the build uses that
    kernel, and results are unchanged."""
    import sbc
    import sbc.codegen.spike_breakeven
    from sbc.codegen.kernels import spike_matmul as kernels
    from tests.passes.spike_graphs import spiking_matmul_graph
    built, int8_kernel = [], kernels.int8_kernel
    monkeypatch.setattr(sbc.codegen.spike_breakeven, "_CACHE", {})  # measured here, whatever ran before
    monkeypatch.setattr(kernels, "int8_kernel", lambda *a, **kw: built.append(
        kw["skip_zero_tiles"]) or int8_kernel(*a, **kw))
    x = np.random.default_rng(3).standard_normal((1, 12, 256)).astype(np.float32)
    x[..., 128:] = 0  # half the tiles all zero
    graph = spiking_matmul_graph(k=256, n=32)
    module = sbc.compile(graph, quantize="w8", calibrate={"x": x})
    stats = module.manifest["spike_stats"]
    (choice,) = stats["kernels"]
    (measured,) = stats["break_even"]
    assert choice["tile_density"] == 0.5 and choice["break_even"] == measured["break_even"]
    assert 0.0 <= choice["break_even"] <= 1.0
    assert choice["kernel"] == ("skip_zero_tiles" if 0.5 < choice["break_even"] else "dense")
    # the break-even timed both forms; the model (main and prefill programs) got the chosen one
    assert built[:2] == [False, True] and set(built[2:]) == {choice["kernel"] == "skip_zero_tiles"}
    dense = sbc.compile(graph, quantize="w8")
    np.testing.assert_array_equal(module.run({"x": x})["y"], dense.run({"x": x})["y"])
    module.save(tmp_path / "m.sbc")
    assert main(["report", str(tmp_path / "m.sbc")]) == 0
    row = capsys.readouterr().out.splitlines()[-1].split()
    assert row[0] == choice["layer"] and row[-1] == choice["kernel"] and row[1] == "0.500"
