"""The whole `small` model with and without sbc's spike passes, vs onnxruntime and PyTorch eager
on the same exported model and inputs, in one process.

sbc variants (all compile the same ONNX file for the CPU):
- `no spike passes`: the default pipeline minus fuse-spike-neurons and spike-matmul, so each
  spiking site runs as the exporter wrote it (Abs, ReduceMean, Div, Clip, Div, Round, Mul)
  and feeds an fp32 matmul;
- `default`: fuse-spike-neurons (one SpikeEncode per site; fp32 weights, so spike-matmul
  leaves the matmuls alone: its f32 form was measured no faster);
- `w8`: `--quantize w8`, int8 weights per group of 128 and SpikeMatMul with int32 sums.
Full-sequence run: logits for every position of [1, T] random ids (sbc `Module.run`,
onnxruntime `InferenceSession.run`, PyTorch `model(ids)`); each timed as the median of
--repeats calls after a warm-up, sbc's variants interleaved, onnxruntime and PyTorch each in
its own block (their threads spin after a call and would slow whatever runs next). Decode: ms per token of a session after a 64-token prefill.
Accuracy is against onnxruntime: max |logit difference| and argmax agreement over all
positions (w8 changes the weights, so its logits move by quantisation, not by float rounding).

    .venv/bin/python bench/bench_spiking_model_cpu.py [--seq 256 1024] [--repeats 5] [--out F]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import sbc
from sbc.frontend import import_onnx
from sbc.models.export import export_onnx
from sbc.models.spikingbrain import build_model, get_config
from sbc.passes import run_passes
from sbc.passes.manager import DEFAULT_PIPELINE
from bench_spike_matmul_cpu import median_ms  # this folder: the same timing rules

SPIKE_PASSES = ("fuse-spike-neurons", "spike-matmul")
VARIANTS = ("sbc, no spike passes", "sbc, default", "sbc, w8 (SpikeMatMul int8)")


def compile_variant(name: str, path: Path):
    if name == VARIANTS[0]:  # like the default, to a fixed point, but without the spike passes
        pipeline = [p for p in DEFAULT_PIPELINE if p not in SPIKE_PASSES]
        return sbc.compile(run_passes(import_onnx(path), pipeline, fixed_point=True), passes=[])
    return sbc.compile(str(path), quantize="w8" if "w8" in name else None)


def decode_ms(module, vocab: int, tokens: int = 32) -> float:
    sess = module.session(batch=1)
    sess.prefill(np.random.default_rng(0).integers(0, vocab, size=(1, 64)))
    token = np.array([1])
    sess.decode(token)
    start = time.perf_counter()
    for _ in range(tokens):
        sess.decode(token)
    return (time.perf_counter() - start) / tokens * 1e3


def accuracy(got: np.ndarray, want: np.ndarray) -> str:
    agree = float((got.argmax(-1) == want.argmax(-1)).mean())
    return f"{np.abs(got - want).max():.2e} / {agree:.1%}"


def measure(args, path: Path) -> list[dict]:
    vocab = get_config(args.config).vocab_size
    ort_sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    torch_model = build_model(args.config).eval()

    def torch_run(ids):
        with torch.inference_mode():
            return torch_model(torch.from_numpy(ids)).numpy()

    modules = {name: compile_variant(name, path) for name in VARIANTS}
    rows = []
    for t in args.seq:
        ids = np.random.default_rng(t).integers(0, vocab, size=(1, t))
        runs = {name: (lambda m=module: m.run({"ids": ids})["logits"]) for name, module in modules.items()}
        times = median_ms(runs, args.repeats)  # sbc's variants interleaved: drift hits all alike
        # onnxruntime's and PyTorch's threads spin after each call: own blocks, after a pause
        for name, fn in (("onnxruntime", lambda: ort_sess.run(None, {"ids": ids})[0]), ("PyTorch eager", lambda: torch_run(ids))):
            time.sleep(1.0)
            times.update(median_ms({name: fn}, args.repeats))
        want = ort_sess.run(None, {"ids": ids})[0]
        row = {"T": t, "onnxruntime": (times["onnxruntime"], "reference"),
               "PyTorch eager": (times["PyTorch eager"], accuracy(torch_run(ids), want))}
        row.update({name: (times[name], accuracy(fn(), want)) for name, fn in runs.items()})
        rows.append(row)
        print(row, flush=True)
    decode = {name: decode_ms(m, vocab) for name, m in modules.items()}
    return rows, decode, {name: m.manifest["ops"] for name, m in modules.items()}


def report(args, rows, decode, ops) -> str:
    names = ["onnxruntime", "PyTorch eager", *VARIANTS]
    base = "sbc, no spike passes"
    lines = [f"`{args.config}` model, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
             f"median of {args.repeats}. Cells: ms | max |logit diff| vs onnxruntime / argmax agreement.", "",
             "| T | " + " | ".join(names) + f" | {base} / default | {base} / w8 |", "|---:" + "|---" * (len(names) + 2) + "|"]
    for row in rows:
        cells = [f"{row[n][0]:.1f} ({row[n][1]})" for n in names]
        ratios = [f"{row[base][0] / row[n][0]:.2f}x" for n in VARIANTS[1:]]
        lines.append(f"| {row['T']} | " + " | ".join(cells + ratios) + " |")
    lines += ["", "Decode after a 64-token prefill, ms/token: "
              + ", ".join(f"{n} {ms:.2f}" for n, ms in decode.items()), "",
              "Spike ops per variant: " + "; ".join(
                  f"{n}: " + ", ".join(f"{op} {c}" for op, c in sorted(o.items()) if "Spike" in op or op == "Round")
                  for n, o in ops.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="small")
    ap.add_argument("--seq", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", help="also write the markdown table to this file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(args.config, Path(tmp) / "model.onnx")
        text = report(args, *measure(args, path))
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
