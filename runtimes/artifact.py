"""The `.sbc` artifact: one zip file (stored, not compressed) holding a compiled model.

    manifest.json   format "sbc-artifact", format_version, sbc_version, created, target (kind,
                    TVM target, host CPU name/arch/features), inputs/outputs (dtype and dims as
                    strings, symbolic ones by name), param_names, weights (dtype, shape, offset
                    and size of each parameter in weights.safetensors), ops, source model (name,
                    sha256), files: the sha256 and size of every other member, and
                    manifest_sha256: the sha256 of the manifest itself (its canonical JSON
                    without this field), so an edited manifest (swapped weight offsets, a
                    changed signature) is refused like a corrupt member; its schema, checked
                    on writing and reading, is runtimes.manifest.Manifest
    lib.so          the TVM-compiled library (relax VM executable; for cuda its host code)
    weights.safetensors  the parameters as a safetensors file (the header padded with spaces,
                    gaps as U8 padding tensors: each tensor 64-byte aligned), in param_names
                    order; read into one aligned buffer that the CPU runtime uses in place
    cuda/...        cuda: kernels.cu (the CUDA source) and kernels.fatbin (nvcc's SASS + PTX)
    maca/...        maca: kernels.maca, launches.json (the host program), build.sh, and
                    kernels.bin once built with mxcc (see codegen.maca); no lib.so

Writing is atomic (temp file in the destination directory, fsync, rename): an interrupted or
failed write leaves neither a partial artifact nor a temp file. A destination that exists but is
not a regular file (a FIFO, /dev/null, a directory) is refused: the rename would replace it.
Reading checks the zip, the manifest's format, version and checksum and every member's checksum
before anything is used; whether the target can run here is checked separately (by the
target, codegen.targets.check_runnable), so `sbc inspect` can still describe an artifact built
for another machine.
Nothing here imports TVM.

An artifact is code: loading it runs its compiled library. The checksums catch corruption, not
tampering (whoever edits a file can recompute them); `read_artifact(path, sha256=...)` checks
the whole file against a digest obtained from a trusted source before reading anything from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from sbc import version
from sbc.errors import ArtifactError, InputError
from sbc.ir.dims import SymbolicError, parse_dim
from sbc.ir.graph import ALIGN, aligned_empty
from sbc.ir.types import DTYPES, TensorType, dtype_of
from sbc.runtimes.manifest import check_manifest

FORMAT = "sbc-artifact"
FORMAT_VERSION = 4  # 2: raw weights.bin + table (was weights.npz); 3: manifest_sha256;
#                    4: weights.safetensors instead of weights.bin
LIBRARY, WEIGHTS, MANIFEST = "lib.so", "weights.safetensors", "manifest.json"
# ALIGN (ir.graph): each weight starts on such a boundary, so its view is a kernel's buffer
CHECKSUM_KEY = "manifest_sha256"  # the manifest's own checksum (see manifest_digest)


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
    It is created like any new file (mode 0666 less the umask), not 0600 as mkstemp would.
    A symbolic link is written through: the file it points to is replaced and the link stays.
    """
    path = os.fspath(path)
    check_output_path(path)
    path = _through_links(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = _create_temp(directory, path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)
    finally:
        if os.path.exists(tmp):  # failed or interrupted (KeyboardInterrupt included)
            os.unlink(tmp)


def check_output_path(path: str | os.PathLike) -> None:
    """Refuse a destination that exists but is not a regular file: renaming a finished temp
    file over a FIFO, a device (/dev/null) or a directory would replace it."""
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode  # follows symlinks: a link to /dev/null is refused too
    except OSError:
        return  # missing (the usual case) or unreadable: creating the file will tell
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else \
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"
        raise InputError(f"{path}: is {kind}; sbc writes a complete file and renames it into "
                         f"place, which would replace it: give a regular file path")


def _through_links(path: str) -> str:
    """The file that a symbolic link at `path` points to, through any chain of links (that
    file may not exist yet: it is created), as a shell's `>` writes through a link. Renaming
    onto the link itself would replace the link and leave the file it points to stale."""
    if not os.path.islink(path):
        return path
    target = os.path.realpath(path)
    if os.path.islink(target):  # realpath stops inside a loop of links
        raise InputError(f"{path}: is a loop of symbolic links; give a regular file path")
    return target


def _create_temp(directory: str, path: str) -> str:
    """A new, empty, uniquely named file in `directory` (O_EXCL: never someone else's)."""
    for _ in range(100):
        tmp = os.path.join(directory, f".sbc-partial-{secrets.token_hex(6)}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
        except OSError as e:  # name the file the user asked for, not the temp name
            raise type(e)(e.errno, e.strerror, path) from None
    raise FileExistsError(f"{directory}: could not create a temporary file")


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


SAFETENSORS_DTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "f64": "F64", "i8": "I8", "i16": "I16",
                      "i32": "I32", "i64": "I64", "u8": "U8", "bool": "BOOL"}


def pack_weights(params: dict[str, np.ndarray], names: list[str]) -> tuple[list, list[dict]]:
    """The parameters as one safetensors file (8-byte little-endian header size, JSON header,
    data: what the ecosystem reads), each tensor 64-byte aligned within it so that the CPU
    runtime uses them in place. The header is padded with spaces so that the data starts
    aligned; the format allows no holes between tensors, so a gap is an explicit U8 padding
    tensor (named in __metadata__["padding"]). Returns the file as pieces (the header, then
    views of the params' own bytes and the padding: nothing is copied, so a model of many GB
    is written without a second copy) and the manifest's table: each parameter's dtype,
    shape, offset from the member's start and size."""
    header, chunks, padding, offset = {}, [], [], 0
    for name in names:
        a = np.asarray(params[name], order="C")
        if offset % ALIGN:
            gap = _padding_name(len(padding), names)
            header[gap] = {"dtype": "U8", "shape": [-offset % ALIGN],
                           "data_offsets": [offset, offset - offset % ALIGN + ALIGN]}
            chunks.append(bytes(-offset % ALIGN))
            padding.append(gap)
            offset += -offset % ALIGN
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype_of(a)], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        chunks.append(a.reshape(-1).view(np.uint8))
        offset += a.nbytes
    header["__metadata__"] = {"producer": "sbc", "alignment": str(ALIGN),
                              "padding": ",".join(padding)}
    text = json.dumps(header, separators=(",", ":")).encode()
    size = -(-(8 + len(text)) // ALIGN) * ALIGN - 8
    head = size.to_bytes(8, "little") + text.ljust(size, b" ")
    table = [{"name": n, "dtype": dtype_of(params[n]), "shape": header[n]["shape"],
              "offset": len(head) + header[n]["data_offsets"][0],
              "nbytes": header[n]["data_offsets"][1] - header[n]["data_offsets"][0]}
             for n in names]
    return [head, *chunks], table


def _padding_name(index: int, names: list[str]) -> str:
    """A padding tensor's name, distinct from every parameter's."""
    name = f"__padding_{index}__"
    while name in names:
        name = "_" + name
    return name


def safetensors_header(blob) -> tuple[dict, int]:
    """The JSON header of the safetensors file in `blob` and the offset where its data starts
    (ValueError if it has none)."""
    if len(blob) < 8:
        raise ValueError(f"{len(blob)} bytes, shorter than a safetensors header")
    size = int.from_bytes(bytes(blob[:8]), "little")
    if size > len(blob) - 8:
        raise ValueError(f"a header of {size} bytes in a member of {len(blob)}")
    header = json.loads(bytes(blob[8:8 + size]))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return header, 8 + size


def unpack_weights(blob, table: list[dict]) -> dict[str, np.ndarray]:
    """Views into `blob` (no copy: the CPU runtime uses them in place), one per entry of the
    manifest's table, each the same in the safetensors header (dtype, shape, offsets): what
    the manifest's checksum vouches for is what is read."""
    params = {}
    try:
        header, start = safetensors_header(blob)
        for e in table:
            dtype, shape = DTYPES[e["dtype"]], tuple(e["shape"])
            count = int(np.prod(shape, dtype=np.int64))
            entry = {"dtype": SAFETENSORS_DTYPES[e["dtype"]], "shape": list(shape),
                     "data_offsets": [e["offset"] - start, e["offset"] - start + e["nbytes"]]}
            if header.get(e["name"]) != entry:
                raise ValueError(f"parameter '{e['name']}' differs from the weights' header")
            if count * dtype.itemsize != e["nbytes"] or e["offset"] + e["nbytes"] > len(blob):
                raise ValueError(f"parameter '{e['name']}' does not fit its table entry")
            flat = np.frombuffer(blob, dtype, count=count, offset=e["offset"]) if count \
                else np.empty(0, dtype)
            params[e["name"]] = flat.reshape(shape)
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"the artifact's weights are malformed ({err})") from err
    return params


