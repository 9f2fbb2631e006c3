"""The `.sbc` artifact: one zip file (stored, not compressed) holding a compiled model.

    manifest.json   format "sbc-artifact", format_version, sbc_version, created, target (kind,
                    TVM target, host CPU name/arch/features), inputs/outputs (dtype and dims as
                    strings, symbolic ones by name), param_names, weights (dtype, shape, offset
                    and size of each parameter in weights.bin), ops, source model (name,
                    sha256) and files: the sha256 and size of every other member
    lib.so          the TVM-compiled library (relax VM executable; for cuda its host code)
    weights.bin     the parameters' raw bytes, each 64-byte aligned, in param_names order
    cuda/...        cuda: kernels.cu (the CUDA source) and kernels.fatbin (nvcc's SASS + PTX)
    maca/...        maca: kernels.maca, launches.json (the host program), build.sh, and
                    kernels.bin once built with mxcc (see codegen.maca); no lib.so

Writing is atomic (temp file in the destination directory, fsync, rename): an interrupted or
failed write leaves neither a partial artifact nor a temp file. Reading checks the zip, the
manifest's format and version and every member's checksum before anything is used; whether the
target can run here is checked separately (`check_runnable`), so `sbc inspect` can still
describe an artifact built for another machine. Nothing here imports TVM.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

import sbc
from sbc.errors import ArtifactError, InputError, TargetUnavailableError
from sbc.ir.dims import SymbolicError, parse_dim
from sbc.ir.types import DTYPES, TensorType, dtype_of

FORMAT = "sbc-artifact"
FORMAT_VERSION = 2  # 2: raw weights.bin + table (was weights.npz)
LIBRARY, WEIGHTS, MANIFEST = "lib.so", "weights.bin", "manifest.json"
ALIGN = 64  # weights start on cache-line boundaries so frombuffer views are well aligned
REQUIRED_KEYS = ("target", "inputs", "outputs", "param_names", "weights", "files")


# -- signatures ------------------------------------------------------------------------------

def signature_to_json(sig: list[tuple[str, TensorType]]) -> list[dict]:
    """Dims become strings ("batch", "2*seq", "64") so symbolic ones survive JSON."""
    return [{"name": n, "dtype": t.dtype, "shape": [str(d) for d in t.shape]} for n, t in sig]


def signature_from_json(items: list[dict]) -> list[tuple[str, TensorType]]:
    try:
        return [(i["name"], TensorType(i["dtype"], tuple(parse_dim(d) for d in i["shape"])))
                for i in items]
    except (KeyError, TypeError, SymbolicError) as e:
        raise ArtifactError(f"the artifact's manifest has a malformed signature ({e})") from e


# -- writing ---------------------------------------------------------------------------------

@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path beside `path`; on success it replaces `path`, otherwise it vanishes.

    The temp file lives in the destination directory so the final os.replace is a rename on
    one file system (atomic); readers see the old file or the complete new one, never a part.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".sbc-partial-", dir=directory)
    except OSError as e:  # name the file the user asked for, not the temp name
        raise type(e)(e.errno, e.strerror, path) from None
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)
    finally:
        if os.path.exists(tmp):  # failed or interrupted (KeyboardInterrupt included)
            os.unlink(tmp)


def _fsync_dir(directory: str) -> None:
    """Make the rename itself durable; not every file system lets a directory be fsynced."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def pack_weights(params: dict[str, np.ndarray], names: list[str]) -> tuple[bytes, list[dict]]:
    """Concatenate the parameters' C-order bytes (64-byte aligned); return bytes and table."""
    chunks, table, offset = [], [], 0
    for name in names:
        a = np.asarray(params[name])
        data = np.ascontiguousarray(a).tobytes()
        pad = -offset % ALIGN
        chunks += [b"\0" * pad, data]
        offset += pad
        table.append({"name": name, "dtype": dtype_of(a), "shape": list(a.shape),
                      "offset": offset, "nbytes": len(data)})
        offset += len(data)
    return b"".join(chunks), table


