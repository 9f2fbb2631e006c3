"""Every kind of bad input gives one clear line: through the Python API (the right sbc error,
naming the key facts) and through the CLI (non-zero exit, one `sbc: error:` line on stderr, no
traceback). CLI error paths that need no compiled code do not import TVM, so they are quick."""

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
from sbc.runtimes.artifact import seal_manifest
from tests.conftest import make_mlp_model


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "sbc.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def assert_one_line_error(args, *fragments):
    code, _, err = run_cli(*args)
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sbc: error:"), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def assert_one_line(exc_info, *fragments):
    """The API's message: one line holding every fragment."""
    message = str(exc_info.value)
    assert "\n" not in message.strip(), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


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
    p.write_bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes())
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
    with pytest.raises(InvalidModelError) as info:
        sbc.compile(path)
    assert_one_line(info, str(path))
    assert_one_line_error(["compile", path], str(path))
    assert_one_line_error(["inspect", path], str(path))


def test_missing_files(tmp_path, mlp_onnx):
    with pytest.raises(InvalidModelError, match="no such file"):
        sbc.compile(tmp_path / "absent.onnx")
    with pytest.raises(ArtifactError, match="no such file"):
        sbc.load(tmp_path / "absent.sbc")
    assert_one_line_error(["compile", tmp_path / "absent.onnx"], "no such file")
    assert_one_line_error(["run", tmp_path / "absent.sbc", "--inputs", "x.npz"], "no such file")


def test_missing_inputs_file_and_unwritable_output(tmp_path, artifact, mlp_onnx):
    assert_one_line_error(["run", artifact, "--inputs", tmp_path / "nope.npz"],
                          "nope.npz", "no such inputs file")
    (tmp_path / "in.txt").write_text("not an npz")
    assert_one_line_error(["run", artifact, "--inputs", tmp_path / "in.txt"], "in.txt", ".npz")
    assert_one_line_error(["compile", mlp_onnx, "-o", tmp_path / "no_dir" / "m.sbc"],
                          "no_dir/m.sbc", "does not exist")


def test_checker_failure(tmp_path):
    model = make_mlp_model()
    model.graph.node[0].input[0] = "nowhere"
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(InvalidModelError, match="checker"):
        sbc.compile(path)
    assert_one_line_error(["compile", path], "bad.onnx")


# -- unsupported ---------------------------------------------------------------------------------

def test_unsupported_op_names_op_node_and_what_is_supported(tmp_path):
    path = one_node_model(tmp_path / "m.onnx", "Hardmax")
    with pytest.raises(UnsupportedError) as info:
        sbc.compile(path)
    assert_one_line(info, "'Hardmax'", "'the_node'", "supports", "MatMul")
    assert_one_line_error(["compile", path], "Hardmax", "the_node", "opset 18", "supports")


def test_unknown_attribute(tmp_path):
    path = one_node_model(tmp_path / "m.onnx", "Relu", attrs={"not_an_attr": 1})
    with pytest.raises(InvalidModelError) as info:
        sbc.compile(path)
    assert_one_line(info, "not_an_attr")
    assert_one_line_error(["compile", path], "not_an_attr")


def test_unsupported_attribute_value(tmp_path):
    node = helper.make_node("Pad", ["x", "pads"], ["y"], name="the_pad", mode="wrap")
    pads = helper.make_tensor("pads", TensorProto.INT64, [4], [0, 1, 0, 1])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])], initializer=[pads])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 10
    with pytest.raises(UnsupportedError) as info:
        sbc.compile(model)
    assert_one_line(info, "the_pad", "mode 'wrap'", "constant, edge, reflect")
    onnx.save(model, str(tmp_path / "pad.onnx"))
    assert_one_line_error(["compile", tmp_path / "pad.onnx"], "the_pad", "mode 'wrap'")


@pytest.mark.parametrize("opset", [12, 29])
def test_unsupported_opset(tmp_path, opset):
    path = one_node_model(tmp_path / "m.onnx", "Relu", opset=opset)
    with pytest.raises(UnsupportedError, match="opset"):
        sbc.compile(onnx.load(str(path)))


def test_unsupported_domain(tmp_path):
    path = one_node_model(tmp_path / "m.onnx", "FusedGemm", domain="com.microsoft")
    with pytest.raises((UnsupportedError, InvalidModelError), match="com.microsoft|FusedGemm"):
        sbc.compile(path)


