"""Prefill latency of the `small` reference model on CPU: sbc vs onnxruntime vs PyTorch eager.

All three run the same model in one process on the same inputs; each time is the median of
repeated runs after a warm-up. Prints a markdown table (and writes it with --out).

    .venv/bin/python bench/bench_prefill_cpu.py --seq 128 512 2048 --out docs/bench_prefill_cpu.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import onnxruntime as ort
import torch

import sbc
from sbc.models.export import export_onnx
from sbc.models.spikingbrain import build_model


def median_ms(fn, repeats: int, budget_s: float) -> float:
    fn()  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="small")
    ap.add_argument("--seq", type=int, nargs="+", default=[128, 512, 2048])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=20.0, help="time budget per measurement")
    ap.add_argument("--out", help="also write the markdown table to this file")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="sbc-bench-")
    onnx_path = export_onnx(args.config, os.path.join(work, f"{args.config}.onnx"))
    t0 = time.perf_counter()
    module = sbc.compile(onnx_path, target="cpu")
    compile_s = time.perf_counter() - t0
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    model = build_model(args.config).eval()

    rows = []
    rng = np.random.default_rng(0)
    for seq in args.seq:
        ids = rng.integers(0, model.config.vocab_size, size=(args.batch, seq), dtype=np.int64)
        ids_t = torch.from_numpy(ids)
        with torch.inference_mode():
            t_torch = median_ms(lambda: model(ids_t), args.repeats, args.budget_s)
        t_ort = median_ms(lambda: session.run(None, {"ids": ids}), args.repeats, args.budget_s)
        t_sbc = median_ms(lambda: module.run({"ids": ids}), args.repeats, args.budget_s)
        rows.append((seq, t_sbc, t_ort, t_torch))
        print(f"T={seq}: sbc {t_sbc:.1f} ms, onnxruntime {t_ort:.1f} ms, torch {t_torch:.1f} ms",
              flush=True)

    table = [
        f"Prefill, `{args.config}` model, batch {args.batch}, {platform.processor() or platform.machine()}"
        f" ({os.cpu_count()} cores); sbc compile time {compile_s:.1f} s.",
        "",
        "| T | sbc (ms) | onnxruntime (ms) | PyTorch eager (ms) | onnxruntime / sbc | PyTorch / sbc |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for seq, s, o, t in rows:
        table.append(f"| {seq} | {s:.1f} | {o:.1f} | {t:.1f} | {o / s:.2f}x | {t / s:.2f}x |")
    text = "\n".join(table) + "\n"
    print("\n" + text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
