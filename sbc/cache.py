"""The compile cache: a second `sbc compile` of the same model with the same options loads the
artifact the first one wrote instead of compiling again.

Content-addressed: the key is the sha256 of the model's bytes, the options that change the
result (target, arch, pipeline, quantization, KV cache size, --tune's trials, and the sha256
of each tokenizer file stored with the model, `tokenizer=`), the machine the code is built for
(CPU name and features: a cpu artifact is built for this CPU), and the versions of sbc, TVM and
sbc's own source files (so an edited checkout never reads a stale entry). An entry is an
ordinary `.sbc` artifact (written atomically, read with its checksums verified); one that does
not read back is deleted and compiled again. Only models given as bytes (a file or an
onnx.ModelProto) are cached; compiles that measure (calibration) or print (the pass manager's
debugging switches) always run.

Where: $SBC_CACHE_DIR, else $XDG_CACHE_HOME/sbc, else ~/.cache/sbc. Off: `sbc compile
--no-cache`, `sbc.compile(cache=False)` or SBC_NO_CACHE=1. Entries beyond SBC_CACHE_MAX_MB
(default 2048) are removed least recently used first.

`tune/` beside the entries holds the tuning log of `--tune` (codegen/tune.py: MetaSchedule's
records and sbc's choice per kernel), so that tuning a kernel once serves every compile; it is
used with --no-cache too, is not evicted, and may be deleted to tune afresh.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import platform

from sbc.errors import SbcError

DEFAULT_MAX_MB = 2048
SUFFIX = ".sbc"


def cache_dir() -> pathlib.Path:
    if os.environ.get("SBC_CACHE_DIR"):
        return pathlib.Path(os.environ["SBC_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "sbc"


def tune_dir() -> pathlib.Path:
    """Where `--tune` keeps its log (the API hands it down to codegen)."""
    return cache_dir() / "tune"


def enabled(requested: bool) -> bool:
    return requested and os.environ.get("SBC_NO_CACHE", "") in ("", "0")


def model_digest(model) -> str | None:
    """sha256 of the model's bytes (a file, an onnx.ModelProto, or a checkpoint folder: the name
    and bytes of each of its files), else None: not cacheable."""
    if isinstance(model, (str, os.PathLike)) and os.path.isdir(model):
        digest = hashlib.sha256()
        for entry in sorted(os.scandir(model), key=lambda e: e.name):
            if entry.is_file():  # config, weights, tokenizer: whatever the import may read
                digest.update(f"{entry.name}\0{entry.stat().st_size}\0".encode())
                _hash_file(entry.path, digest)
        return digest.hexdigest()
    if isinstance(model, (str, os.PathLike)):
        return _hash_file(model, hashlib.sha256()).hexdigest()
    if hasattr(model, "SerializeToString"):
        return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
    return None


def _hash_file(path, digest):
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest


def key(model_sha256: str, target: str, options: dict) -> str:
    """The entry's name: everything the artifact depends on, hashed."""
    parts = {"model": model_sha256, "target": target, "options": options,
             "machine": _machine(target), "versions": _versions()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def lookup(entry: str) -> pathlib.Path | None:
    path = cache_dir() / (entry + SUFFIX)
    if not path.is_file():
        return None
    os.utime(path)  # recently used: evicted last
    return path


def store(entry: str, save) -> None:
    """save(path) writes the artifact; a cache that cannot be written is skipped, silently:
    the compile it would have sped up has already succeeded."""
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        save(directory / (entry + SUFFIX))
        _evict(directory, int(os.environ.get("SBC_CACHE_MAX_MB", DEFAULT_MAX_MB)) << 20)
    except (OSError, SbcError, ValueError):
        pass


def discard(path: pathlib.Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _evict(directory: pathlib.Path, max_bytes: int) -> None:
    entries = sorted(directory.glob("*" + SUFFIX), key=lambda p: p.stat().st_mtime, reverse=True)
    total = 0
    for path in entries:
        total += path.stat().st_size
        if total > max_bytes:
            discard(path)


def _machine(target: str) -> dict:
    """The CPU a build is for, read without TVM (importing it takes seconds): a cpu build is
    for this CPU; a GPU build's host code for this ISA."""
    from sbc.codegen.targets import target_kind
    if target_kind(target).gpu:
        return {"host_arch": platform.machine()}
    from sbc.runtimes.machine import cpu_identity
    return cpu_identity()


@functools.lru_cache(maxsize=1)
def _versions() -> dict:
    from importlib.metadata import version
    from sbc.version import __version__
    return {"sbc": __version__, "tvm": version("apache-tvm"), "source": _source_digest()}


def _source_digest() -> str:
    """sha256 over sbc's own Python files (the installed package or an editable checkout)."""
    import sbc.codegen
    import sbc.frontend
    import sbc.ir
    import sbc.passes
    import sbc.runtimes
    digest = hashlib.sha256()
    roots = [pathlib.Path(m.__file__).parent for m in
             (sbc.codegen, sbc.frontend, sbc.ir, sbc.passes, sbc.runtimes)]
    roots.append(pathlib.Path(__file__).parent)
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()
