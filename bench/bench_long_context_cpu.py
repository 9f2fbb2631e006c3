"""Long context on CPU, `small` model: prefill time vs T and decode time per token and process
RSS vs context length. sbc streams prefill through its recurrent program (fused
LinearAttention / SlidingWindowAttention kernels, chunks of --chunk tokens); onnxruntime and
PyTorch eager run the exported parallel form (T x T attention) up to --max-quadratic tokens.

Decode at a context length C is measured after a real prefill of C tokens for C <= --max-real;
beyond that the session's position is set to C after a real prefill of --max-real tokens
(the state has a fixed size and every kernel is independent of the position, so this measures
the same work; the table marks these rows).

    .venv/bin/python bench/bench_long_context_cpu.py --out docs/bench_long_context_cpu.md
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import onnxruntime as ort
import torch

import sbc
from sbc.models.export import export_onnx
from sbc.models.spikingbrain import build_model


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def prefill_rows(args, module, onnx_path, model, rng) -> list[str]:
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    rows = []
    for t in args.prefill:
        ids = rng.integers(0, model.config.vocab_size, size=(1, t), dtype=np.int64)
        sess = module.session(batch=1, chunk=args.chunk)
        sess.prefill(ids[:, :min(t, args.chunk)])  # warm-up
        sess.reset()
        s = timed(lambda: sess.prefill(ids))
        o = p = None
        if t <= args.max_quadratic:
            o = timed(lambda: session.run(None, {"ids": ids}))
            with torch.inference_mode():
                p = timed(lambda: model(torch.from_numpy(ids)))
        fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
        ratio = lambda x: "-" if x is None else f"{x / s:.2f}x"  # noqa: E731
        rows.append(f"| {t} | {s:.2f} | {fmt(o)} | {fmt(p)} | {ratio(o)} | {ratio(p)} | {t / s:.0f} |")
        print(rows[-1], flush=True)
    return rows


def decode_rows(args, module, model, rng) -> list[str]:
    rows = []
    for context in args.decode:
        sess = module.session(batch=1, chunk=args.chunk)
        real = min(context, args.max_real)
        sess.prefill(rng.integers(0, model.config.vocab_size, size=(1, real), dtype=np.int64))
        position = sess.module.recurrent["position"]
        sess.state[position] = np.asarray(context, np.int64)  # synthetic beyond max_real
        token = np.array([1])
        sess.decode(token)  # warm-up
        rss_before = rss_mb()
        per_token = timed(lambda: [sess.decode(token) for _ in range(args.tokens)]) / args.tokens
        rows.append(f"| {context} | {'real' if real == context else f'position set (real {real})'} "
                    f"| {per_token * 1e3:.2f} | {rss_before:.0f} | {rss_mb():.0f} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="small")
    ap.add_argument("--prefill", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 32768])
    ap.add_argument("--decode", type=int, nargs="+", default=[1024, 16384, 1048576])
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--max-quadratic", type=int, default=4096)
    ap.add_argument("--max-real", type=int, default=16384)
    ap.add_argument("--tokens", type=int, default=32, help="decode steps per measurement")
    ap.add_argument("--out")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="sbc-bench-")
    onnx_path = export_onnx(args.config, os.path.join(work, f"{args.config}.onnx"))
    start = time.perf_counter()
    module = sbc.compile(onnx_path)
    compile_s = time.perf_counter() - start
    model = build_model(args.config).eval()
    rng = np.random.default_rng(0)
    cert = module.manifest["recurrent"]["memory_certificate"]
    head = [f"`{args.config}` model, batch 1, {platform.processor() or platform.machine()} "
            f"({os.cpu_count()} cores); sbc compile {compile_s:.1f} s; recurrent state "
            f"{cert['state_bytes']} bytes (memory certificate).", "",
            "Prefill (seconds; sbc streams chunks of "
            f"{args.chunk}; onnxruntime/PyTorch run the parallel form, only up to T = {args.max_quadratic}):", "",
            "| T | sbc (s) | onnxruntime (s) | PyTorch (s) | onnxruntime / sbc | PyTorch / sbc | sbc tokens/s |",
            "|---:|---:|---:|---:|---:|---:|---:|"]
    rows = prefill_rows(args, module, onnx_path, model, rng)
    tail = ["", "Decode (sbc session, one token per step):", "",
            "| context | how reached | ms / token | RSS before (MB) | RSS after (MB) |",
            "|---:|---|---:|---:|---:|"]
    text = "\n".join(head + rows + tail + decode_rows(args, module, model, rng)) + "\n"
    print("\n" + text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