def unpack_weights(blob: bytes, table: list[dict]) -> dict[str, np.ndarray]:
    """Read-only views into `blob` (no copy); the runtime copies them to the device anyway."""
    params = {}
    try:
        for e in table:
            dtype, shape = DTYPES[e["dtype"]], tuple(e["shape"])
            count = int(np.prod(shape, dtype=np.int64))
            if count * dtype.itemsize != e["nbytes"] or e["offset"] + e["nbytes"] > len(blob):
                raise ValueError(f"parameter '{e['name']}' does not fit its table entry")
            flat = np.frombuffer(blob, dtype, count=count, offset=e["offset"]) if count \
                else np.empty(0, dtype)
            params[e["name"]] = flat.reshape(shape)
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"the artifact's weight table is malformed ({err})") from err
    return params


def write_artifact(path: str | os.PathLike, library: bytes | None, params: dict[str, np.ndarray],
                   manifest: dict, files: dict[str, bytes] | None = None) -> dict:
    """Write library + params + manifest (+ further `files`, e.g. device code) atomically to
    `path`; return the manifest written. library None: a target without one (maca)."""
    weights, table = pack_weights(params, list(manifest["param_names"]))
    members = {WEIGHTS: weights, **(files or {})}
    if library is not None:
        members = {LIBRARY: library, **members}
    manifest = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION,
                    sbc_version=sbc.__version__,
                    created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), weights=table,
                    files={n: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)}
                           for n, b in members.items()})
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
            z.writestr(MANIFEST, json.dumps(manifest, indent=2))
            for name, data in members.items():
                z.writestr(name, data)
    return manifest


# -- reading ---------------------------------------------------------------------------------

@dataclass
class Artifact:
    manifest: dict
    library: bytes | None
    params: dict[str, np.ndarray]
    files: dict[str, bytes] = field(default_factory=dict)  # members beyond lib.so / weights

    @property
    def inputs(self):
        return signature_from_json(self.manifest["inputs"])

    @property
    def outputs(self):
        return signature_from_json(self.manifest["outputs"])


def _open_zip(path: str) -> zipfile.ZipFile:
    if not os.path.exists(path):
        raise ArtifactError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ArtifactError(f"{path}: is a directory, not an sbc artifact")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        with open(path, "rb") as f:
            looks_like_zip = f.read(4) == b"PK\x03\x04"
        if looks_like_zip:  # a zip's index is at its end: a cut-off file loses it
            raise ArtifactError(f"{path}: the artifact is truncated or damaged ({e})") from e
        raise ArtifactError(f"{path}: not an sbc artifact (not a zip archive)") from e


def read_manifest(path: str) -> tuple[zipfile.ZipFile, dict]:
    """Open the zip and return it with its checked manifest (format and version)."""
    z = _open_zip(path)
    try:
        try:
            raw = z.read(MANIFEST)
        except KeyError:
            raise ArtifactError(f"{path}: not an sbc artifact (no {MANIFEST})") from None
        except (zipfile.BadZipFile, EOFError, OSError) as e:
            raise ArtifactError(f"{path}: member {MANIFEST} is corrupt ({e})") from e
        try:
            manifest = json.loads(raw)
        except ValueError:
            raise ArtifactError(f"{path}: not an sbc artifact ({MANIFEST} is not JSON)") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else None
            raise ArtifactError(f"{path}: not an sbc artifact (manifest format {found!r}, "
                                f"expected {FORMAT!r})")
        check_version(path, manifest)
        missing = [k for k in REQUIRED_KEYS if k not in manifest]
        if missing:
            raise ArtifactError(f"{path}: the manifest lacks {', '.join(missing)}")
    except BaseException:
        z.close()
        raise
    return z, manifest


def check_version(path: str, manifest: dict) -> None:
    """Same artifact format and the same sbc major.minor as the running sbc."""
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: artifact format version {manifest.get('format_version')} "
                            f"is not supported (this sbc reads version {FORMAT_VERSION})")
    written = str(manifest.get("sbc_version", "?"))
    if written.split(".")[:2] != sbc.__version__.split(".")[:2]:
        raise ArtifactError(f"{path}: written by sbc {written}, this is sbc {sbc.__version__}; "
                            f"recompile the model with this version")


def _read_member(path: str, z: zipfile.ZipFile, name: str, expected: dict) -> bytes:
    """A member's bytes, checked against the manifest (size and sha256) and the zip CRC."""
    try:
        data = z.read(name)
    except KeyError:
        raise ArtifactError(f"{path}: member {name} is missing") from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:  # CRC error, cut short
        raise ArtifactError(f"{path}: checksum mismatch in {name}: the artifact is corrupt "
                            f"({e})") from e
    if len(data) != expected.get("size") or \
            hashlib.sha256(data).hexdigest() != expected.get("sha256"):
        raise ArtifactError(f"{path}: checksum mismatch in {name}: the artifact is corrupt")
    return data


