"""sbc from PyTorch on the `small` reference model: session decode with torch tensors in and out
vs NumPy, and torch.compile(model, backend="sbc") vs eager PyTorch on full sequences.

Decode: two sessions of one compiled module (export_onnx -> sbc.compile), each after the same
64-token prefill; the NumPy path feeds np.int64 ids and gets NumPy logits, the torch path feeds
a torch int64 tensor (read in place) and wraps the logits with torch.from_numpy (no copy), as
sbc.torch does. ms/token: the median of --repeats x --tokens steps each, the two paths
alternating step by step (a neighbour's load on a shared machine hits both alike, and a
median of single steps ignores its bursts). The torch
path's own cost (making the id tensor, reading it as an array, wrapping the logits) is also
timed alone, over 10,000 steps: a figure that a busy machine's noise does not swamp.
torch.compile: the eager model (build_model, the same weights export_onnx writes) captured by
dynamo and compiled by sbc on its first call (compile time reported), then the median of
--repeats calls on [1, T] random ids, eager PyTorch and sbc each in its own block (PyTorch's
threads spin after a call); beside them, Module.run of the module compiled from export_onnx's
file (what `sbc compile` makes of it). Logits: max |difference| and argmax agreement with
eager over all positions.

    .venv/bin/python bench/bench_torch.py [--config small] [--seq 1024] [--repeats 3] [--out F]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import sbc
from sbc.models.export import export_onnx
from sbc.models.spikingbrain import build_model, get_config
from sbc.runtimes.threads import default_threads


def decode_paths(module, vocab: int, tokens: int, repeats: int) -> dict[str, float]:
    """ms/token of session.decode through NumPy and through torch tensors, interleaved."""
    prompt = np.random.default_rng(0).integers(0, vocab, size=(1, 64))
    paths = {"NumPy": (module.session(batch=1), lambda s, t: s.decode(np.array([t]))),
             "torch": (module.session(batch=1),
                       lambda s, t: torch.from_numpy(s.decode(torch.tensor([t]))))}
    for session, step in paths.values():
        session.prefill(prompt)
        step(session, 1)  # warm-up
    times = {name: [] for name in paths}
    for _ in range(repeats * tokens):
        for name, (session, step) in paths.items():
            start = time.perf_counter()
            step(session, 1)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def torch_path_us(logits: np.ndarray, steps: int = 10_000) -> float:
    """us per step that the torch path adds to the NumPy path's own conversions."""
    def per_step(fn):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        return (time.perf_counter() - start) / steps * 1e6
    numpy_path = per_step(lambda: (np.asarray(np.array([1])), logits))
    torch_path = per_step(lambda: (np.asarray(torch.tensor([1])), torch.from_numpy(logits)))
    return torch_path - numpy_path


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def agreement(got, want) -> tuple[float, float]:
    """max |difference| and argmax agreement of two [1, T, V] logits."""
    got, want = np.asarray(got), np.asarray(want)
    return float(np.abs(got - want).max()), float((got.argmax(-1) == want.argmax(-1)).mean())


def torch_compile_vs_eager(config: str, module, t: int, repeats: int) -> dict:
    """torch.compile(backend="sbc") vs eager on [1, t] ids (and `module`, compiled from the
    exported file): compile s, ms each, logits."""
    model = build_model(config).eval()
    ids = torch.from_numpy(np.random.default_rng(t).integers(0, get_config(config).vocab_size,
                                                             size=(1, t)))
    compiled = torch.compile(model, backend="sbc")
    with torch.inference_mode(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        got = compiled(ids)
        compile_s = time.perf_counter() - start
        fallbacks = [str(w.message) for w in caught if "runs eagerly" in str(w.message)]
        want = model(ids)
        ms_sbc = median_ms(lambda: compiled(ids), repeats)
        ms_run = median_ms(lambda: module.run({"ids": ids.numpy()}), repeats)
        time.sleep(1.0)
        ms_eager = median_ms(lambda: model(ids), repeats)
    return {"T": t, "compile_s": compile_s, "sbc_ms": ms_sbc, "eager_ms": ms_eager,
            "run_ms": ms_run, "sbc_vs_eager": agreement(got, want),
            "run_vs_eager": agreement(module.run({"ids": ids.numpy()})["logits"], want),
            "fallbacks": fallbacks}


def report(args, decode: dict, extra_us: float, compiled: list[dict]) -> str:
    threads = f"{default_threads()} sbc threads, {torch.get_num_threads()} PyTorch threads"
    ratio = decode["torch"] / decode["NumPy"]
    cell = lambda d, a: f"{d:.2e} / {a:.1%}"  # noqa: E731
    lines = [f"`{args.config}` model, {platform.processor() or platform.machine()}, {threads}.", "",
             "| decode after a 64-token prefill | NumPy path | torch path | torch / NumPy |",
             "|---|---:|---:|---:|",
             f"| ms/token (median of {args.repeats * args.tokens} tokens) | "
             f"{decode['NumPy']:.2f} | {decode['torch']:.2f} | {ratio:.3f} |", "",
             f"The torch path's own cost, timed alone: {extra_us:.1f} us per token "
             f"({extra_us / 1e3 / decode['NumPy']:.3%} of a NumPy-path step).", ""]
    if not compiled:
        return "\n".join(lines) + "\n"
    lines += ["| T | torch.compile(backend=\"sbc\") ms | eager PyTorch ms | eager / sbc | "
              "sbc Module.run ms | max \\|logit diff\\| / argmax agreement with eager: "
              "torch.compile, Module.run | first call (export + compile) s |",
              "|---:|---:|---:|---:|---:|---|---:|"]
    for r in compiled:
        lines.append(f"| {r['T']} | {r['sbc_ms']:.1f} | {r['eager_ms']:.1f} | "
                     f"{r['eager_ms'] / r['sbc_ms']:.2f}x | {r['run_ms']:.1f} | "
                     f"{cell(*r['sbc_vs_eager'])}, {cell(*r['run_vs_eager'])} | "
                     f"{r['compile_s']:.0f} |")
        lines += [f"\nfell back to eager: {m}" for m in r["fallbacks"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="small")
    ap.add_argument("--seq", type=int, nargs="*", default=[1024],
                    help="T for torch.compile vs eager (none: decode only)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=32, help="decode steps per timed block")
    ap.add_argument("--out", help="also write the markdown table to this file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        module = sbc.compile(str(export_onnx(args.config, Path(tmp) / "model.onnx")))
    vocab = get_config(args.config).vocab_size
    decode = decode_paths(module, vocab, args.tokens, args.repeats)
    extra_us = torch_path_us(np.zeros((1, vocab), np.float32))
    print(decode, extra_us, flush=True)
    compiled = [torch_compile_vs_eager(args.config, module, t, args.repeats) for t in args.seq]
    text = report(args, decode, extra_us, compiled)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
