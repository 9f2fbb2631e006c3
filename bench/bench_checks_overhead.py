"""What sbc's run-time safety checks cost: the `small` model compiled as usual (gathers
bounds-checked, sizes checked against the relations the kernels rely on, positions
validated) against the same model compiled without them, with onnxruntime on the same file
for scale, in one process.

The unchecked build is made for this measurement only: the gather checks are switched off in
the lowering (codegen.build.CHECKED_OPS emptied) and the runtime is given no assumptions.
Prefill: `Module.run` on [1, T] ids, medians of --repeats calls, both sbc builds interleaved
(onnxruntime in its own block: its threads spin after a call). Decode: ms/token of a session
after a 64-token prefill, both builds interleaved over --rounds rounds of 32 tokens each.

    .venv/bin/python bench/bench_checks_overhead.py [--seq 1024] [--repeats 9] [--rounds 7]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import sbc
import sbc.codegen.build as build
from sbc.models.export import export_onnx
from sbc.models.spikingbrain import get_config
from bench_spike_matmul_cpu import median_ms  # this folder: the same timing rules
from bench_spiking_model_cpu import decode_ms


def compile_both(path: Path) -> dict:
    checked = sbc.compile(str(path))
    saved, build.CHECKED_OPS = build.CHECKED_OPS, ()
    try:
        unchecked = sbc.compile(str(path))
    finally:
        build.CHECKED_OPS = saved
    unchecked._runtime.assumptions = []
    return {"checked": checked, "unchecked": unchecked}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="small")
    ap.add_argument("--seq", type=int, nargs="+", default=[1024])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", help="also write the markdown table to this file")
    args = ap.parse_args()
    vocab = get_config(args.config).vocab_size
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(args.config, Path(tmp) / "model.onnx")
        modules = compile_both(path)
        ort_sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        lines = [f"`{args.config}` model, {platform.processor() or platform.machine()}; "
                 f"checks: {len(modules['checked'].manifest['assumptions'])} size relation(s), "
                 f"gathers bounds-checked", "",
                 "| run | sbc checked | sbc unchecked | overhead | onnxruntime |", "|---|---:|---:|---:|---:|"]
        for t in args.seq:
            ids = np.random.default_rng(t).integers(0, vocab, size=(1, t))
            times = median_ms({n: (lambda m=m: m.run({"ids": ids})) for n, m in modules.items()},
                              args.repeats)
            time.sleep(1.0)
            times.update(median_ms({"ort": lambda: ort_sess.run(None, {"ids": ids})}, args.repeats))
            lines.append(row(f"prefill T={t} (ms)", times))
        decode = {n: [] for n in modules}
        for _ in range(args.rounds):
            for n, m in modules.items():
                decode[n].append(decode_ms(m, vocab))
        lines.append(row("decode (ms/token)", {n: statistics.median(v) for n, v in decode.items()}))
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


def row(what: str, times: dict) -> str:
    overhead = times["checked"] / times["unchecked"] - 1
    ort_ms = f"{times['ort']:.2f}" if "ort" in times else ""
    return (f"| {what} | {times['checked']:.2f} | {times['unchecked']:.2f} | {overhead:+.1%} | "
            f"{ort_ms} |")


if __name__ == "__main__":
    main()
