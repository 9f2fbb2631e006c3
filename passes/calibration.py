"""Spike sparsity calibration: what the spike counts of a graph look like on real inputs.

calibrate(graph, feeds) runs the reference interpreter on calibration inputs and measures,
at every SpikeEncode (a "spiking site"), what the spike counts n look like:

    firing_rate        fraction of entries with n != 0
    spikes_per_channel mean |n| over every (token, channel)
    silent_channels    fraction of channels (last axis) whose n is 0 for every token
    histogram          how many |n| are 0, 1, ..., 15 and > 15
    mean_max_abs       mean over tokens of max |n| over channels
    zero_fraction      zeros in the spike train at T = 3 per coding; |n| is clipped to what
                       3 steps represent (3 for binary/ternary, 7 for the bitwise codings)
                       and the unsigned codings see |n| (the sign dropped): `clipped` says
                       how many entries that clip touched
    fan_out            output columns of the matmuls the counts feed (through Cast, Mul, ...)
    tile_density       fraction of the SpikeMatMul kernel's tiles (`tile`: 6 rows x 128
                       channels of the [tokens, K] counts, one sample at a time) holding a
                       nonzero count: the work zero-tile skipping cannot skip. A tile is
                       zero only if all its 768 counts are, so this is far above the firing
                       rate unless silent channels and quiet tokens line up

Every figure comes from integer sums that add over samples, so statistics over several
samples equal the statistics of the concatenated data exactly. The graph is only read.

The spike-sparsity pass reads these statistics (`read_stats`: the JSON `sbc calibrate`
writes); sbc.report turns them into the energy report.
"""

from __future__ import annotations

import json
import os

import numpy as np

from sbc.errors import InputError

T_STEPS = 3
HIST_BINS = 16  # |n| = 0..15, then one bin for > 15
CODINGS = ("binary", "ternary", "bitwise", "bitwise_bidirectional")
UNSIGNED = ("binary", "bitwise")
CAP = {"binary": T_STEPS, "ternary": T_STEPS,  # one spike per step
       "bitwise": 2 ** T_STEPS - 1, "bitwise_bidirectional": 2 ** T_STEPS - 1}  # 3 bit planes
# ops the counts pass through unchanged in meaning on their way to a matmul
TRANSPARENT = frozenset({"Cast", "Mul", "Reshape", "Identity", "Transpose", "Squeeze",
                         "Unsqueeze", "Flatten"})
MATMULS = frozenset({"MatMul", "MatMulPacked", "SpikeMatMul", "Gemm"})
# the int8 SpikeMatMul kernel's tile: codegen.kernels.spike_matmul.ROWS rows x one weight
# group (quantize-weights-int8's 128 channels); kept here so calibrating needs no TVM import
TILE = (6, 128)


# -- calibration -----------------------------------------------------------------------------

def calibrate(graph, feeds: dict[str, np.ndarray]) -> dict:
    """Spike statistics of `graph` (an imported, passed sbc Graph) on `feeds`: input name ->
    array. Arrays whose rank is one more than the input's are a stack of samples (run one
    by one); otherwise the feeds are one batch. Recurrent state and position inputs that are
    not given start at zero. Returns a JSON-able dict (see the module docstring)."""
    from sbc.ir import interpreter
    sites = [n for n in graph.nodes if n.op == "SpikeEncode"]
    acc = {n.name: _Accumulator() for n in sites}
    wanted = {id(n): acc[n.name] for n in sites}

    def observe(node, outs):
        if id(node) in wanted:
            wanted[id(node)].add(outs[0])

    samples = _samples(graph, feeds)
    for sample in samples:
        interpreter.run(graph, _complete(graph, sample), observe)
    fan = fan_outs(graph)
    return {"version": 1, "steps": T_STEPS, "samples": len(samples),
            "sites": [acc[n.name].result(n.name, fan[n.name]) for n in sites]}


def _samples(graph, feeds: dict) -> list[dict]:
    names = {v.name: v.type.rank for v in graph.inputs}
    unknown = sorted(set(feeds) - set(names))
    if unknown:
        raise InputError(f"calibration data has keys {unknown} that are not model inputs "
                         f"({', '.join(names)})")
    required = [n for n in names if not _optional(n)]
    missing = [n for n in required if n not in feeds]
    if missing:
        raise InputError(f"calibration data lacks input {missing[0]!r} (needs {required})")
    arrays = {k: np.asarray(v) for k, v in feeds.items()}
    stacked = all(a.ndim == names[k] + 1 for k, a in arrays.items())
    if not stacked:
        return [arrays]
    count = {len(a) for a in arrays.values()}
    if len(count) != 1:
        raise InputError(f"calibration inputs disagree on the number of samples: {sorted(count)}")
    return [{k: a[i] for k, a in arrays.items()} for i in range(count.pop())]


def _optional(name: str) -> bool:
    from sbc.passes.to_recurrent import POSITION, STATE_PREFIX
    return name == POSITION or name.startswith(STATE_PREFIX)


def _complete(graph, feeds: dict) -> dict:
    """feeds plus zeros for the recurrent inputs not given (a fresh sequence)."""
    from sbc.ir.dims import concretize
    from sbc.ir.types import bind_symbols, numpy_dtype
    given = [(v.name, v.type) for v in graph.inputs if v.name in feeds]
    try:
        env = bind_symbols(given, feeds)
    except ValueError as e:
        raise InputError(f"calibration data: {e}") from e
    out = dict(feeds)
    for v in graph.inputs:
        if v.name not in out:
            shape = tuple(int(d) for d in concretize(tuple(v.type.shape), env))
            out[v.name] = np.zeros(shape, numpy_dtype(v.dtype))
    return out


