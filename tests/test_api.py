"""The Python API: compile -> run -> save -> load -> run, signatures, manifest."""

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

import sbc
from sbc.frontend import import_onnx
from sbc.ir.dims import Sym
from sbc.runtimes.artifact import FORMAT_VERSION
from tests.conftest import make_mlp_model


def reference(x):
    w, b = (onnx.numpy_helper.to_array(t) for t in make_mlp_model().graph.initializer)
    return np.maximum(x @ w + b, 0)


def test_compile_run_save_load_round_trip(tmp_path, mlp_module):
    x = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    first = mlp_module.run({"x": x})["y"]
    np.testing.assert_allclose(first, reference(x), rtol=1e-5, atol=1e-5)
    path = tmp_path / "mlp.sbc"
    mlp_module.save(path)
    loaded = sbc.load(path)
    np.testing.assert_array_equal(loaded({"x": x})["y"], first)  # __call__ == run
    np.testing.assert_array_equal(loaded.run({"x": x})["y"], first)
    assert loaded.inputs == mlp_module.inputs and loaded.outputs == mlp_module.outputs
    # saving a loaded module again gives an equivalent artifact
    loaded.save(tmp_path / "again.sbc")
    np.testing.assert_array_equal(sbc.load(str(tmp_path / "again.sbc")).run({"x": x})["y"], first)


def test_loaded_weights_are_held_once(tmp_path, tiny_module):
    """sbc.load reads the weights into one aligned buffer and the runtime uses them in place
    (no second copy): each TVM weight tensor is the module's own array."""
    tiny_module.save(tmp_path / "m.sbc")
    loaded = sbc.load(tmp_path / "m.sbc")
    runtime = loaded._runtime
    names = loaded.manifest["param_names"]
    shared = [runtime.params[i].data_ptr() == loaded.params[n].ctypes.data
              for i, n in enumerate(names) if loaded.params[n].size]
    assert shared and all(shared)
    ids = np.zeros((1, 4), np.int64)
    np.testing.assert_array_equal(loaded.run({"ids": ids})["logits"],
                                  tiny_module.run({"ids": ids})["logits"])


def test_signature_keeps_symbolic_dims(mlp_module):
    (name, t), = mlp_module.inputs
    assert name == "x" and t.dtype == "f32" and t.shape == (Sym.var("batch"), 8)
    assert [(n, str(t)) for n, t in mlp_module.outputs] == [("y", "f32[batch, 4]")]
    for batch in (1, 5):
        assert mlp_module.run({"x": np.ones((batch, 8), np.float32)})["y"].shape == (batch, 4)


def test_run_accepts_non_contiguous_inputs(mlp_module):
    x = np.random.default_rng(1).normal(size=(8, 6)).astype(np.float32).T  # a (6, 8) view
    assert not x.flags.c_contiguous
    np.testing.assert_allclose(mlp_module.run({"x": x})["y"], reference(x), rtol=1e-5, atol=1e-5)


def test_compile_accepts_model_proto_and_graph():
    proto = make_mlp_model()
    x = np.ones((2, 8), np.float32)
    from_proto = sbc.compile(proto)
    a = from_proto.run({"x": x})["y"]
    b = sbc.compile(import_onnx(proto)).run({"x": x})["y"]
    np.testing.assert_array_equal(a, b)
    assert from_proto.manifest["source"]["name"] == "mlp" and len(from_proto.manifest["source"]["sha256"]) == 64


def test_manifest_records_target_signature_and_checksums(tmp_path, mlp_module, mlp_onnx):
    from sbc.runtimes.artifact import read_artifact
    mlp_module.save(tmp_path / "m.sbc")
    manifest = read_artifact(tmp_path / "m.sbc").manifest
    assert manifest["format"] == "sbc-artifact" and manifest["format_version"] == FORMAT_VERSION
    assert manifest["sbc_version"] == sbc.__version__ and manifest["created"].endswith("Z")
    assert manifest["target"]["kind"] == "cpu" and manifest["target"]["cpu"]
    assert "features" in manifest["target"] and manifest["target"]["arch"]
    assert manifest["inputs"] == [{"name": "x", "dtype": "f32", "shape": ["batch", "8"]}]
    assert manifest["param_names"] == ["W", "b"]
    assert set(manifest["files"]) == {"lib.so", "weights.safetensors"}
    assert manifest["source"]["name"] == os.path.basename(mlp_onnx)
    assert mlp_module.manifest["files"] == manifest["files"]  # save() updates the manifest


