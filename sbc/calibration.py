"""Spike sparsity calibration and the energy report (`sbc calibrate`, `sbc report`).

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

report(stats) turns them into MACs vs accumulates and the 45 nm energy estimate: a dense
layer does tokens x K x N MACs; a spiking one adds a weight row once per spike, |n| x N
accumulates (SpikingBrain's E = spikes per channel x 0.03 pJ vs one MAC per channel).
"""

from __future__ import annotations

import json
import os

import numpy as np

from sbc.errors import InputError, SbcError

T_STEPS = 3
HIST_BINS = 16  # |n| = 0..15, then one bin for > 15
CODINGS = ("binary", "ternary", "bitwise", "bitwise_bidirectional")
UNSIGNED = ("binary", "bitwise")
CAP = {"binary": T_STEPS, "ternary": T_STEPS,  # one spike per step
       "bitwise": 2 ** T_STEPS - 1, "bitwise_bidirectional": 2 ** T_STEPS - 1}  # 3 bit planes
ENERGY_PJ = {"fp16_mac": 1.5, "int8_mac": 0.23, "int8_add": 0.03}  # 45 nm, CONTEXT.md
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

def read_npz(path: str) -> dict[str, np.ndarray]:
    """Calibration inputs by name."""
    from sbc.runtimes.artifact import read_arrays
    return read_arrays(path, "calibration data")


def load_stats(path: str) -> dict:
    """Spike stats from an artifact's manifest["spike_stats"] or a calibration JSON file."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    with open(path, "rb") as f:
        is_zip = f.read(2) == b"PK"
    if is_zip:
        from sbc.runtimes.artifact import read_manifest
        z, manifest = read_manifest(path)
        z.close()
        stats = manifest.get("spike_stats")
        if not stats:
            raise InputError(f"{path}: the artifact has no spike statistics (compile with "
                             f"calibration data, or run `sbc calibrate`)")
    else:
        try:
            with open(path, encoding="utf-8") as f:
                stats = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: neither an sbc artifact nor calibration JSON ({e})") from e
    if not isinstance(stats, dict) or not isinstance(stats.get("sites"), list):
        raise InputError(f"{path}: not spike statistics (no 'sites' list)")
    return stats


# -- report ----------------------------------------------------------------------------------

def report(stats: dict) -> dict:
    """Per-site and total sparsity, MACs vs accumulates and the 45 nm energy estimate."""
    try:
        layers = [_layer(s) for s in stats["sites"]]
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"spike statistics are malformed ({type(e).__name__}: {e})") from e
    keys = ("entries", "nonzero", "spikes", "silent_channel_count", "channels", "macs",
            "accumulates")
    total = {k: sum(layer[k] for layer in layers) for k in keys}
    entries = max(total["entries"], 1)
    rate = total["nonzero"] / entries
    total.update({"firing_rate": rate, "sparsity": 1 - rate,
                  "spikes_per_channel": total["spikes"] / entries,
                  "silent_channels": total["silent_channel_count"] / max(total["channels"], 1)})
    total.update(energy(total["macs"], total["accumulates"]))
    return {"energy_pj": dict(ENERGY_PJ), "layers": layers, "total": total,
            "kernels": stats.get("kernels", [])}


def _layer(site: dict) -> dict:
    entries = int(site["entries"])
    nonzero = round(site["firing_rate"] * entries)
    layer = {"name": site["name"], "entries": entries, "nonzero": nonzero,
             "spikes": int(site["spikes"]), "channels": int(site["channels"]),
             "silent_channel_count": int(site["silent_channel_count"]),
             "firing_rate": site["firing_rate"], "sparsity": 1 - site["firing_rate"],
             "spikes_per_channel": site["spikes_per_channel"],
             "silent_channels": site["silent_channels"],
             "zero_fraction": site["zero_fraction"],
             # dense: every (token, channel) multiplies its weight row of N columns
             "macs": entries * int(site["fan_out"]),
             # spiking: each of the |n| spikes adds the weight row once
             "accumulates": int(site["spikes"]) * int(site["fan_out"])}
    layer.update(energy(layer["macs"], layer["accumulates"]))
    return layer


def energy(macs: int, accumulates: int) -> dict:
    fp16 = macs * ENERGY_PJ["fp16_mac"]
    int8 = macs * ENERGY_PJ["int8_mac"]
    spiking = accumulates * ENERGY_PJ["int8_add"]
    ratio = lambda a, b: a / b if b else None  # noqa: E731  (None: no spikes; JSON has no inf)
    return {"energy_fp16_pj": fp16, "energy_int8_pj": int8, "energy_spiking_pj": spiking,
            "saving_vs_fp16": ratio(fp16, spiking), "saving_vs_int8": ratio(int8, spiking)}


def format_sites(stats: dict) -> str:
    """The per-site table `sbc calibrate` prints ("tiles": the tile density)."""
    head = (f"{'site':<24}{'tokens':>8}{'ch':>6}{'fire':>8}{'spk/ch':>8}{'silent':>8}"
            f"{'max|n|':>8}{'zero@T3':>9}{'fan-out':>9}{'tiles':>7}")
    rows = [head]
    for s in stats["sites"]:
        rows.append(f"{s['name']:<24}{s['tokens']:>8}{s['channels']:>6}{s['firing_rate']:>8.1%}"
                    f"{s['spikes_per_channel']:>8.3f}{s['silent_channels']:>8.1%}"
                    f"{s['mean_max_abs']:>8.2f}"
                    f"{s['zero_fraction']['bitwise_bidirectional']:>9.1%}{s['fan_out']:>9}"
                    + (f"{s['tile_density']:>7.1%}" if "tile_density" in s else f"{'-':>7}"))
    return "\n".join(rows)


def format_report(rep: dict) -> str:
    """The text `sbc report` prints."""
    rows = [f"{'layer':<24}{'sparsity':>9}{'spk/ch':>8}{'silent':>8}{'MACs':>12}"
            f"{'accum':>12}{'vs FP16':>9}{'vs INT8':>9}"]
    for layer in rep["layers"] + [dict(rep["total"], name="total")]:
        rows.append(f"{layer['name']:<24}{layer['sparsity']:>9.1%}"
                    f"{layer['spikes_per_channel']:>8.3f}{layer['silent_channels']:>8.1%}"
                    f"{layer['macs']:>12,}{layer['accumulates']:>12,}"
                    f"{_times(layer['saving_vs_fp16'])}{_times(layer['saving_vs_int8'])}")
    t, e = rep["total"], rep["energy_pj"]
    rows.append(f"energy (45 nm): dense FP16 {t['energy_fp16_pj'] / 1e6:.3f} uJ "
                f"({e['fp16_mac']} pJ/MAC), dense INT8 {t['energy_int8_pj'] / 1e6:.3f} uJ "
                f"({e['int8_mac']} pJ/MAC), spiking {t['energy_spiking_pj'] / 1e6:.3f} uJ "
                f"({e['int8_add']} pJ/add)")
    return "\n".join(rows + format_kernels(rep.get("kernels", [])))


def format_kernels(kernels: list[dict]) -> list[str]:
    """spike-sparsity's choice per SpikeMatMul (only in artifacts compiled with calibration)."""
    if not kernels:
        return []
    figure = lambda v: f"{'-':>10}" if v is None else f"{v:>10.3f}"  # noqa: E731
    rows = [f"{'SpikeMatMul layer':<24}{'tile dens':>10}{'break-even':>11} kernel"]
    for k in kernels:
        rows.append(f"{k['layer']:<24}{figure(k['tile_density'])} {figure(k['break_even'])} "
                    f"{k['kernel']}")
    return rows


