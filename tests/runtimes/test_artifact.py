"""The `.sbc` container on its own: written with a stand-in library (no compile, no TVM), so
these check the format, weights packing, atomic writes and the checks on reading."""

import json
import os
import zipfile

import numpy as np
import pytest

import sbc
from sbc.errors import ArtifactError, TargetUnavailableError
from sbc.ir.dims import Sym, parse_dim
from sbc.ir.types import TensorType
from sbc.runtimes import artifact as art

LIB = b"\x7fELF not really a library" * 10


def manifest_for(params, target=None):
    return {
        "target": target or {"kind": "cpu", "arch": "x86_64", "features": []},
        "inputs": art.signature_to_json([("ids", TensorType("i64", (Sym.var("batch"), Sym.var("seq"))))]),
        "outputs": art.signature_to_json([("logits", TensorType("f32", (Sym.var("batch"), parse_dim("2*seq + 1"), 4)))]),
        "param_names": list(params),
        "source": {"name": "m.onnx", "sha256": "0" * 64},
    }


# names that np.savez(**params) could not take, dtypes and shapes with edge cases
PARAMS = {
    "file": np.arange(6, dtype=np.float32).reshape(2, 3),
    "allow_pickle": np.array(3.5, np.float64),            # 0-d
    "a/b.c::0": np.ones((0, 4), np.float16),              # empty, odd name
    "mask": np.array([True, False, True]),
    "t": np.arange(12, dtype=np.int8).reshape(3, 4).T,    # not C-contiguous
}


@pytest.fixture
def written(tmp_path):
    path = tmp_path / "m.sbc"
    art.write_artifact(path, LIB, PARAMS, manifest_for(PARAMS))
    return path


def test_round_trip(written):
    a = art.read_artifact(written)
    assert a.library == LIB
    assert list(a.params) == list(PARAMS)
    for name, value in PARAMS.items():
        assert a.params[name].dtype == value.dtype and a.params[name].shape == value.shape
        np.testing.assert_array_equal(a.params[name], value)
    assert [str(t) for _, t in a.inputs] == ["i64[batch, seq]"]
    assert a.outputs[0][1].shape == (Sym.var("batch"), 2 * Sym.var("seq") + 1, 4)


def test_layout_stored_zip_with_aligned_weights(written):
    with zipfile.ZipFile(written) as z:
        assert sorted(z.namelist()) == ["lib.so", "manifest.json", "weights.bin"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
        manifest = json.loads(z.read("manifest.json"))
    assert manifest["inputs"][0]["shape"] == ["batch", "seq"]
    assert all(e["offset"] % art.ALIGN == 0 for e in manifest["weights"])
    assert manifest["files"]["lib.so"]["size"] == len(LIB)
    assert manifest["source"] == {"name": "m.onnx", "sha256": "0" * 64}


def test_atomic_write_replaces_only_on_success(tmp_path, monkeypatch):
    path = tmp_path / "m.sbc"
    art.write_artifact(path, LIB, PARAMS, manifest_for(PARAMS))
    before = path.read_bytes()

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(art.os, "replace", interrupted)  # the very last step
    with pytest.raises(KeyboardInterrupt):
        art.write_artifact(path, b"new", {}, manifest_for({}))
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.sbc"]


def test_atomic_path_names_the_requested_file(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        with art.atomic_path(tmp_path / "missing_dir" / "m.sbc"):
            pass
    assert info.value.filename.endswith("missing_dir/m.sbc")


def test_member_checksums(written):
    with zipfile.ZipFile(written) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["weights.bin"] = members["weights.bin"][:-1] + b"\x01"
    with zipfile.ZipFile(written, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    with pytest.raises(ArtifactError, match="checksum mismatch in weights.bin"):
        art.read_artifact(written)


def test_missing_member_and_manifest_keys(tmp_path, written):
    with zipfile.ZipFile(written) as z:
        manifest = json.loads(z.read("manifest.json"))
    for broken, fragment in [(dict(manifest, files={"lib.so": manifest["files"]["lib.so"]}), "lists no weights.bin"),
                             ({k: v for k, v in manifest.items() if k != "inputs"}, "lacks inputs")]:
        path = tmp_path / "broken.sbc"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("manifest.json", json.dumps(broken))
            z.writestr("lib.so", LIB)
        with pytest.raises(ArtifactError, match=fragment):
            art.read_artifact(path)


@pytest.mark.parametrize("written_by, ok", [("0.1.7", True), ("0.2.0", False), ("1.1.0", False)])
def test_version_compatibility_is_major_minor(written_by, ok, monkeypatch):
    monkeypatch.setattr(sbc.version, "__version__", "0.1.3")
    manifest = {"format_version": art.FORMAT_VERSION, "sbc_version": written_by}
    if ok:
        art.check_version("m.sbc", manifest)
    else:
        with pytest.raises(ArtifactError, match=f"written by sbc {written_by}, this is sbc 0.1.3"):
            art.check_version("m.sbc", manifest)


def test_not_an_artifact(tmp_path):
    (tmp_path / "d.sbc").mkdir()
    with pytest.raises(ArtifactError, match="is a directory"):
        art.read_artifact(tmp_path / "d.sbc")
    (tmp_path / "list.sbc").write_bytes(b"")
    with zipfile.ZipFile(tmp_path / "list.sbc", "w") as z:
        z.writestr("manifest.json", "[1, 2]")
    with pytest.raises(ArtifactError, match="not an sbc artifact"):
        art.read_artifact(tmp_path / "list.sbc")


def test_check_runnable():
    host = {"kind": "cpu"}
    art.check_runnable({"target": host})  # the host itself always runs
    with pytest.raises(TargetUnavailableError, match="'cuda'"):
        art.check_runnable({"target": {"kind": "cuda"}}, host_cpu=False)
    with pytest.raises(TargetUnavailableError, match="compiled for riscv64"):
        art.check_runnable({"target": {"kind": "cpu", "arch": "riscv64"}})
    from sbc.runtimes.machine import host_cpu_features
    cpu = host_cpu_features()
    with pytest.raises(TargetUnavailableError, match="amx_imaginary"):
        art.check_runnable({"target": {"kind": "cpu", "arch": cpu["arch"],
                                       "features": cpu["features"] + ["amx_imaginary"]}})
