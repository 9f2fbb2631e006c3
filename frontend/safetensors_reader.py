"""Hugging Face safetensors files (one, or shards listed by model.safetensors.index.json) ->
NumPy arrays, one tensor at a time.

The files are never read whole: `Tensors.read(name)` reads and converts one tensor
(bf16, f16 or f32 storage) to float32, so a loader holds at most one converted tensor beside
what it keeps. NumPy has no bfloat16: a bf16 value is the top half of the float32 with the
same bits, so the uint16 words are widened and shifted into float32 bit patterns.

Format (safetensors): an 8-byte little-endian header length N, N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the
data; offsets count from the end of the header. Every entry is checked against the file
before anything is read, so a truncated or corrupt file is one readable error.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from sbc.errors import InvalidModelError, UnsupportedError
from sbc.ir.types import numpy_dtype

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
STORAGE = {"BF16": 2, "F16": 2, "F32": 4}  # dtypes a checkpoint's float tensors may use
_OTHER = {"F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "U16": 2,
          "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
MAX_HEADER = 100 << 20  # the format's own limit on the JSON header


@dataclass(frozen=True)
class Entry:
    file: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


class Tensors:
    """The tensors of a checkpoint folder, by name (see the module docstring)."""

    def __init__(self, folder: str):
        self.folder = folder
        self.entries: dict[str, Entry] = {}
        for file in _shard_files(folder):
            for name, entry in _read_header(file).items():
                if name in self.entries:
                    raise InvalidModelError(f"{file}: tensor '{name}' is also in "
                                            f"{os.path.basename(self.entries[name].file)}")
                self.entries[name] = entry

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name].shape

    def read(self, name: str, keep_storage: bool = False) -> np.ndarray:
        """The tensor as a new float32 array (C order); with keep_storage a bf16 or f16 tensor
        comes back in that dtype (bf16 as ml_dtypes' bfloat16), at half the bytes."""
        e = self.entries[name]
        if e.dtype not in STORAGE:
            raise UnsupportedError(f"{os.path.basename(e.file)}: tensor '{name}' is stored as "
                                   f"{e.dtype}; supported: {', '.join(STORAGE)}")
        stored = {"BF16": "<u2", "F16": "<f2", "F32": "<f4"}[e.dtype]
        count = e.nbytes // STORAGE[e.dtype]
        # a plain read, not a memory map: mapped pages would stay resident beside the params
        raw = np.fromfile(e.file, dtype=stored, count=count, offset=e.start)
        if raw.size != count:
            raise InvalidModelError(f"{e.file}: tensor '{name}' is cut short (the file changed "
                                    f"while it was read?)")
        if keep_storage:
            out = raw.view(numpy_dtype("bf16")) if e.dtype == "BF16" else raw
        elif e.dtype == "BF16":
            words = raw.astype(np.uint32)
            del raw
            words <<= 16  # in place: one uint32 array, viewed as float32
            out = words.view(np.float32)
        else:
            out = raw if e.dtype == "F32" else raw.astype(np.float32)
        return out.reshape(e.shape)

    def close(self) -> None:
        """Nothing stays open between reads (kept so callers need not know)."""


def _shard_files(folder: str) -> list[str]:
    """The safetensors files of the folder: the shards its index names, or model.safetensors."""
    index = os.path.join(folder, INDEX)
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise InvalidModelError(f"{index}: not a readable safetensors index "
                                    f"({type(e).__name__}: {e})") from e
        files = [os.path.join(folder, n) for n in names]
        for n, path in zip(names, files):
            if not isinstance(n, str) or os.path.dirname(n) or not os.path.isfile(path):
                raise InvalidModelError(f"{index}: names shard '{n}', which is not a file in "
                                        f"{folder}")
        return files
    single = os.path.join(folder, SINGLE)
    if os.path.isfile(single):
        return [single]
    raise InvalidModelError(f"{folder}: no {SINGLE} and no {INDEX} (a checkpoint folder holds "
                            f"its weights as safetensors)")


def _read_header(path: str) -> dict[str, Entry]:
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or n > MAX_HEADER or 8 + n > size:
                raise InvalidModelError(f"{path}: not a safetensors file (its header length "
                                        f"does not fit the file's {size} bytes)")
            header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:  # json's errors are ValueErrors
        raise InvalidModelError(f"{path}: corrupt safetensors header ({e})") from e
    except OSError as e:
        raise InvalidModelError(f"{path}: cannot read it ({e.strerror})") from e
    if not isinstance(header, dict):
        raise InvalidModelError(f"{path}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    return {name: _entry(path, name, info, 8 + n, size) for name, info in header.items()}


def _entry(path: str, name: str, info, data_start: int, size: int) -> Entry:
    bad = lambda why: InvalidModelError(f"{path}: corrupt safetensors entry '{name}' ({why})")  # noqa: E731
    if not isinstance(info, dict):
        raise bad("not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    itemsize = STORAGE.get(dtype) or _OTHER.get(dtype)
    if itemsize is None:
        raise bad(f"unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise bad(f"shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)):
        raise bad(f"data_offsets {offsets!r}")
    begin, end = offsets
    want = int(np.prod(shape, dtype=np.int64)) * itemsize
    if begin < 0 or end - begin != want:
        raise bad(f"{end - begin} bytes for {dtype} {shape}, which needs {want}")
    if data_start + end > size:
        raise bad(f"its data ends at byte {data_start + end}, past the end of the file "
                  f"({size} bytes): truncated?")
    return Entry(path, dtype, tuple(shape), data_start + begin, want)