def write_artifact(path: str | os.PathLike, library: bytes | None, params: dict[str, np.ndarray],
                   manifest: dict, files: dict[str, bytes] | None = None) -> dict:
    """Write library + params + manifest (+ further `files`, e.g. device code) atomically to
    `path`; return the manifest written. library None: a target without one (maca). The
    weights go to the file piece by piece from the params themselves (checksummed in a first
    pass), never joined into one more copy in memory."""
    weights, table = pack_weights(params, list(manifest["param_names"]))
    members = {WEIGHTS: weights, **{n: [b] for n, b in (files or {}).items()}}
    if library is not None:
        members = {LIBRARY: [library], **members}
    manifest = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION,
                    sbc_version=version.__version__,
                    created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), weights=table,
                    files={n: _checksum(pieces) for n, pieces in members.items()})
    manifest = seal_manifest(manifest)
    check_manifest(manifest, os.fspath(path))  # a writer's slip fails here, not at load
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
            z.writestr(MANIFEST, json.dumps(manifest, indent=2))
            for name, pieces in members.items():
                with z.open(name, "w", force_zip64=True) as f:
                    for piece in pieces:
                        f.write(piece)
    return manifest


def _checksum(pieces: list) -> dict:
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece)
    return {"sha256": digest.hexdigest(), "size": sum(memoryview(p).nbytes for p in pieces)}


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON (sorted keys, no spaces), without its own
    checksum field: independent of how the file was indented."""
    body = {k: v for k, v in manifest.items() if k != CHECKSUM_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def seal_manifest(manifest: dict) -> dict:
    """The manifest as JSON will read it back (tuples as lists, keys as strings), with its
    checksum: the digest must be computed on exactly what a reader will see."""
    manifest = json.loads(json.dumps({k: v for k, v in manifest.items() if k != CHECKSUM_KEY}))
    return dict(manifest, **{CHECKSUM_KEY: manifest_digest(manifest)})


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


class _OwnedZip(zipfile.ZipFile):
    """A ZipFile over a file object that it closes with itself."""

    def __init__(self, file):
        self._owned = file
        super().__init__(file)

    def close(self):
        try:
            super().close()
        finally:
            self._owned.close()


def _open_zip(path: str, sha256: str | None = None) -> zipfile.ZipFile:
    """Open the artifact once: the sha256 check (if asked) and every later read go through
    the same open file, so swapping the path after the check changes nothing."""
    if not os.path.exists(path):
        raise ArtifactError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ArtifactError(f"{path}: is a directory, not an sbc artifact")
    f = open(path, "rb")
    try:
        if sha256 is not None:
            check_sha256(path, f, sha256)
        head = f.read(4)
        f.seek(0)
        try:
            return _OwnedZip(f)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
            if head == b"PK\x03\x04":  # a zip's index is at its end: a cut-off file loses it
                raise ArtifactError(f"{path}: the artifact is truncated or damaged ({e})") from e
            raise ArtifactError(f"{path}: not an sbc artifact (not a zip archive)") from e
    except BaseException:
        f.close()
        raise


def normalize_sha256(digest) -> str:
    """A sha256 given by a user: 64 hex digits (any case, surrounding spaces ignored)."""
    text = str(digest).strip().lower()
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise InputError(f"an expected sha256 must be 64 hexadecimal digits, got {digest!r}")
    return text


def file_sha256(f) -> str:
    """sha256 of an open binary file from its start, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    f.seek(0)
    for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    f.seek(0)
    return digest.hexdigest()