def _times(ratio) -> str:
    return f"{'-':>9}" if ratio is None else f"{ratio:>8.1f}x"


def _matplotlib():
    """matplotlib is optional (the `bench` extra): without it, say how to get it."""
    try:
        import matplotlib
    except ImportError:
        raise SbcError("--plots needs matplotlib, which is not installed: "
                       "pip install 'sbc[bench]' (or run scripts/setup.sh)") from None
    return matplotlib


def write_plots(stats: dict, rep: dict, directory: str) -> list[str]:
    """count_histogram.png (|n| over every site) and layer_sparsity.png; returns the paths."""
    matplotlib = _matplotlib()
    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt
    os.makedirs(directory, exist_ok=True)
    hist = np.sum([s["histogram"] for s in stats["sites"]], axis=0) if stats["sites"] \
        else np.zeros(HIST_BINS + 1)
    labels = [str(i) for i in range(HIST_BINS)] + [f">{HIST_BINS - 1}"]
    paths = [os.path.join(directory, "count_histogram.png"),
             os.path.join(directory, "layer_sparsity.png")]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(labels, hist / max(hist.sum(), 1))
    ax.set(xlabel="|n| (spike count)", ylabel="fraction of entries", title="spike counts")
    fig.tight_layout()
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)
    names = [layer["name"] for layer in rep["layers"]]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names)), 4))
    x = np.arange(len(names))
    ax.bar(x - 0.2, [layer["sparsity"] for layer in rep["layers"]], 0.4, label="count zeros")
    ax.bar(x + 0.2, [layer["zero_fraction"]["bitwise_bidirectional"] for layer in rep["layers"]],
           0.4, label=f"bidirectional bit planes, T = {T_STEPS}")
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    ax.set(ylabel="sparsity", ylim=(0, 1), title="per-layer sparsity")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)
    return paths
