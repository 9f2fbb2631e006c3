"""The `.sbc` artifact: one zip file holding the compiled library, the weights and a manifest.

    manifest.json   format, format_version, sbc_version, target (+ CPU features), signature
                    (dims as strings, symbolic ones by name), param names, source model hash,
                    sha256 and size of every other member
    lib.so          the TVM-compiled library (relax VM executable)
    weights.npz     parameters by name

Writing is atomic (temp file in the destination directory, fsync, rename): an interrupted
write leaves nothing behind. Reading checks format, version, checksums and the target before
anything is loaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

import sbc
from sbc.errors import ArtifactError
from sbc.ir.dims import parse_dim
from sbc.ir.types import TensorType

FORMAT = "sbc-artifact"
FORMAT_VERSION = 1
LIBRARY, WEIGHTS, MANIFEST = "lib.so", "weights.npz", "manifest.json"


def signature_to_json(sig: list[tuple[str, TensorType]]) -> list[dict]:
    return [{"name": n, "dtype": t.dtype, "shape": [str(d) for d in t.shape]} for n, t in sig]


def signature_from_json(items: list[dict]) -> list[tuple[str, TensorType]]:
    return [(i["name"], TensorType(i["dtype"], tuple(parse_dim(d) for d in i["shape"]))) for i in items]


@contextmanager
def atomic_path(path: str):
    """Yield a temp path beside `path`; on success it replaces `path`, otherwise it vanishes."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix=".sbc-partial-", dir=directory)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_artifact(path: str, library: bytes, params: dict[str, np.ndarray], manifest: dict) -> None:
    weights = io.BytesIO()
    np.savez(weights, **params)
    members = {LIBRARY: library, WEIGHTS: weights.getvalue()}
    manifest = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION,
                    sbc_version=sbc.__version__, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    files={n: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)}
                           for n, b in members.items()})
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
            z.writestr(MANIFEST, json.dumps(manifest, indent=2))
            for name, data in members.items():
                z.writestr(name, data)


@dataclass
class Artifact:
    manifest: dict
    library: bytes
    params: dict[str, np.ndarray]

    @property
    def inputs(self):
        return signature_from_json(self.manifest["inputs"])

    @property
    def outputs(self):
        return signature_from_json(self.manifest["outputs"])


def read_manifest(path: str) -> tuple[zipfile.ZipFile, dict]:
    if not os.path.isfile(path):
        raise ArtifactError(f"{path}: no such file")
    try:
        z = zipfile.ZipFile(path)
        manifest = json.loads(z.read(MANIFEST))
    except (zipfile.BadZipFile, KeyError, ValueError, EOFError, OSError) as e:
        raise ArtifactError(f"{path}: not an sbc artifact (or truncated): {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not an sbc artifact (no '{FORMAT}' manifest)")
    check_version(path, manifest)
    return z, manifest


def check_version(path: str, manifest: dict) -> None:
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: artifact format {manifest.get('format_version')} is not "
                            f"supported (this sbc reads format {FORMAT_VERSION})")
    written = str(manifest.get("sbc_version", "?"))
    if written.split(".")[:2] != sbc.__version__.split(".")[:2]:
        raise ArtifactError(f"{path}: written by sbc {written}, this is sbc {sbc.__version__}; "
                            f"recompile the model")


def read_artifact(path: str) -> Artifact:
    z, manifest = read_manifest(path)
    with z:
        members = {}
        for name in (LIBRARY, WEIGHTS):
            expected = manifest.get("files", {}).get(name)
            try:
                data = z.read(name)
            except (KeyError, zipfile.BadZipFile, EOFError, OSError) as e:
                raise ArtifactError(f"{path}: member {name} is missing or unreadable ({e})") from e
            if expected is None or hashlib.sha256(data).hexdigest() != expected["sha256"]:
                raise ArtifactError(f"{path}: checksum mismatch in {name}: the artifact is corrupt")
            members[name] = data
    with np.load(io.BytesIO(members[WEIGHTS])) as weights:
        params = {k: weights[k] for k in weights.files}
    return Artifact(manifest, members[LIBRARY], params)
