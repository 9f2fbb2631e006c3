"""The Python API: compile -> run -> save -> load -> run."""

import numpy as np
import onnx

import sbc
from sbc.frontend import import_onnx
from tests.conftest import make_mlp_model


def test_compile_run_save_load_round_trip(tmp_path, mlp_module):
    x = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    first = mlp_module.run({"x": x})["y"]
    path = tmp_path / "mlp.sbc"
    mlp_module.save(path)
    again = sbc.load(path)({"x": x})["y"]
    np.testing.assert_array_equal(first, again)
    w, b = (onnx.numpy_helper.to_array(t) for t in make_mlp_model().graph.initializer)
    np.testing.assert_allclose(first, np.maximum(x @ w + b, 0), rtol=1e-5, atol=1e-5)


def test_signature_keeps_symbolic_dims(mlp_module):
    assert [(n, str(t)) for n, t in mlp_module.inputs] == [("x", "f32[batch, 8]")]
    assert [(n, str(t)) for n, t in mlp_module.outputs] == [("y", "f32[batch, 4]")]
    for batch in (1, 5):
        assert mlp_module.run({"x": np.ones((batch, 8), np.float32)})["y"].shape == (batch, 4)


def test_compile_accepts_model_proto_and_graph():
    proto = make_mlp_model()
    x = np.ones((2, 8), np.float32)
    a = sbc.compile(proto).run({"x": x})["y"]
    b = sbc.compile(import_onnx(proto)).run({"x": x})["y"]
    np.testing.assert_array_equal(a, b)


def test_manifest_records_target_and_checksums(tmp_path, mlp_module):
    from sbc.runtimes.artifact import read_artifact
    mlp_module.save(tmp_path / "m.sbc")
    manifest = read_artifact(str(tmp_path / "m.sbc")).manifest
    assert manifest["target"]["kind"] == "cpu" and manifest["target"]["cpu"]
    assert set(manifest["files"]) == {"lib.so", "weights.npz"}
    assert manifest["sbc_version"] == sbc.__version__
