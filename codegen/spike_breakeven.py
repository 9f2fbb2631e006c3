"""Where zero-tile skipping beats the dense SpikeMatMul kernel, measured on this machine.

break_even(rows, k, n) builds both int8-weight CPU kernels (codegen.kernels.spike_matmul, the
"dense" and "skip_zero_tiles" forms) for the host target and times them on synthetic counts in
which a given fraction of the tiles (R rows x `group` channels, the kernel's unit of work) are
live and the rest all zero, at a few tile densities. The dense kernel's time does not depend
on the data; the skipping kernel's grows linearly with the live tiles, so a least-squares line
through its time relative to the dense kernel's (each pair timed back to back) gives the
density at which the two meet: the break-even, in [0, 1] (0.0: skipping never wins, 1.0: it
wins even with no zero tile). One result per shape per process.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

DENSITIES = (0.0, 0.25, 0.5, 1.0)
_CACHE: dict[tuple, dict] = {}


def break_even(rows: int, k: int, n: int, group: int = 128, counts_dtype: str = "i16",
               repeats: int = 7) -> dict:
    """{"shape": [rows, k, n], "group", "counts", "densities", "dense_ms", "skip_ms" and
    "skip_vs_dense" (medians per density), "break_even"} for SpikeMatMul [rows, k] x int8
    [k, n] on this CPU (measured once per shape and process)."""
    from sbc.codegen.kernels.spike_matmul import integer_dot_instruction
    key = (rows, k, n, group, counts_dtype, integer_dot_instruction())
    if key not in _CACHE:
        _CACHE[key] = _measure(rows, k, n, group, counts_dtype, repeats)
    return _CACHE[key]


def _measure(rows, k, n, group, counts_dtype, repeats) -> dict:
    from sbc.runtimes.threads import use_threads
    use_threads(None)  # the threads a module runs with by default, as it will run them
    dense, skip = (build_kernel(k, n, group, counts_dtype, s) for s in (False, True))
    rng = np.random.default_rng(0)
    weights = kernel_weights(rng, k, n, group)
    cases = [kernel_args(synthetic_counts(rng, rows, k, group, d, counts_dtype), weights, n)
             for d in DENSITIES]
    dense(*cases[-1]), skip(*cases[-1])  # warm up: thread pool, caches
    dense_times, skip_times, ratios = [], [[] for _ in DENSITIES], [[] for _ in DENSITIES]
    for _ in range(repeats):
        for args, times, ratio in zip(cases, skip_times, ratios):
            # back to back on the same data: a noisy neighbour slows both alike, so the
            # ratio is steadier than either time
            dense_times.append(_seconds(dense, args))
            times.append(_seconds(skip, args))
            ratio.append(times[-1] / dense_times[-1])
    skip_vs_dense = [statistics.median(r) for r in ratios]
    return {"shape": [rows, k, n], "group": group, "counts": counts_dtype,
            "densities": list(DENSITIES),
            "dense_ms": statistics.median(dense_times) * 1e3,
            "skip_ms": [statistics.median(t) * 1e3 for t in skip_times],
            "skip_vs_dense": skip_vs_dense,
            "break_even": crossing(list(DENSITIES), skip_vs_dense, 1.0)}


def crossing(densities: list[float], skip: list[float], dense: float) -> float:
    """The density where the least-squares line through the skipping kernel's times (or
    time ratios) reaches the dense kernel's, clamped to [0, 1]."""
    slope, intercept = np.polyfit(densities, skip, 1)
    if slope <= 0:  # flat (or noise): skipping wins everywhere or nowhere
        return 1.0 if intercept < dense else 0.0
    return float(min(max((dense - intercept) / slope, 0.0), 1.0))


def build_kernel(k: int, n: int, group: int, counts_dtype: str, skip_zero_tiles: bool):
    """The int8-weight SpikeMatMul kernel over [rows, k] counts, compiled for this CPU."""
    import tvm
    from sbc.codegen.kernels.spike_matmul import int8_kernel, integer_dot_instruction
    from sbc.codegen.targets import host_cpu_target
    func = int8_kernel(2, counts_dtype, k, n, group, False, integer_dot_instruction(),
                       skip_zero_tiles=skip_zero_tiles)
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return tvm.compile(mod, target=host_cpu_target())


def synthetic_counts(rng, rows: int, k: int, group: int, density: float,
                     counts_dtype: str = "i16") -> np.ndarray:
    """[rows, k] counts with round(density x tiles) live tiles (of the kernel's ROWS x group),
    chosen at random; live tiles hold spike-like counts (|n| <= 3, a third nonzero, at least
    one nonzero), the others are all zero, as silent channels over a run of tokens make them."""
    from sbc.codegen.kernels.spike_matmul import ROWS
    tiles_m, tiles_k = -(-rows // ROWS), -(-k // group)
    live = np.zeros(tiles_m * tiles_k, bool)
    live[rng.permutation(live.size)[:round(density * live.size)]] = True
    live = live.reshape(tiles_m, tiles_k)
    counts = rng.integers(-3, 4, (rows, k)) * (rng.random((rows, k)) < 0.35)
    counts[::ROWS, ::group] = 1  # the first count of every tile: live tiles are never empty
    mask = np.repeat(np.repeat(live, ROWS, axis=0), group, axis=1)[:rows, :k]
    return (counts * mask).astype({"i8": np.int8, "i16": np.int16}[counts_dtype])


def kernel_weights(rng, k: int, n: int, group: int) -> tuple[np.ndarray, np.ndarray]:
    """Random int8 weights in SpikeMatMul's packed layout and their group scales [G, N]."""
    from sbc.ir.ops.spike import pack_spike_weight
    w = pack_spike_weight(rng.integers(-127, 128, (k, n)).astype(np.int8))
    return w, rng.uniform(0.001, 0.01, (-(-k // group), n)).astype(np.float32)


def kernel_args(counts: np.ndarray, weights: tuple, n: int) -> list:
    """The kernel's arguments (counts, scale, W, W_scale, bias placeholder, Y) as TVM tensors."""
    import tvm
    rows = counts.shape[0]
    scale = np.random.default_rng(1).uniform(0.1, 1, (rows, 1)).astype(np.float32)
    arrays = [counts, scale, *weights, np.zeros(1, np.float32), np.zeros((rows, n), np.float32)]
    return [tvm.runtime.tensor(a) for a in arrays]


def _seconds(fn, args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start
