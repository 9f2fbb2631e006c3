"""The spike report (`sbc calibrate`, `sbc report`): calibration statistics (the analysis in
sbc.passes.calibration) as MACs vs accumulates and the 45 nm energy estimate: a dense layer does
tokens x K x N MACs; a spiking one adds a weight row once per spike, |n| x N accumulates
(SpikingBrain's E = spikes per channel x 0.03 pJ vs one MAC per channel). Also the files the
CLI reads them from, tables and plots.
"""

from __future__ import annotations

import os

import numpy as np

from sbc.errors import InputError, SbcError
from sbc.passes.calibration import HIST_BINS, T_STEPS, checked_stats, read_stats
from sbc.runtimes.artifact import read_arrays, read_manifest

ENERGY_PJ = {"fp16_mac": 1.5, "int8_mac": 0.23, "int8_add": 0.03}  # 45 nm, CONTEXT.md


def read_npz(path: str) -> dict[str, np.ndarray]:
    """Calibration inputs by name."""
    return read_arrays(path, "calibration data")


def load_stats(path: str) -> dict:
    """Spike stats from an artifact's manifest["spike_stats"] or a calibration JSON file."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    with open(path, "rb") as f:
        if f.read(2) != b"PK":
            return read_stats(path, "an sbc artifact or calibration JSON")
    z, manifest = read_manifest(path)
    z.close()
    stats = manifest.get("spike_stats")
    if not stats:
        raise InputError(f"{path}: the artifact has no spike statistics (compile with "
                         f"calibration data, or run `sbc calibrate`)")
    return checked_stats(stats, path)


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