def check_sha256(path: str, f, expected: str) -> None:
    """Refuse the file unless its sha256 is `expected` (before anything of it is used)."""
    expected = normalize_sha256(expected)
    actual = file_sha256(f)
    if actual != expected:
        raise ArtifactError(f"{path}: sha256 is {actual}, expected {expected}: refusing to load "
                            f"it (an artifact runs native code; this is not the file you trust)")


def read_manifest(path: str, sha256: str | None = None) -> tuple[zipfile.ZipFile, dict]:
    """Open the zip and return it with its checked manifest (format, version, listed
    members and its own checksum)."""
    z = _open_zip(path, sha256)
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
        check_manifest(manifest, path)
        # the members only some targets have (lib.so) are checked by codegen.targets
        if not isinstance(manifest["files"], dict) or WEIGHTS not in manifest["files"]:
            raise ArtifactError(f"{path}: the manifest lists no {WEIGHTS}")
        if manifest_digest(manifest) != manifest[CHECKSUM_KEY]:
            raise ArtifactError(f"{path}: checksum mismatch in {MANIFEST}: the manifest was "
                                f"changed after it was written (the artifact is corrupt)")
    except BaseException:
        z.close()
        raise
    return z, manifest


def check_version(path: str, manifest: dict) -> None:
    """Same artifact format and the same sbc major.minor as the running sbc."""
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: artifact format version {manifest.get('format_version')} "
                            f"is not supported (this sbc reads version {FORMAT_VERSION}); "
                            f"recompile the model with this version")
    written = str(manifest.get("sbc_version", "?"))
    if written.split(".")[:2] != version.__version__.split(".")[:2]:
        raise ArtifactError(f"{path}: written by sbc {written}, this is sbc {version.__version__}; "
                            f"recompile the model with this version")