def read_artifact(path: str | os.PathLike) -> Artifact:
    """Read and verify an artifact (format, version, every member's checksum)."""
    path = os.fspath(path)
    z, manifest = read_manifest(path)
    with z:
        files = manifest["files"]
        for name in required_members(manifest):
            if not isinstance(files, dict) or name not in files:
                raise ArtifactError(f"{path}: the manifest lists no {name}")
        members = {name: _read_member(path, z, name, expected or {})
                   for name, expected in files.items()}
    params = unpack_weights(members[WEIGHTS], manifest["weights"])
    if list(params) != list(manifest["param_names"]):
        raise ArtifactError(f"{path}: the weight table does not match param_names")
    extra = {n: b for n, b in members.items() if n not in (LIBRARY, WEIGHTS)}
    return Artifact(manifest, members.get(LIBRARY), params, extra)


def required_members(manifest: dict) -> tuple[str, ...]:
    """maca artifacts carry no TVM library (the host program is launches.json). The device
    members are checked by the runtime that loads them, after the device check: an artifact
    for a missing device says so first."""
    kind = (manifest.get("target") or {}).get("kind")
    return (WEIGHTS,) if kind == "maca" else (LIBRARY, WEIGHTS)


# -- can it run here? ------------------------------------------------------------------------

def check_runnable(manifest: dict, path: str = "the artifact", *, host_cpu: bool = True) -> None:
    """Raise TargetUnavailableError unless this machine can run the artifact's target.
    host_cpu=False checks the target kind only (that needs no TVM, so it is instant)."""
    target = manifest.get("target") or {}
    kind = target.get("kind")
    if kind in ("cuda", "maca"):
        _check_gpu(target, path)
        return
    if kind != "cpu":
        raise TargetUnavailableError(
            f"{path} was compiled for target '{kind}', which is not available on this machine "
            f"(this sbc runs: cpu, cuda, maca); recompile with --target cpu")
    if host_cpu:
        _check_host_cpu(target, path)


def _check_gpu(target: dict, path: str) -> None:
    """The device (through its driver, via ctypes: no TVM needed) and the host ISA."""
    import platform
    kind = target["kind"]
    if kind == "cuda":
        from sbc.runtimes.cuda import cuda_device_count as count
        missing = "no CUDA device was found"
    else:
        from sbc.runtimes.maca import maca_device_count as count
        missing = "no MetaX runtime was found (libmcruntime) or no MetaX GPU is present"
    if count() == 0:
        raise TargetUnavailableError(
            f"{path} was compiled for target '{kind}', which is not available on this machine: "
            f"{missing}; recompile with --target cpu or run it where {kind} exists")
    host = target.get("host_arch")
    if host and host != platform.machine():
        raise TargetUnavailableError(f"{path} has {host} host code; this machine is "
                                     f"{platform.machine()}: recompile it here")


def _check_host_cpu(target: dict, path: str) -> None:
    """Code built for another ISA, or using vector extensions this CPU lacks, would crash
    with an illegal instruction: refuse it with a clear line instead."""
    from sbc.codegen.target import host_cpu_features
    host = host_cpu_features()
    arch = target.get("arch")
    if arch and arch != host["arch"]:
        raise TargetUnavailableError(f"{path} was compiled for {arch} CPUs; this machine is "
                                     f"{host['arch']}: recompile it here")
    lacking = sorted(set(target.get("features", ())) - set(host["features"]))
    if lacking:
        raise TargetUnavailableError(
            f"{path} was compiled for a CPU with {', '.join(lacking)} "
            f"({target.get('cpu')}), which this CPU ({host['cpu']}) lacks: recompile it here")


def read_arrays(path: str, what: str = "inputs") -> dict[str, np.ndarray]:
    """Arrays by name from a user's .npz (no pickles: an .npz from elsewhere must not run code).
    `what` names the file in errors ("inputs", "calibration data")."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such {what} file")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, AttributeError, zipfile.BadZipFile) as e:
        raise InputError(f"{path}: not a readable .npz of input arrays ({e})") from e