class _Accumulator:
    """Integer sums of one site's counts over every sample."""

    def __init__(self):
        self.entries = self.nonzero = self.abs_sum = self.rows = self.max_sum = 0
        self.hist = np.zeros(HIST_BINS + 1, np.int64)
        self.tiles = self.live_tiles = 0
        self.active = None  # per channel: fired at least once
        self.train_nonzero = dict.fromkeys(CODINGS, 0)
        self.clipped = dict.fromkeys(CODINGS, 0)

    def add(self, counts: np.ndarray) -> None:
        from sbc.ir.ops.spike import expand
        n = np.asarray(counts, np.int64)
        mag = np.abs(n).reshape(-1, n.shape[-1])
        self.entries += mag.size
        self.nonzero += int(np.count_nonzero(mag))
        self.abs_sum += int(mag.sum())
        self.rows += mag.shape[0]
        self.max_sum += int(mag.max(axis=1, initial=0).sum())
        self.hist += np.bincount(np.minimum(mag, HIST_BINS).reshape(-1), minlength=HIST_BINS + 1)
        self.tiles += tile_count(mag.shape)
        self.live_tiles += live_tile_count(mag)
        fired = (mag != 0).any(axis=0)
        self.active = fired if self.active is None else self.active | fired
        for coding in CODINGS:
            # what a 3-step train of this coding can carry: unsigned codings drop the sign
            src = mag if coding in UNSIGNED else n.reshape(mag.shape)
            clipped = np.clip(src, -CAP[coding], CAP[coding])
            self.clipped[coding] += int(np.count_nonzero(clipped != src))
            self.train_nonzero[coding] += int(np.count_nonzero(expand(clipped, coding, T_STEPS)))

    def result(self, name: str, fan_out: int) -> dict:
        entries, train = max(self.entries, 1), max(self.entries, 1) * T_STEPS
        channels = 0 if self.active is None else int(self.active.size)
        silent = 0 if self.active is None else int((~self.active).sum())
        return {
            "name": name, "tokens": self.rows, "channels": channels, "entries": self.entries,
            "firing_rate": self.nonzero / entries,
            "spikes_per_channel": self.abs_sum / entries,
            "spikes": self.abs_sum,
            "silent_channels": silent / max(channels, 1), "silent_channel_count": silent,
            "histogram": [int(h) for h in self.hist],
            "mean_max_abs": self.max_sum / max(self.rows, 1),
            "zero_fraction": {c: 1 - self.train_nonzero[c] / train for c in CODINGS},
            "clipped": {c: self.clipped[c] / entries for c in CODINGS},
            "clip_at": dict(CAP),
            "fan_out": fan_out,
            "tile": list(TILE), "tile_density": self.live_tiles / max(self.tiles, 1),
        }


def tile_count(shape: tuple[int, int]) -> int:
    rows, k = shape
    return -(-rows // TILE[0]) * -(-k // TILE[1])


def live_tile_count(counts: np.ndarray) -> int:
    """How many TILE-sized tiles of [rows, K] counts hold a nonzero (the last ones may be short)."""
    rows, k = counts.shape
    padded = np.zeros((-(-rows // TILE[0]) * TILE[0], -(-k // TILE[1]) * TILE[1]), bool)
    padded[:rows, :k] = counts != 0
    tiles = padded.reshape(padded.shape[0] // TILE[0], TILE[0], -1, TILE[1])
    return int(tiles.any(axis=(1, 3)).sum())


def fan_outs(graph) -> dict[str, int]:
    """SpikeEncode name -> the output columns N summed over the matmuls its counts feed,
    following the counts through TRANSPARENT ops (the dequantising Cast and Mul)."""
    users = graph.users()
    result = {}
    for node in graph.nodes:
        if node.op != "SpikeEncode":
            continue
        total, seen, todo = 0, set(), [node.outputs[0]]
        while todo:
            value = todo.pop()
            for user in users.get(value, []):
                if id(user) in seen:
                    continue
                seen.add(id(user))
                if user.op in MATMULS:
                    total += _columns(user, value)
                elif user.op in TRANSPARENT:
                    todo.extend(user.outputs)
        result[node.name] = total
    return result


def _columns(node, value) -> int:
    """N of a matmul fed by `value` with a weight param; 0 if the weight is an activation."""
    weight = node.inputs[2] if node.op == "SpikeMatMul" else node.inputs[1]
    if weight is value or weight.data is None:
        return 0
    shape = weight.data.shape
    if node.op in ("MatMulPacked", "SpikeMatMul"):  # panels: [N/P, K, P] or [N/P, K/4, P, 4]
        return int(shape[0] * shape[2])
    if node.op == "Gemm" and node.attrs.get("transB"):
        return int(shape[0])
    return int(shape[-1])


# -- files -----------------------------------------------------------------------------------


def read_stats(path: str, expected: str = "calibration JSON") -> dict:
    """Spike statistics from a calibration JSON file (`sbc calibrate -o stats.json`)."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            stats = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not {expected} ({e})") from e
    return checked_stats(stats, path)


def checked_stats(stats, where: str) -> dict:
    if not isinstance(stats, dict) or not isinstance(stats.get("sites"), list):
        raise InputError(f"{where}: not spike statistics (no 'sites' list)")
    return stats
