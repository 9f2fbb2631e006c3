"""Every kind of bad input gives one clear line: through the Python API (the right sbc error)
and through the CLI (non-zero exit, one `sbc: error:` line on stderr, no traceback)."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import sbc
from sbc.errors import (ArtifactError, InputError, InvalidModelError, TargetUnavailableError,
                        UnsupportedError)
from tests.conftest import make_mlp_model


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "sbc.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_line_error(args, *fragments):
    code, _, err = run_cli(*args)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sbc: error:"), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def one_node_model(path, op_type, inputs=("x",), attrs=None, opset=18, domain=""):
    node = helper.make_node(op_type, list(inputs), ["y"], name="the_node", domain=domain, **(attrs or {}))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(i, TensorProto.FLOAT, [2, 3])
                                            for i in inputs],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


# -- malformed models ------------------------------------------------------------------------------

@pytest.fixture
def garbage(tmp_path):
    p = tmp_path / "garbage.onnx"
    p.write_bytes(os.urandom(300))
    return p


@pytest.fixture
def truncated(tmp_path, mlp_onnx):
    p = tmp_path / "truncated.onnx"
    data = open(mlp_onnx, "rb").read()
    p.write_bytes(data[: len(data) // 2])
    return p


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "notes.onnx"
    p.write_text("this is not a model\n" * 20)
    return p


@pytest.mark.parametrize("which", ["garbage", "truncated", "text_file"])
def test_malformed_model(which, request):
    path = request.getfixturevalue(which)
    with pytest.raises(InvalidModelError):
        sbc.compile(path)
    assert_one_line_error(["compile", path], str(path))


def test_missing_file(tmp_path):
    with pytest.raises(InvalidModelError, match="no such file"):
        sbc.compile(tmp_path / "absent.onnx")
    assert_one_line_error(["compile", tmp_path / "absent.onnx"], "no such file")


def test_checker_failure(tmp_path):
    model = make_mlp_model()
    model.graph.node[0].input[0] = "nowhere"
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(InvalidModelError, match="checker"):
        sbc.compile(path)


# -- unsupported ---------------------------------------------------------------------------------

def test_unsupported_op_names_op_node_and_what_is_supported(tmp_path):
    path = one_node_model(tmp_path / "m.onnx", "Hardmax")
    with pytest.raises(UnsupportedError) as info:
        sbc.compile(path)
    message = str(info.value)
    assert "'Hardmax'" in message and "'the_node'" in message and "supports" in message and "MatMul" in message
    assert_one_line_error(["compile", path], "Hardmax", "the_node", "opset 18")


def test_unknown_attribute(tmp_path):
    path = one_node_model(tmp_path / "m.onnx", "Relu", attrs={"not_an_attr": 1})
    with pytest.raises(InvalidModelError, match="not_an_attr"):
        sbc.compile(path)


def test_unsupported_attribute_value(tmp_path):
    node = helper.make_node("Pad", ["x", "pads"], ["y"], name="the_pad", mode="wrap")
    pads = helper.make_tensor("pads", TensorProto.INT64, [4], [0, 1, 0, 1])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])], initializer=[pads])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 10
    with pytest.raises(UnsupportedError) as info:
        sbc.compile(model)
    assert all(s in str(info.value) for s in ("the_pad", "mode 'wrap'", "constant, edge, reflect"))


@pytest.mark.parametrize("opset", [12, 29])
def test_unsupported_opset(tmp_path, opset):
    path = one_node_model(tmp_path / "m.onnx", "Relu", opset=opset)
    model = onnx.load(str(path))
    with pytest.raises(UnsupportedError, match="opset"):
        sbc.compile(model)


def test_unsupported_domain(tmp_path):
    path = one_node_model(tmp_path / "m.onnx", "FusedGemm", domain="com.microsoft")
    with pytest.raises((UnsupportedError, InvalidModelError), match="com.microsoft|FusedGemm"):
        sbc.compile(path)


@pytest.mark.parametrize("target", ["cuda", "maca", "tpu"])
def test_unsupported_target(mlp_onnx, target):
    with pytest.raises(UnsupportedError, match="supported: cpu"):
        sbc.compile(mlp_onnx, target=target)
    assert_one_line_error(["compile", mlp_onnx, "--target", target], target)


# -- wrong inputs at run time -----------------------------------------------------------------------

@pytest.mark.parametrize("feeds, fragment", [
    ({"nope": np.zeros((2, 8), np.float32)}, "missing ['x']"),
    ({"x": np.zeros((2, 8), np.float64)}, "dtype f32"),
    ({"x": np.zeros((2, 9), np.float32)}, "shape [batch, 8]"),
    ({"x": np.zeros((8,), np.float32)}, "rank 2"),
])
def test_wrong_inputs(mlp_module, feeds, fragment):
    with pytest.raises(InputError) as info:
        mlp_module.run(feeds)
    assert fragment in str(info.value)


def test_wrong_inputs_cli(tmp_path, mlp_module):
    artifact = tmp_path / "mlp.sbc"
    mlp_module.save(artifact)
    np.savez(tmp_path / "in.npz", x=np.zeros((2, 8), np.int64))
    assert_one_line_error(["run", artifact, "--inputs", tmp_path / "in.npz"], "dtype f32")


# -- bad artifacts ---------------------------------------------------------------------------------

@pytest.fixture
def artifact(tmp_path, mlp_module):
    path = tmp_path / "mlp.sbc"
    mlp_module.save(path)
    return path


def _rewrite_member(path, member, mutate):
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members[member] = mutate(members[member])
    with zipfile.ZipFile(path, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)


@pytest.mark.parametrize("member", ["lib.so", "weights.npz"])
def test_corrupt_artifact(artifact, member):
    _rewrite_member(artifact, member, lambda b: b[:100] + bytes([b[100] ^ 0xFF]) + b[101:])
    with pytest.raises(ArtifactError, match=f"checksum mismatch in {member}"):
        sbc.load(artifact)
    assert_one_line_error(["inspect", artifact], "checksum")


def test_truncated_artifact(artifact):
    data = artifact.read_bytes()
    artifact.write_bytes(data[: len(data) // 3])
    with pytest.raises(ArtifactError):
        sbc.load(artifact)
    assert_one_line_error(["run", artifact, "--inputs", "x.npz"], "artifact")


def test_foreign_artifacts(tmp_path):
    plain = tmp_path / "other.sbc"
    with zipfile.ZipFile(plain, "w") as z:
        z.writestr("readme.txt", "hello")
    other = tmp_path / "other2.sbc"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("manifest.json", json.dumps({"format": "something-else"}))
    for path in (plain, other, tmp_path / "x.sbc"):
        if not path.exists():
            path.write_bytes(b"\x00" * 64)
        with pytest.raises(ArtifactError, match="not an sbc artifact"):
            sbc.load(path)


def test_version_mismatch(artifact):
    _rewrite_member(artifact, "manifest.json",
                    lambda b: json.dumps(dict(json.loads(b), sbc_version="9.9.0")).encode())
    with pytest.raises(ArtifactError, match="written by sbc 9.9.0"):
        sbc.load(artifact)
    assert_one_line_error(["inspect", artifact], "9.9.0")


def test_missing_device(artifact):
    def to_cuda(b):
        manifest = json.loads(b)
        manifest["target"]["kind"] = "cuda"
        return json.dumps(manifest).encode()
    _rewrite_member(artifact, "manifest.json", to_cuda)
    with pytest.raises(TargetUnavailableError, match="cuda"):
        sbc.load(artifact)


# -- interrupted writes leave nothing ----------------------------------------------------------------

@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_interrupted_save_leaves_nothing(tmp_path, mlp_module, monkeypatch, exc):
    import sbc.runtimes.artifact as art
    real = zipfile.ZipFile.writestr

    def failing(self, name, data, *a, **k):
        if name == art.WEIGHTS:
            raise exc
        return real(self, name, data, *a, **k)
    monkeypatch.setattr(zipfile.ZipFile, "writestr", failing)
    with pytest.raises(type(exc)):
        mlp_module.save(tmp_path / "out.sbc")
    assert os.listdir(tmp_path) == []


def test_interrupted_save_keeps_previous_file(tmp_path, mlp_module, monkeypatch):
    target = tmp_path / "out.sbc"
    mlp_module.save(target)
    before = target.read_bytes()
    monkeypatch.setattr(np, "savez", lambda *a, **k: (_ for _ in ()).throw(OSError("no space")))
    with pytest.raises(OSError):
        mlp_module.save(target)
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["out.sbc"]
