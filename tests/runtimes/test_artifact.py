"""The `.sbc` container on its own: written with a stand-in library (no compile, no TVM), so
these check the format, weights packing, atomic writes and the checks on reading."""

import json
import os
import zipfile

import numpy as np
import pytest

import sbc
from sbc.errors import ArtifactError
from sbc.ir.dims import Sym, parse_dim
from sbc.ir.types import TensorType, numpy_dtype
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
    "w": (np.arange(10, dtype=np.float32) / 3).astype(numpy_dtype("bf16")),  # a kept checkpoint dtype
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
        assert sorted(z.namelist()) == ["lib.so", "manifest.json", "weights.safetensors"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
        manifest = json.loads(z.read("manifest.json"))
    assert manifest["inputs"][0]["shape"] == ["batch", "seq"]
    assert all(e["offset"] % art.ALIGN == 0 for e in manifest["weights"])
    assert manifest["files"]["lib.so"]["size"] == len(LIB)
    assert manifest["source"] == {"name": "m.onnx", "sha256": "0" * 64}


def test_weights_are_safetensors_that_the_safetensors_package_reads(written):
    """The member is a standard safetensors file (the package reads it back equal, bf16
    included: through torch, as NumPy has no bf16), with the data 64-byte aligned: the header
    padded with spaces, gaps as U8 padding tensors."""
    import torch
    from safetensors.torch import load
    with zipfile.ZipFile(written) as z:
        blob = z.read(art.WEIGHTS)
    header, start = art.safetensors_header(blob)
    assert start % art.ALIGN == 0 and blob[8:start].endswith(b" ")
    loaded = load(blob)
    padding = header["__metadata__"]["padding"].split(",")
    assert set(loaded) == set(PARAMS) | set(padding) and all(loaded[p].dtype == torch.uint8 for p in padding)
    for name, value in PARAMS.items():
        assert str(loaded[name].dtype) == "torch." + value.dtype.name
        assert tuple(loaded[name].shape) == value.shape
        np.testing.assert_array_equal(loaded[name].float().numpy(), value.astype(np.float32))
        assert header[name]["data_offsets"][0] % art.ALIGN == 0


def test_weights_header_must_match_the_manifest(tmp_path):
    """A member whose header says other than the (checksummed) manifest's table is refused."""
    pieces, table = art.pack_weights(PARAMS, list(PARAMS))
    blob = b"".join(pieces)
    other = b"".join(art.pack_weights(dict(PARAMS, file=PARAMS["file"].reshape(3, 2)),
                                      list(PARAMS))[0])
    with pytest.raises(ArtifactError, match="parameter 'file' differs from the weights' header"):
        art.unpack_weights(np.frombuffer(other, np.uint8), table)
    with pytest.raises(ArtifactError, match="the artifact's weights are malformed"):
        art.unpack_weights(np.frombuffer(blob[:5], np.uint8), table)


def test_format_version_3_is_refused_with_one_line(written):
    """Version 3 kept its weights in weights.bin: such an artifact is refused, saying to
    recompile (read_manifest checks the version before anything else)."""
    with zipfile.ZipFile(written) as z:
        members = {n: z.read(n) for n in z.namelist()}
    manifest = json.loads(members.pop("manifest.json"))
    members["weights.bin"] = members.pop(art.WEIGHTS)
    members["manifest.json"] = json.dumps(art.seal_manifest(dict(manifest, format_version=3))).encode()
    with zipfile.ZipFile(written, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    with pytest.raises(ArtifactError) as info:
        art.read_artifact(written)
    message = str(info.value)
    assert "\n" not in message and "format version 3 is not supported" in message
    assert "recompile" in message


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
    members[art.WEIGHTS] = members[art.WEIGHTS][:-1] + b"\x01"
    with zipfile.ZipFile(written, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    with pytest.raises(ArtifactError, match="checksum mismatch in weights.safetensors"):
        art.read_artifact(written)


def test_missing_member_and_manifest_keys(tmp_path, written):
    with zipfile.ZipFile(written) as z:
        manifest = json.loads(z.read("manifest.json"))
    only_library = {"lib.so": manifest["files"]["lib.so"]}
    for broken, fragment in [(dict(manifest, files=only_library), "lists no weights.safetensors"),
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