def _read_member(path: str, z: zipfile.ZipFile, name: str, expected: dict) -> bytes | np.ndarray:
    """A member's bytes, checked against the manifest (size and sha256) and the zip CRC. The
    weights come as a writable, 64-byte aligned uint8 array: the runtime then uses them in
    place (DLPack) instead of holding a second copy."""
    try:
        data = _read_aligned(z, name, expected.get("size")) if name == WEIGHTS else z.read(name)
    except KeyError:
        raise ArtifactError(f"{path}: member {name} is missing") from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:  # CRC error, cut short
        raise ArtifactError(f"{path}: checksum mismatch in {name}: the artifact is corrupt "
                            f"({e})") from e
    if len(data) != expected.get("size") or \
            hashlib.sha256(data).hexdigest() != expected.get("sha256"):
        raise ArtifactError(f"{path}: checksum mismatch in {name}: the artifact is corrupt")
    return data


READ_CHUNK = 64 << 20


def _read_aligned(z: zipfile.ZipFile, name: str, size) -> np.ndarray:
    """The member read straight into a 64-byte aligned buffer (one copy of its bytes)."""
    if not isinstance(size, int) or size != z.getinfo(name).file_size:
        return np.frombuffer(z.read(name), np.uint8)  # the size check below reports it
    data = aligned_empty(size, np.uint8)
    with z.open(name) as f:
        view, done = memoryview(data), 0
        # in chunks: zipfile's readinto reads into a new bytes object of the size asked, which
        # for a whole model's weights would be a second copy of them
        while done < size and (n := f.readinto(view[done:done + READ_CHUNK])):
            done += n
        f.read(1)  # at the end: the zip's CRC check runs
    return data


def read_artifact(path: str | os.PathLike, sha256: str | None = None) -> Artifact:
    """Read and verify an artifact (format, version, the manifest's and every member's
    checksum). sha256: the whole file's expected digest, checked before anything else."""
    path = os.fspath(path)
    z, manifest = read_manifest(path, sha256)
    with z:
        members = {name: _read_member(path, z, name, expected or {})
                   for name, expected in manifest["files"].items()}
    params = unpack_weights(members[WEIGHTS], manifest["weights"])
    if list(params) != list(manifest["param_names"]):
        raise ArtifactError(f"{path}: the weight table does not match param_names")
    extra = {n: b for n, b in members.items() if n not in (LIBRARY, WEIGHTS)}
    return Artifact(manifest, members.get(LIBRARY), params, extra)


ARRAY_FORMATS = ("an .npz whose keys are the input names (np.savez), or an .npy "
                 "(np.save) for a model with a single input")


def read_arrays(path: str, what: str = "inputs", names: list[str] | None = None
                ) -> dict[str, np.ndarray]:
    """Arrays by name from a user's .npz, or from an .npy when `names` holds exactly one
    name (a single-input model: the name is implied). No pickles: an .npz from elsewhere
    must not run code. `what` names the file in errors ("inputs", "calibration data")."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such {what} file (expected {ARRAY_FORMATS})")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        return _read_npy(path, what, names)
    if magic[:2] != b"PK":  # JSON, text, name=shape, ...: say what is accepted
        raise InputError(f"{path}: {what} must be {ARRAY_FORMATS}; this file is neither")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, AttributeError, zipfile.BadZipFile) as e:
        raise InputError(f"{path}: not a readable .npz of {what} ({e})") from e


def _read_npy(path: str, what: str, names: list[str] | None) -> dict[str, np.ndarray]:
    """An .npy has one unnamed array: only a single-input model says whose it is."""
    if names is None or len(names) != 1:
        model = f"the model has {len(names)} inputs ({', '.join(names)}): " if names else ""
        raise InputError(f"{path}: an .npy holds one unnamed array; {model}give {what} as an "
                         f".npz whose keys are the input names")
    try:
        return {names[0]: np.load(path, allow_pickle=False)}
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{path}: not a readable .npy ({e})") from e
