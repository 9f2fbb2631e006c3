"""Tensor types: an element dtype plus a shape of (possibly symbolic) dims, and optionally a
spike encoding: what the integers of a spiking tensor mean (see SPIKE_ENCODINGS). Types that
differ only in encoding are different types; a type without one prints as before.

    i16[batch, seq, 512]{spike=count}      spike counts n (one integer per neuron)
    i8[4, batch, seq, 512]{spike=ternary}  a spike train of T = 4 steps in {-1, 0, 1}
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from sbc.errors import InputError
from sbc.ir.assumptions import broken
from sbc.ir.dims import Dim, Sym, dims_str, is_static, prod

# sbc's short dtype names, in the order the printer and the error messages list them.
DTYPES: dict[str, np.dtype] = {
    "f32": np.dtype("float32"), "f16": np.dtype("float16"), "f64": np.dtype("float64"),
    "bf16": np.dtype(ml_dtypes.bfloat16),  # NumPy's own dtypes lack it; ml_dtypes adds it
    "i8": np.dtype("int8"), "i16": np.dtype("int16"), "i32": np.dtype("int32"),
    "i64": np.dtype("int64"), "u8": np.dtype("uint8"), "bool": np.dtype("bool"),
}
_BY_NUMPY = {v: k for k, v in DTYPES.items()}
FLOAT_DTYPES = ("f16", "bf16", "f32", "f64")  # (NumPy's kind of bf16 is "V", not "f")

# Spike encodings (SpikingBrain's codings; the trains are [T, ...] with T leading):
#   count                  n, the number of spikes per neuron (signed)
#   binary                 T = max n steps in {0, 1}; n = sum_t s_t (n >= 0)
#   ternary                T = max |n| steps in {-1, 0, 1}; n = sum_t s_t
#   bitwise                bit planes of n >= 0, MSB first: n = sum_t 2^(T-1-t) s_t
#   bitwise_bidirectional  sign(n) * bit planes of |n|, MSB first, steps in {-1, 0, 1}
#   twos_complement        T-bit two's complement planes, MSB first (weight -2^(T-1))
SPIKE_DTYPES = ("i8", "i16", "i32")
SPIKE_ENCODINGS = ("count", "binary", "ternary", "bitwise", "bitwise_bidirectional",
                   "twos_complement")


def dtype_of(x) -> str:
    """sbc dtype name of a NumPy dtype, array or sbc name."""
    if isinstance(x, str) and x in DTYPES:
        return x
    dt = x.dtype if hasattr(x, "dtype") else np.dtype(x)
    if dt not in _BY_NUMPY:
        raise TypeError(f"dtype {dt} is not supported (supported: {', '.join(DTYPES)})")
    return _BY_NUMPY[dt]


def numpy_dtype(name: str) -> np.dtype:
    return DTYPES[name]


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: tuple[Dim, ...]
    encoding: str | None = None  # a spike encoding (SPIKE_ENCODINGS) of an integer tensor

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise TypeError(f"unknown dtype {self.dtype!r}")
        object.__setattr__(self, "shape", tuple(self.shape))
        if self.encoding is not None:
            if self.encoding not in SPIKE_ENCODINGS:
                raise TypeError(f"unknown spike encoding {self.encoding!r} (known: "
                                f"{', '.join(SPIKE_ENCODINGS)})")
            if self.dtype not in SPIKE_DTYPES:
                raise TypeError(f"a spike encoding needs a signed integer dtype "
                                f"({', '.join(SPIKE_DTYPES)}), got {self.dtype}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(is_static(d) for d in self.shape)

    @property
    def numel(self) -> Dim:
        return prod(self.shape)

    @property
    def symbols(self) -> set[str]:
        return {s for d in self.shape if isinstance(d, Sym) for s in d.symbols}

    def with_encoding(self, encoding: str | None) -> "TensorType":
        return TensorType(self.dtype, self.shape, encoding)

    def __str__(self):
        spike = "" if self.encoding is None else f"{{spike={self.encoding}}}"
        return f"{self.dtype}{dims_str(self.shape)}{spike}"


def type_of(array: np.ndarray) -> TensorType:
    return TensorType(dtype_of(array), array.shape)


class SignatureError(InputError):
    """Arrays given for a graph's inputs do not match its signature."""


def bind_symbols(expected: list[tuple[str, TensorType]], arrays: dict[str, np.ndarray],
                 assumptions=()) -> dict[str, int]:
    """Check arrays against named input types; return the value of each symbolic dim.

    Raises SignatureError naming the input and what was expected, for wrong names, dtypes,
    ranks or shapes (including two inputs disagreeing on the same symbol), or sizes that break
    one of `assumptions` (sbc.ir.assumptions: relations the compiled code relies on).
    """
    from sbc.ir.dims import evaluate
    names = [n for n, _ in expected]
    missing = [n for n in names if n not in arrays]
    extra = [n for n in arrays if n not in names]
    if missing or extra:
        raise SignatureError(f"inputs must be {names}; missing {missing}, unexpected {extra}")
    env: dict[str, int] = {}
    bound_by: dict[str, str] = {}
    for name, t in expected:  # single-symbol dims bind first, then everything is checked
        for axis, (d, n) in enumerate(zip(t.shape, np.shape(arrays[name]))):
            symbol = _lone_symbol(d)
            if symbol is not None and symbol not in env:
                env[symbol], bound_by[symbol] = n, f"input '{name}' axis {axis}"
    for name, t in expected:
        a = arrays[name]
        try:
            got = dtype_of(a) if hasattr(a, "dtype") else type(a).__name__
        except TypeError:
            got = str(a.dtype)
        if got != t.dtype:
            raise SignatureError(f"input '{name}' must have dtype {t.dtype}, got {got}")
        if np.ndim(a) != t.rank:
            raise SignatureError(f"input '{name}' must have rank {t.rank} {dims_str(t.shape)}, "
                                 f"got shape {tuple(np.shape(a))}")
        try:
            want = [evaluate(d, env) for d in t.shape]
        except Exception:
            want = None
        if want != list(np.shape(a)) or any(n < 0 for n in want):
            binding = ", ".join(f"{k}={v}" for k, v in env.items())
            raise SignatureError(f"input '{name}' must have shape {dims_str(t.shape)}"
                                 f"{' with ' + binding if binding else ''}, "
                                 f"got {tuple(np.shape(a))}")
    why = broken(assumptions, env, bound_by) if assumptions else None
    if why:
        raise SignatureError(why)
    return env


def _lone_symbol(d) -> str | None:
    """The symbol's name if d is one symbol (`seq`), not an expression of symbols
    (`2*seq`, `(seq + 63) // 64`, `min(seq, 8)`: checked once the symbols are bound)."""
    if isinstance(d, Sym) and len(d.terms) == 1:
        (monomial, coef), = d.terms.items()
        if coef == 1 and len(monomial) == 1 and isinstance(monomial[0], str):
            return monomial[0]
    return None