@pytest.mark.parametrize("target", ["tpu", "cuda:0"])
def test_unsupported_target(tmp_path, mlp_onnx, target):
    with pytest.raises(UnsupportedError) as info:
        sbc.compile(mlp_onnx, target=target)
    assert_one_line(info, f"'{target}'", "supported: cpu")
    assert_one_line_error(["compile", mlp_onnx, "--target", target, "-o", tmp_path / "m.sbc"],
                          target, "supported: cpu")
    assert os.listdir(tmp_path) == []


# -- wrong inputs at run time -----------------------------------------------------------------------

WRONG_INPUTS = {
    "name": ({"nope": np.zeros((2, 8), np.float32)}, ["missing ['x']", "unexpected ['nope']"]),
    "dtype": ({"x": np.zeros((2, 8), np.float64)}, ["'x'", "dtype f32", "got f64"]),
    "int-dtype": ({"x": np.zeros((2, 8), np.int64)}, ["'x'", "dtype f32", "got i64"]),
    "shape": ({"x": np.zeros((2, 9), np.float32)}, ["'x'", "shape [batch, 8]", "(2, 9)"]),
    "rank": ({"x": np.zeros((8,), np.float32)}, ["'x'", "rank 2"]),
}


@pytest.mark.parametrize("case", WRONG_INPUTS)
def test_wrong_inputs(mlp_module, case):
    feeds, fragments = WRONG_INPUTS[case]
    with pytest.raises(InputError) as info:
        mlp_module.run(feeds)
    assert_one_line(info, *fragments)


def test_wrong_input_containers(mlp_module):
    with pytest.raises(InputError, match="dtype f32, got list"):  # no silent conversion
        mlp_module.run({"x": [[0.0] * 8] * 2})
    with pytest.raises(InputError, match="dict"):
        mlp_module.run(np.zeros((2, 8), np.float32))


@pytest.mark.parametrize("case", ["name", "dtype", "shape"])
def test_wrong_inputs_cli(tmp_path, artifact, case):
    feeds, fragments = WRONG_INPUTS[case]
    np.savez(tmp_path / "in.npz", **feeds)
    assert_one_line_error(["run", artifact, "--inputs", tmp_path / "in.npz"], *fragments)


# -- bad artifacts ---------------------------------------------------------------------------------

@pytest.fixture
def artifact(tmp_path, mlp_module):
    path = tmp_path / "mlp.sbc"
    mlp_module.save(path)
    return path


def _rewrite_member(path, member, mutate):
    """Rewrite one member through zipfile: the zip stays valid (CRCs match), only sbc's own
    checksums can notice."""
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members[member] = mutate(members[member])
    with zipfile.ZipFile(path, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)


