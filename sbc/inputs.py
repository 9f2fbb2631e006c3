"""Arrays on the command line, as iree-run-module and polygraphy take them, and what `sbc run`
and `sbc bench` print of the outputs.

    --input ids=@x.npy          an array file: .npy, or .npz (the array of that name, or its one)
    --input ids=1,2,3           values in the input's dtype, with leading 1s up to its rank
    --input ids=[[1,2,3]]       the same as a JSON list (any nesting)
    --input ids=int64[1,128]    random values of that dtype and shape, seeded by --seed:
                                floats N(0, 1), integers in [0, 10) (valid token ids for any
                                vocabulary of 10 or more), booleans fair coins
    --inputs FILE               .npz (input names as keys), .npy (a single-input model) or
                                .json ({"name": nested list, ...})

Every mistake is one line naming the input and what was expected.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from sbc.errors import InputError
from sbc.ir.types import DTYPES

RANDOM = re.compile(r"^([a-z0-9]+)\[([0-9, ]*)\]$")  # int64[1,128]
INT_RANGE = (0, 10)


def input_arrays(specs: list[str], file: str | None, signature: list, seed: int = 0) -> dict:
    """The feeds for `signature` ([(name, TensorType)]) from --input specs and an --inputs file
    (the specs win where both name an input)."""
    types = dict(signature)
    feeds = read_file(file, list(types), types) if file else {}
    rng = np.random.default_rng(seed)
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name:
            raise InputError(f"--input {spec!r}: expected NAME=VALUES, NAME=@FILE or "
                             f"NAME=DTYPE[SHAPE]")
        if name not in types:
            raise InputError(f"--input {name}: the model has no input '{name}'; its inputs: "
                             f"{', '.join(types)}")
        feeds[name] = parse(name, value, types[name], rng)
    return feeds


def parse(name: str, value: str, t, rng) -> np.ndarray:
    """One --input value for the input `name` of type t."""
    if value.startswith("@"):
        return _from_file(name, value[1:])
    random = RANDOM.match(value.replace(" ", ""))
    if random:
        dtype = _dtype(name, random.group(1))
        shape = [int(d) for d in random.group(2).split(",") if d]
        return _random(dtype, shape, rng)
    try:
        data = json.loads(value if value.startswith("[") else f"[{value}]")
    except ValueError:
        raise InputError(f"--input {name}={value}: not a list of numbers, @FILE or "
                         f"DTYPE[SHAPE]") from None
    return typed(f"--input {name}", data, t)


def typed(where: str, data, t) -> np.ndarray:
    """Numbers given as a (nested) list, in the dtype of the input's type t, with leading 1s
    up to its rank."""
    array = np.asarray(data)
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise InputError(f"{where}: not a (nested) list of numbers")
    dtype = np.dtype(DTYPES[t.dtype]) if t.dtype in DTYPES else array.dtype
    if dtype.kind in "iu" and array.dtype.kind == "f" and not np.all(array == np.round(array)):
        raise InputError(f"{where}: {t.dtype} needs whole numbers")
    return array.astype(dtype).reshape((1,) * max(t.rank - array.ndim, 0) + array.shape)


def _dtype(name: str, text: str) -> np.dtype:
    if text in DTYPES:
        return np.dtype(DTYPES[text])
    try:
        return np.dtype(text)
    except TypeError:
        raise InputError(f"--input {name}: unknown dtype '{text}' (e.g. int64, float32, i64, "
                         f"f32)") from None


def _random(dtype: np.dtype, shape: list[int], rng) -> np.ndarray:
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        return rng.integers(*INT_RANGE, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _from_file(name: str, path: str) -> np.ndarray:
    arrays = read_file(path, [name])
    if name in arrays:
        return arrays[name]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise InputError(f"{path}: no array named '{name}' (it holds {', '.join(arrays)})")


def read_file(path: str, names: list[str], types: dict | None = None) -> dict[str, np.ndarray]:
    """Arrays by name from .npz / .npy (runtimes.artifact.read_arrays) or .json (its lists in
    the dtypes of `types`)."""
    from sbc.runtimes.artifact import read_arrays
    if not path.lower().endswith(".json"):
        return read_arrays(path, "inputs", names)
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such inputs file")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object {{\"input name\": nested list}}")
    types = types or {}
    return {key: typed(f"{path}: '{key}'", value, types[key]) if key in types
            else typed(f"{path}: '{key}'", value, _AS_GIVEN) for key, value in data.items()}


class _AS_GIVEN:  # a JSON array for a name the model does not have: the signature check says so
    dtype, rank = None, 0


# -- outputs -------------------------------------------------------------------------------------

def summary(name: str, array: np.ndarray, first: int = 4) -> str:
    """`name: f32[1, 16, 256]  min -3.21  max 4.05  mean 0.0123  [0.12, -0.5, ...]`."""
    from sbc.ir.types import dtype_of
    a = np.asarray(array)
    try:
        dtype = dtype_of(a)
    except TypeError:
        dtype = str(a.dtype)
    head = f"{name}: {dtype}{list(a.shape)}"
    if a.size == 0:
        return head + "  (empty)"
    flat = a.reshape(-1)
    numbers = flat.astype(np.float64) if a.dtype.kind in "biuf" else None
    stats = "" if numbers is None else \
        f"  min {_g(numbers.min())}  max {_g(numbers.max())}  mean {_g(numbers.mean())}"
    values = ", ".join(_g(x) for x in flat[:first]) + (", ..." if flat.size > first else "")
    return f"{head}{stats}  [{values}]"


def _g(x) -> str:
    return f"{x:.4g}" if isinstance(x, (float, np.floating)) else str(x)


def write_outputs(path: str, arrays: dict[str, np.ndarray], write) -> None:
    """`arrays` to `path` through write(tmp_path): .npz (names as keys), or .npy for one array."""
    if path.lower().endswith(".npy"):
        if len(arrays) != 1:
            raise InputError(f"{path}: an .npy holds one array and the model has "
                             f"{len(arrays)} outputs ({', '.join(arrays)}); write an .npz")
        from sbc.runtimes.artifact import atomic_path
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.asarray(next(iter(arrays.values()))), allow_pickle=False)
        return
    write(path, arrays)
