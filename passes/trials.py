"""Trials: what a piece of graph computes, decided by running it on chosen values.

    chosen boundary values (seeded random, or one-hot probes) --interpreter--> outputs
        compared with a reference op's NumPy implementation, relative to the reference's size

The one engine behind every rule that recognises by evaluation: recognise-mixers (a token-mixing
region), and fuse-linear-attention's Scan rule (one step of a loop body) and chunked rule (a
chunked region). Each rule says which values to choose and which reference to compare with;
this module gives the trial its sizes and values, runs it with any failure turned into a
reason, measures the error, and remembers the verdict so that the fixed-point rounds and
`explain` never run the same trial twice.
"""

from __future__ import annotations

import weakref
from typing import Callable

import numpy as np

from sbc.ir import Graph, Value, numpy_dtype
from sbc.ir.dims import Sym
from sbc.ir.dims import evaluate as evaluate_dim
from sbc.ir.interpreter import evaluate, run

# Max error relative to the reference's largest magnitude for a fit to count: float rounding
# of a few hundred operations, never a different function.
TOLERANCE = {"f16": 2e-2, "f32": 2e-4, "f64": 1e-9}
FLOATS = ("f16", "f32", "f64")
BATCH = 2  # the size of every symbol but the sequence's (the batch) in a trial

Sample = Callable[[np.random.Generator, list[int], int], np.ndarray]


def sizes(symbols, seq: Sym | None = None, n: int = 0, other: int = BATCH) -> dict[str, int]:
    """Sizes for a trial: `n` for the sequence's symbols, `other` for the rest."""
    env = {s: other for s in symbols}
    if seq is not None:
        env.update({s: n for s in seq.symbols})
    return env


def normal(scale: float) -> Sample:
    return lambda rng, shape, _: scale * rng.normal(size=shape)


def draw(values: list[Value], env: dict[str, int], seed: int,
         sample: Sample = normal(0.5)) -> dict[int, np.ndarray]:
    """id(value) -> a seeded random array of its dtype at these sizes; `sample(rng, shape, i)`
    draws the i-th value's numbers."""
    rng = np.random.default_rng(seed)
    return {id(x): sample(rng, shape_at(x, env), i).astype(numpy_dtype(x.dtype))
            for i, x in enumerate(values)}


def shape_at(x: Value, env: dict[str, int]) -> list[int]:
    return [evaluate_dim(d, env) for d in x.shape]


def evaluate_from(output: Value, env: dict[str, int], given: dict[Value, np.ndarray]) -> np.ndarray | str:
    """`output` computed from the given values (and compile-time ones), or why it cannot be."""
    try:
        with np.errstate(all="ignore"):  # overflow in a masked-out branch is the region's own
            value = evaluate(output, env, given)
    except Exception as e:  # noqa: BLE001 - a region that cannot run on these values is no match
        return failure(e)
    return "it depends on a value the trial does not give" if value is None else value


def run_body(body: Graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray] | str:
    """A closed graph (a loop body) run on `feeds`, or why it cannot be."""
    try:
        return run(body, feeds)
    except Exception as e:  # noqa: BLE001
        return failure(e)


def failure(e: Exception) -> str:
    return f"it could not be evaluated on trial values ({type(e).__name__}: {str(e)[:120]})"


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| over max |want|; infinite when the shapes differ or a value is not
    finite (an overflowing candidate is no fit)."""
    if np.shape(got) != np.shape(want):
        return np.inf
    diff = np.abs(np.asarray(got, np.float64) - want)
    if not np.all(np.isfinite(diff)):
        return np.inf
    return float(diff.max(initial=0.0) / max(float(np.abs(want).max(initial=0.0)), 1e-30))


def tolerance(dtype: str) -> float:
    return TOLERANCE.get(dtype, TOLERANCE["f32"])


# -- the memo ----------------------------------------------------------------------------------

# owner (a loop body, a region's output) -> (key, verdict). The owner is never changed in place;
# the key names what else the verdict depends on (the node's inputs, the region's nodes).
_VERDICTS: "weakref.WeakKeyDictionary[object, tuple]" = weakref.WeakKeyDictionary()


def remember(owner, key: tuple, decide: Callable[[], object]):
    """decide()'s verdict, computed once per owner and key."""
    found = _VERDICTS.get(owner)
    if found is None or found[0] != key:
        found = (key, decide())
        _VERDICTS[owner] = found
    return found[1]
