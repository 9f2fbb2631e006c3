"""SpikeMatMul int8: the dense kernel vs zero-tile skipping, against the tile density (the
fraction of 6-row x 128-channel count tiles holding a nonzero), at the small model's
projection shape; then the break-even spike-sparsity would use (sbc.codegen.spike_breakeven). Both
kernels run on the same synthetic counts, interleaved, medians of --repeats calls (the last
column: the median of the per-pair ratios).

    .venv/bin/python bench/bench_spike_sparsity_cpu.py [--shape 1024x512x1536] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from sbc.codegen.kernels.spike_matmul import integer_dot_instruction
from sbc.runtimes.machine import host_cpu_features
from sbc.runtimes.threads import use_threads
from sbc.codegen.spike_breakeven import break_even, build_kernel, kernel_args, kernel_weights, \
    synthetic_counts

DENSITIES = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0)


def median_ms(fn, args, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="1024x512x1536")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    m, k, n = map(int, args.shape.split("x"))
    use_threads(None)  # TVM's pool: one thread per core, as a loaded module runs
    print(f"cpu {host_cpu_features()['cpu']}, integer dot product: {integer_dot_instruction()}")
    dense, skip = (build_kernel(k, n, 128, "i16", s) for s in (False, True))
    rng = np.random.default_rng(0)
    weights = kernel_weights(rng, k, n, 128)
    print(f"M={m} K={k} N={n}, i16 counts, int8 weights")
    print("| tile density | dense int8 ms | skip zero tiles ms | skip / dense |")
    print("|---:|---:|---:|---:|")
    for density in DENSITIES:
        call = kernel_args(synthetic_counts(rng, m, k, 128, density), weights, n)
        dense(*call), skip(*call)  # warm up
        pairs = [(median_ms(dense, call, 1), median_ms(skip, call, 1)) for _ in range(args.repeats)]
        d, s = (statistics.median(p) for p in zip(*pairs))  # interleaved: noise hits both
        ratio = statistics.median(b / a for a, b in pairs)
        print(f"| {density:.2f} | {d:.2f} | {s:.2f} | {ratio:.2f} |")
    result = break_even(m, k, n)
    print(f"break-even (sbc.codegen.spike_breakeven, densities {result['densities']}, skip / dense "
          f"{', '.join(f'{r:.2f}' for r in result['skip_vs_dense'])}): {result['break_even']:.3f}")


if __name__ == "__main__":
    main()
