"""runtimes.manifest: the manifest's schema, held on writing and on reading, each slip named
by its key's path."""

import copy

import numpy as np
import pytest

from sbc.errors import ArtifactError
from sbc.ir.types import TensorType
from sbc.runtimes import artifact as art
from sbc.runtimes.manifest import check_manifest


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    sig = art.signature_to_json([("ids", TensorType("i64", ("batch", "seq")))])
    return art.write_artifact(
        tmp_path_factory.mktemp("m") / "m.sbc", b"lib",
        {"w": np.zeros((2, 3), np.float32)},
        {"target": {"kind": "cpu", "cpu": "znver4", "cores": 8, "features": ["avx2"]},
         "inputs": sig, "outputs": sig, "param_names": ["w"],
         "source": {"name": "m.onnx", "sha256": None}, "ops": {"MatMul": 2},
         "recurrent": {"position": "pos", "state": ["s0"], "memory_certificate": {"x": 1}},
         "notes": ["a note"], "future_key": {"anything": 1}})


def test_a_written_manifest_holds_to_its_schema(manifest):
    check_manifest(manifest)  # unknown keys (a later minor version's) are let through


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("inputs"), "the manifest lacks inputs"),
    (lambda m: m["target"].pop("kind"), "the manifest's target lacks kind"),
    (lambda m: m["target"].update(cores="8"), "target.cores is str '8', expected an integer"),
    (lambda m: m["target"].update(cores=True), "target.cores is bool 'True', expected an integer"),
    (lambda m: m["inputs"][0].update(shape="batch"), r"inputs\[0\].shape is str 'batch', expected a list"),
    (lambda m: m["files"].update(x={"sha256": "0", "size": -0.5}), "files.x.size is float"),
    (lambda m: m["recurrent"].update(state="s0"), "recurrent.state is str"),
    (lambda m: m["source"].update(sha256=3), "source.sha256 is int '3', expected a string or null"),
    (lambda m: m.update(ops=[1]), "the manifest's ops is list '\\[1\\]', expected an object"),
])
def test_each_slip_is_named_by_its_path(manifest, edit, message):
    broken = copy.deepcopy(manifest)
    edit(broken)
    with pytest.raises(ArtifactError, match=f"^a.sbc: .*{message}"):
        check_manifest(broken, "a.sbc")


def test_a_writer_cannot_write_a_manifest_off_its_schema(tmp_path):
    with pytest.raises(ArtifactError, match="target.kind is int"):
        art.write_artifact(tmp_path / "bad.sbc", b"lib", {}, {
            "target": {"kind": 3}, "inputs": [], "outputs": [], "param_names": []})
    assert not list(tmp_path.iterdir())  # nothing half-written