def _flip_raw_byte(path, member):
    """Flip one byte of a member in place, as a bad disk would (the zip CRC breaks too)."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), "<u2")
        at = info.header_offset + 30 + int(name_len) + int(extra_len) + info.file_size // 2
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0xFF]))


@pytest.mark.parametrize("member", ["lib.so", "weights.safetensors"])
@pytest.mark.parametrize("how", ["rewritten", "in place"])
def test_corrupt_artifact(artifact, member, how):
    if how == "rewritten":
        _rewrite_member(artifact, member, lambda b: b[:100] + bytes([b[100] ^ 0xFF]) + b[101:])
    else:
        _flip_raw_byte(artifact, member)
    with pytest.raises(ArtifactError) as info:
        sbc.load(artifact)
    assert_one_line(info, f"checksum mismatch in {member}", "corrupt")
    if how == "in place":  # the CLI once per member is enough
        assert_one_line_error(["inspect", artifact], f"checksum mismatch in {member}")


def test_truncated_artifact(artifact):
    data = artifact.read_bytes()
    artifact.write_bytes(data[: len(data) // 3])
    with pytest.raises(ArtifactError) as info:
        sbc.load(artifact)
    assert_one_line(info, "mlp.sbc", "truncated")
    assert_one_line_error(["run", artifact, "--inputs", "x.npz"], "truncated")


@pytest.mark.parametrize("kind", ["random zip", "unrelated manifest", "manifest not json",
                                  "zeros", "onnx file"])
def test_foreign_artifacts(tmp_path, mlp_onnx, kind):
    path = tmp_path / "other.sbc"
    if kind == "zeros":
        path.write_bytes(b"\x00" * 64)
    elif kind == "onnx file":
        path.write_bytes(open(mlp_onnx, "rb").read())
    else:
        with zipfile.ZipFile(path, "w") as z:
            if kind == "random zip":
                z.writestr("readme.txt", "hello")
            elif kind == "unrelated manifest":
                z.writestr("manifest.json", json.dumps({"format": "something-else", "version": 3}))
            else:
                z.writestr("manifest.json", "{not json")
    with pytest.raises(ArtifactError) as info:
        sbc.load(path)
    assert_one_line(info, "other.sbc", "not an sbc artifact")
    if kind in ("random zip", "unrelated manifest"):
        assert_one_line_error(["inspect", path], "not an sbc artifact")


def test_version_mismatch(artifact):
    _rewrite_member(artifact, "manifest.json",
                    lambda b: json.dumps(dict(json.loads(b), sbc_version="9.9.0")).encode())
    with pytest.raises(ArtifactError) as info:
        sbc.load(artifact)
    assert_one_line(info, "written by sbc 9.9.0", f"this is sbc {sbc.__version__}")
    assert_one_line_error(["inspect", artifact], "9.9.0", sbc.__version__)


def test_format_version_mismatch(artifact):
    _rewrite_member(artifact, "manifest.json",
                    lambda b: json.dumps(dict(json.loads(b), format_version=7)).encode())
    with pytest.raises(ArtifactError, match="format version 7"):
        sbc.load(artifact)


@pytest.mark.parametrize("kind", ["cuda", "maca"])
def test_missing_device(artifact, kind):
    def retarget(b):
        manifest = json.loads(b)
        manifest["target"] = {"kind": kind, "arch": "sm_90"}
        return json.dumps(seal_manifest(manifest)).encode()  # a consistent manifest, other target
    _rewrite_member(artifact, "manifest.json", retarget)
    with pytest.raises(TargetUnavailableError) as info:
        sbc.load(artifact)
    assert_one_line(info, f"'{kind}'", "not available on this machine")
    assert_one_line_error(["run", artifact, "--inputs", "x.npz"], kind, "not available")
    code, out, _ = run_cli("inspect", artifact)  # inspecting needs no device
    assert code == 0 and kind in out


# -- interrupted writes leave nothing ----------------------------------------------------------------

@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_interrupted_save_leaves_nothing(tmp_path, mlp_module, monkeypatch, exc):
    import sbc.runtimes.artifact as art
    real = zipfile.ZipFile.open

    def failing(self, name, mode="r", *a, **k):  # the manifest is written, then it fails midway
        if name == art.WEIGHTS and mode == "w":
            raise exc
        return real(self, name, mode, *a, **k)
    monkeypatch.setattr(zipfile.ZipFile, "open", failing)
    with pytest.raises(type(exc)):
        mlp_module.save(tmp_path / "out.sbc")
    assert os.listdir(tmp_path) == []


def test_interrupted_save_keeps_previous_file(tmp_path, mlp_module, monkeypatch):
    import sbc.runtimes.artifact as art
    target = tmp_path / "out.sbc"
    mlp_module.save(target)
    before = target.read_bytes()

    def no_space(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(art.os, "fsync", no_space)
    with pytest.raises(OSError):
        mlp_module.save(target)
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["out.sbc"]


@pytest.mark.parametrize("exc, code", [(KeyboardInterrupt(), 130), (OSError(28, "No space left"), 2)])
def test_interrupted_cli_compile_leaves_nothing(tmp_path, mlp_onnx, monkeypatch, capsys, exc, code):
    """`sbc compile` interrupted while writing: exit 130 (or one error line), no file, no temp."""
    import sbc.runtimes.artifact as art
    from sbc.cli import main
    real = zipfile.ZipFile.open

    def failing(self, name, mode="r", *a, **k):
        if name == art.LIBRARY and mode == "w":
            raise exc
        return real(self, name, mode, *a, **k)
    monkeypatch.setattr(zipfile.ZipFile, "open", failing)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert main(["compile", mlp_onnx, "-o", out_dir / "m.sbc"]) == code
    assert os.listdir(out_dir) == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
