"""The artifact's manifest.json, typed: what each entry holds, checked when an artifact is
written and when it is read.

The manifest stays a JSON object (a dict in Python: what `Module.manifest` holds and `sbc
inspect --json` prints); `Manifest` and the entries below are its schema, as TypedDicts, so a
type checker sees every reader's keys, and `check_manifest` holds a manifest to them: a
missing required key, or a value of the wrong JSON type, is one line naming the key's path
(`target.cores`, `inputs[2].shape`). runtimes.artifact owns the format around it (members,
checksums, versions).
"""


import typing
from typing import Any, NotRequired, TypedDict

from sbc.errors import ArtifactError


class TargetEntry(TypedDict):
    """What a machine needs to run the code (codegen.targets.<kind>.manifest)."""
    kind: str  # cpu, cuda, maca
    tvm_target: NotRequired[str]
    arch: NotRequired[str]  # cpu: the ISA (x86_64); GPU: sm_80, xcore1000
    cpu: NotRequired[str]  # cpu: LLVM's name of the CPU it was built for
    cores: NotRequired[int]
    features: NotRequired[list[str]]  # cpu: the vector extensions the kernels use
    host_arch: NotRequired[str]  # GPU: the ISA of the host code
    kernels: NotRequired[list[str]]  # GPU: the device kernels by name
    warp_size: NotRequired[int]


class TensorEntry(TypedDict):
    """An input or output: dims as strings, symbolic ones by name ("batch", "2*seq")."""
    name: str
    dtype: str
    shape: list[str]


class WeightEntry(TypedDict):
    """Where a parameter lies in the weights member."""
    name: str
    dtype: str
    shape: list[int]
    offset: int
    nbytes: int


class MemberEntry(TypedDict):
    sha256: str
    size: int


class SourceEntry(TypedDict):
    name: str
    sha256: str | None  # None: compiled from an in-memory graph


class RecurrentEntry(TypedDict):
    """A model made recurrent (passes.to_recurrent): the state the sessions carry."""
    position: str
    state: list[str]
    sequence_symbol: NotRequired[str]  # artifacts from before it was recorded knew only "seq"
    memory_certificate: dict[str, Any]
    prefill_program: NotRequired[bool]


class Manifest(TypedDict):
    format: str
    format_version: int
    sbc_version: str
    created: NotRequired[str]
    target: TargetEntry
    inputs: list[TensorEntry]
    outputs: list[TensorEntry]
    param_names: list[str]
    weights: list[WeightEntry]
    files: dict[str, MemberEntry]
    source: NotRequired[SourceEntry]
    ops: NotRequired[dict[str, int]]
    assumptions: NotRequired[list[dict[str, Any]]]
    recurrent: NotRequired[RecurrentEntry]
    spike_stats: NotRequired[dict[str, Any]]
    notes: NotRequired[list[str]]
    tokenizer: NotRequired[dict[str, Any]]
    manifest_sha256: str


def check_manifest(manifest, path: str = "the artifact") -> None:
    """ArtifactError naming the first key whose value does not have its declared type."""
    problem = _problem(manifest, Manifest, "")
    if problem:
        raise ArtifactError(f"{path}: {problem}")


def _problem(value, kind, where: str) -> str | None:
    """What is wrong with `value` as a `kind` (a TypedDict, list[X], dict[str, X], X | None
    or a JSON scalar type), or None."""
    if typing.is_typeddict(kind):
        return _typeddict_problem(value, kind, where)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return None
    if origin is list:
        if not isinstance(value, list):
            return _wrong(value, "a list", where)
        return next((p for i, v in enumerate(value) if (p := _problem(v, args[0], f"{where}[{i}]"))),
                    None)
    if origin is dict:
        if not isinstance(value, dict):
            return _wrong(value, "an object", where)
        return next((p for k, v in value.items() if (p := _problem(v, args[1], f"{where}.{k}"))),
                    None)
    if origin in (typing.Union, _UNION):
        return None if any(_problem(value, a, where) is None for a in args) else \
            _wrong(value, " or ".join(_name(a) for a in args), where)
    if kind is type(None):
        return None if value is None else _wrong(value, "null", where)
    # JSON has no int/bool distinction Python would keep: True is not a count
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        return _wrong(value, _name(kind), where)
    return None


def _typeddict_problem(value, kind, where: str) -> str | None:
    if not isinstance(value, dict):
        return _wrong(value, "an object", where)
    hints = typing.get_type_hints(kind)
    missing = [k for k in kind.__required_keys__ if k not in value]
    if missing:
        return f"{_at(where)} lacks {', '.join(missing)}"
    for key, hint in hints.items():
        if key in value:
            problem = _problem(value[key], hint, f"{where}.{key}" if where else key)
            if problem:
                return problem
    return None


_UNION = type(int | None)


def _name(kind) -> str:
    return {str: "a string", int: "an integer", bool: "true or false", float: "a number",
            type(None): "null"}.get(kind, getattr(kind, "__name__", str(kind)))


def _at(where: str) -> str:
    return f"the manifest's {where}" if where else "the manifest"


def _wrong(value, expected: str, where: str) -> str:
    return f"{_at(where)} is {type(value).__name__} {str(value)[:40]!r}, expected {expected}"