def test_unknown_targets_name_the_supported_ones(mlp_onnx):
    with pytest.raises(sbc.errors.UnsupportedError, match="unknown target 'tpu'; supported: cpu, cuda, maca"):
        sbc.compile(mlp_onnx, target="tpu")


def test_public_names():
    assert sbc.__version__ and callable(sbc.compile) and callable(sbc.load)
    assert {"Module", "compile", "load", "__version__"} <= set(sbc.__all__)


def test_quantize_w8_computes_spiking_matmuls_with_int8_weights(tiny_onnx, tiny_module):
    module = sbc.compile(tiny_onnx, quantize="w8")
    ops = module.manifest["ops"]
    assert ops.get("SpikeMatMul", 0) >= 12 and "SpikeMatMul" not in tiny_module.manifest["ops"]
    assert any(p.dtype == np.int8 for p in module.params.values())
    ids = np.random.default_rng(5).integers(0, 256, size=(1, 24))
    got, want = module.run({"ids": ids})["logits"], tiny_module.run({"ids": ids})["logits"]
    # int8 weights move the tiny model's random logits a little, not beyond recognition
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.95


def test_quantize_options_are_checked(mlp_onnx):
    with pytest.raises(sbc.errors.UnsupportedError, match="unknown quantization 'w4'; supported: w8"):
        sbc.compile(mlp_onnx, quantize="w4")
    with pytest.raises(sbc.errors.UnsupportedError, match="name 'quantize-weights-int8'"):
        sbc.compile(mlp_onnx, quantize="w8", passes="dce")


THREADS_AFTER_RUN = """
import os, sys, numpy as np, sbc, tvm
assert "TVM_NUM_THREADS" not in os.environ or os.environ["TVM_NUM_THREADS"] == "1", "sbc set it"
threads = None if sys.argv[2] == "None" else int(sys.argv[2])
sbc.load(sys.argv[1], num_threads=threads).run({"x": np.ones((1, 8), np.float32)})
print(tvm.get_global_func("runtime.NumThreads")())
"""


@pytest.mark.parametrize("preset, threads, expected", [
    (None, None, len(os.sched_getaffinity(0))), ("1", None, 1), (None, 1, 1)])
def test_kernels_use_every_core_unless_told(tmp_path, mlp_module, preset, threads, expected):
    """TVM alone would use half the cores here (it assumes two hardware threads per core);
    a run sets its thread's pool to one per core, TVM_NUM_THREADS or num_threads."""
    mlp_module.save(tmp_path / "mlp.sbc")
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    if preset:
        env["TVM_NUM_THREADS"] = preset
    out = subprocess.run([sys.executable, "-c", THREADS_AFTER_RUN, str(tmp_path / "mlp.sbc"),
                          str(threads)], env=env, capture_output=True, text=True, check=True)
    assert int(out.stdout) == expected


def test_import_leaves_the_environment_alone():
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    code = "import os, json; before = dict(os.environ); import sbc, sbc.torch; " \
           "print(json.dumps(sorted(set(os.environ.items()) ^ set(before.items()))))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, 10_000])
def test_num_threads_is_checked(tmp_path, mlp_module, bad):
    mlp_module.save(tmp_path / "mlp.sbc")
    with pytest.raises(sbc.errors.InputError, match="num_threads must be") as e:
        sbc.load(tmp_path / "mlp.sbc", num_threads=bad)
    assert "\n" not in str(e.value)
    with pytest.raises(sbc.errors.InputError, match="num_threads must be"):
        sbc.compile(tmp_path / "nothing-read.onnx", num_threads=bad)


def test_one_thread_gives_the_same_outputs(tmp_path, tiny_module):
    """Each run sets the pool to its own module's count: two modules with different counts,
    alternating, each get theirs, and the outputs do not depend on it."""
    import tvm
    tiny_module.save(tmp_path / "tiny.sbc")
    one, every = sbc.load(tmp_path / "tiny.sbc", num_threads=1), sbc.load(tmp_path / "tiny.sbc")
    ids = np.random.default_rng(3).integers(0, 256, size=(1, 24))
    for module, threads in [(one, 1), (every, len(os.sched_getaffinity(0))), (one, 1)]:
        out = module.run({"ids": ids})["logits"]
        assert tvm.get_global_func("runtime.NumThreads")() == threads
        np.testing.assert_array_equal(out, tiny_module.run({"ids": ids})["logits"])
    every.num_threads = 1
    every.run({"ids": ids})
    assert tvm.get_global_func("runtime.NumThreads")() == 1
