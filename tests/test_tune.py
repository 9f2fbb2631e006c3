"""`--tune N` (codegen/tune.py): a static kernel is searched by MetaSchedule and the faster
schedule kept, the tuned build computes what the untuned one does, the log in the cache
folder answers a second compile without any search or timing, and what is not tuned (symbolic
shapes, hand-written kernels, GPU targets, another CPU, a bad N) says why."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import sbc
import sbc.codegen.tune as tune
from sbc.cli import main
from sbc.errors import UnsupportedError
from sbc.ir import Graph, TensorType

TRIALS = 4


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty compile cache folder (the tuning log goes under it), the cache turned on."""
    monkeypatch.setenv("SBC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SBC_NO_CACHE", "0")
    return tmp_path / "cache"


@pytest.fixture
def static_onnx(tmp_path):
    """y = x @ W + b, all [64, 64]: one fused kernel of static shape."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        "static", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 64])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    path = tmp_path / "static.onnx"
    onnx.save(model, path)
    return str(path)


def no_tuning(monkeypatch):
    """From here on, any MetaSchedule search or kernel timing fails the test."""
    monkeypatch.setattr(tune, "search", lambda *a, **k: pytest.fail("searched again"))
    monkeypatch.setattr(tune, "kernel_ms", lambda *a, **k: pytest.fail("timed again"))


def y(module):
    x = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)
    return module.run({"x": x})["y"]


def only_kernel(module) -> dict:
    (entry,) = module.manifest["tuning"]["kernels"]
    return entry


def test_tune_keeps_the_faster_schedule_and_the_log_answers_later(cache, static_onnx, monkeypatch):
    untuned = sbc.compile(static_onnx)  # cached: the tuned compile below must not get it
    tuned = sbc.compile(static_onnx, tune=TRIALS)
    assert not tuned.from_cache
    entry = only_kernel(tuned)
    assert entry["trials"] == TRIALS and not entry["from_log"]
    assert entry["sbc_ms"] > 0 and entry["metaschedule_ms"] > 0
    faster = entry["metaschedule_ms"] < tune.MARGIN * entry["sbc_ms"]
    assert entry["kept"] == ("MetaSchedule" if faster else "sbc")
    np.testing.assert_allclose(y(tuned), y(untuned), rtol=1e-5, atol=1e-4)

    (log,) = (cache / "tune").iterdir()  # one folder for this machine's target
    assert len((log / "database_tuning_record.json").read_text().splitlines()) >= 1
    decisions = json.loads((log / "decisions.json").read_text())["kernels"]
    assert [d["kept"] for d in decisions.values()] == [entry["kept"]]

    no_tuning(monkeypatch)
    again = sbc.compile(static_onnx, tune=TRIALS, cache=False)
    assert only_kernel(again) == {**entry, "from_log": True}
    assert again.library == tuned.library  # the same kernel
    np.testing.assert_array_equal(y(again), y(tuned))
    assert sbc.compile(static_onnx, tune=TRIALS).from_cache  # the key holds --tune's trials

    # the other decision, as the log states it: both schedules come back from the log
    other = "sbc" if entry["kept"] == "MetaSchedule" else "MetaSchedule"
    (log / "decisions.json").write_text(json.dumps(
        {"kernels": {k: {**d, "kept": other} for k, d in decisions.items()}}))
    flipped = sbc.compile(static_onnx, tune=TRIALS, cache=False)
    assert only_kernel(flipped)["kept"] == other
    assert flipped.library != tuned.library  # the other kernel
    np.testing.assert_allclose(y(flipped), y(untuned), rtol=1e-5, atol=1e-4)


def test_symbolic_shapes_and_hand_written_kernels_are_skipped(cache, mlp_onnx, monkeypatch):
    no_tuning(monkeypatch)
    kernels = sbc.compile(mlp_onnx, tune=TRIALS).manifest["tuning"]["kernels"]
    assert kernels and all(k["skipped"] == "symbolic shape" for k in kernels)
    g = Graph("la")  # LinearAttention of static shape: sbc's hand-written kernel
    ins = [g.add_input(n, TensorType("f32", (1, 16, w)))
           for n, w in (("q", 32), ("k", 16), ("v", 32))]
    node = g.add("LinearAttention", ins,
                 {"q_num_heads": 4, "kv_num_heads": 2, "update_rule": "linear"})
    g.set_outputs(node.outputs, ["o", "s"])
    kernels = sbc.compile(g, tune=TRIALS).manifest["tuning"]["kernels"]
    assert {"kernel": "linearattention", "skipped": "hand-written kernel"} in kernels


def test_the_cli_reports_each_kernel(cache, static_onnx, mlp_onnx, tmp_path, capsys):
    assert main(["compile", static_onnx, "--tune", TRIALS, "-o", tmp_path / "s.sbc"]) == 0
    out = capsys.readouterr().out
    assert "tune: fused_matmulpacked_add: sbc " in out and "(4 trials, tuned now): kept " in out
    assert main(["compile", mlp_onnx, "--tune", TRIALS, "-o", tmp_path / "m.sbc"]) == 0
    assert ": skipped (symbolic shape)" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--tune", "4", "--target", "cuda"], "--tune applies to the cpu target"),
    (["--tune", "4", "--target", "maca"], "--tune applies to the cpu target"),
    (["--tune", "0"], "--tune takes a positive number of MetaSchedule trials per kernel, got 0"),
    (["--tune", "-3"], "got -3"),
    (["--tune", "4", "--cpu", "ANOTHER"], "--tune times kernels on this machine's CPU"),
])
def test_what_cannot_be_tuned_is_one_line(mlp_onnx, tmp_path, capsys, args, message):
    from sbc.runtimes.machine import host_cpu_name
    another = "znver4" if host_cpu_name() != "znver4" else "skylake-avx512"  # a CPU LLVM knows
    args = [another if a == "ANOTHER" else a for a in args]
    assert main(["compile", mlp_onnx, "-o", tmp_path / "m.sbc", *args]) != 0
    err = capsys.readouterr().err
    assert err.startswith("sbc: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "m.sbc").exists()


def test_the_api_refuses_a_bad_trial_count(mlp_onnx):
    for bad in (True, 2.5, "4"):
        with pytest.raises(UnsupportedError, match="positive number of MetaSchedule trials"):
            sbc.compile(mlp_onnx, tune=bad)
