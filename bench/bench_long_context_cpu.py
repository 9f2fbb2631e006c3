"""Long context on CPU, `small` model: prefill time vs T, decode time per token and process RSS
vs context length, sbc vs onnxruntime vs PyTorch eager in one process on the same inputs.

- sbc streams prefill through its recurrent program (fused LinearAttention and
  SlidingWindowAttention kernels) in chunks of --chunk tokens: memory is bounded by the chunk.
- onnxruntime runs the exported parallel form (T x T attention) up to --max-quadratic tokens,
  and the exported chunked GLA form (`--form chunked`, SWA still T x T) up to --max-chunked;
  PyTorch eager runs the parallel form up to --max-quadratic. Beyond ~2,500 tokens the
  parallel form's exp(-cumsum) overflows, so its outputs stop being finite (the table says
  so): the time is still the time of that computation.
- Each onnxruntime / PyTorch measurement runs in a child process, so one that runs out of
  memory (the T x T forms need O(T^2) bytes) is reported as such instead of ending the run.
- Decode at context C is measured after a real prefill of min(C, --max-real) tokens; beyond
  that the session's position is set to C (the state has a fixed size and no kernel's work
  depends on the position, so this is the same work; the table marks these rows).

Writes a markdown report (--out), the raw numbers as JSON and PNG plots (--plots DIR).

    .venv/bin/python bench/bench_long_context_cpu.py --out docs/bench_long_context_cpu.md --plots docs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort
import torch

import sbc
from sbc.models.export import export_onnx
from sbc.models.spikingbrain import build_model, get_config


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def finite(x) -> bool:
    return bool(np.isfinite(np.asarray(x)).all())


def ort_session(path: str) -> ort.InferenceSession:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def measure_prefill(args, module, runners, vocab, rng) -> list[dict]:
    """One row per T: seconds for sbc and for each (name, max T, child argv) runner in range."""
    rows, failed = [], set()
    for t in args.prefill:
        ids = rng.integers(0, vocab, size=(1, t), dtype=np.int64)
        sess = module.session(batch=1, chunk=args.chunk)
        sess.prefill(ids[:, :min(t, args.chunk)])  # warm-up
        sess.reset()
        seconds, logits = timed(lambda: sess.prefill(ids))
        row = {"T": t, "sbc": seconds, "sbc_finite": finite(logits)}
        for name, max_t, argv in runners:
            if t <= max_t and name not in failed:  # what failed at T fails at any longer T
                row.update(in_child(name, argv, t))
                if f"{name}_failed" in row:
                    failed.add(name)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def measure_linearity(args, module, vocab, rng) -> list[float]:
    """time(32k) / time(4k), the two prefills alternating --linearity times: on a shared machine
    the speed drifts over a long run, so the table's single rows, minutes apart, can disagree."""
    def seconds(t):
        sess = module.session(batch=1, chunk=args.chunk)
        return timed(lambda: sess.prefill(rng.integers(0, vocab, size=(1, t), dtype=np.int64)))[0]
    ratios = []
    for _ in range(args.linearity):
        short = seconds(4096)
        ratios.append(seconds(32768) / short)
    return ratios


def in_child(name: str, argv: list[str], t: int) -> dict:
    """One baseline measurement in a child process: {name: s, name_finite: bool}, or
    {name_failed: why} (out of memory: the kernel's OOM killer ends the child, not the run)."""
    proc = subprocess.run([sys.executable, __file__, "--child", *argv, str(t)], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:120]
        return {f"{name}_failed": "out of memory" if proc.returncode in (-9, 137) else last}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {name: result["seconds"], f"{name}_finite": result["finite"]}


def child(kind: str, config: str, path: str, t: str) -> None:
    """--child ort|torch CONFIG ONNX_PATH T: time one prefill of T random tokens, print JSON."""
    if kind == "ort":
        session = ort_session(path)
        fn = lambda ids: session.run(None, {"ids": ids})[0]  # noqa: E731
    else:
        model = build_model(config).eval()

        def fn(ids):
            with torch.inference_mode():
                return model(torch.from_numpy(ids)).numpy()
    ids = np.random.default_rng(int(t)).integers(0, get_config(config).vocab_size, size=(1, int(t)))
    fn(ids[:, :64])  # warm-up: first-call set-up is not prefill time
    seconds, out = timed(lambda: fn(ids))
    print(json.dumps({"seconds": seconds, "finite": finite(out)}))


def measure_decode(args, module, vocab, rng) -> list[dict]:
    rows = []
    for context in args.decode:
        sess = module.session(batch=1, chunk=args.chunk)
        real = min(context, args.max_real)
        sess.prefill(rng.integers(0, vocab, size=(1, real), dtype=np.int64))
        sess.state[module.recurrent["position"]] = np.asarray(context, np.int64)
        token = np.array([1])
        sess.decode(token)  # warm-up
        rss_before = rss_mb()
        seconds, _ = timed(lambda: [sess.decode(token) for _ in range(args.tokens)])
        rows.append({"context": context, "real_prefill": real, "ms_per_token": seconds / args.tokens * 1e3,
                     "rss_before_mb": rss_before, "rss_after_mb": rss_mb()})
        print(json.dumps(rows[-1]), flush=True)
    return rows


RUNNERS = (("onnxruntime", "onnxruntime (parallel)"), ("onnxruntime_chunked", "onnxruntime (chunked GLA)"),
           ("pytorch", "PyTorch eager (parallel)"))


def report(args, head: str, prefill: list[dict], decode: list[dict], linearity: list[float]) -> str:
    def cell(row, k):
        if f"{k}_failed" in row:
            return f"failed: {row[f'{k}_failed']}"
        return "-" if k not in row else f"{row[k]:.2f}" + ("" if row[f"{k}_finite"] else " (inf/nan)")
    ratio = lambda row, k: "-" if k not in row else f"{row[k] / row['sbc']:.2f}x"  # noqa: E731
    lines = [head, "", "Prefill, seconds (ratios > 1: sbc is faster):", "",
             "| T | sbc | " + " | ".join(label for _, label in RUNNERS) + " | "
             + " | ".join(f"{label} / sbc" for _, label in RUNNERS) + " | sbc tokens/s |",
             "|---:" * (2 + 2 * len(RUNNERS) + 1) + "|"]
    for row in prefill:
        lines.append(f"| {row['T']} | {cell(row, 'sbc')} | " + " | ".join(cell(row, k) for k, _ in RUNNERS)
                     + " | " + " | ".join(ratio(row, k) for k, _ in RUNNERS) + f" | {row['T'] / row['sbc']:.0f} |")
    lines += ["", "Decode (sbc session, one token per step):", "",
              "| context | how reached | ms / token | RSS before (MB) | RSS after (MB) |", "|---:|---|---:|---:|---:|"]
    for row in decode:
        how = "real prefill" if row["real_prefill"] == row["context"] else f"position set (real prefill {row['real_prefill']})"
        lines.append(f"| {row['context']} | {how} | {row['ms_per_token']:.2f} | {row['rss_before_mb']:.0f} "
                     f"| {row['rss_after_mb']:.0f} |")
    return "\n".join(lines + [""] + goals(prefill, decode, linearity)) + "\n"


def goals(prefill: list[dict], decode: list[dict], linearity: list[float]) -> list[str]:
    """The linear-attention issue's three goals, as measured here."""
    out = ["Goals:", ""]
    with_ort = [r for r in prefill if "onnxruntime" in r]
    if with_ort:
        r = with_ort[-1]
        out.append(f"- onnxruntime (parallel) / sbc at the longest T it completed, {r['T']}: "
                   f"{r['onnxruntime'] / r['sbc']:.2f}x (goal >= 100x)")
    by_t = {r["T"]: r["sbc"] for r in prefill}
    if 4096 in by_t and 32768 in by_t:
        out.append(f"- sbc time(32k) / time(4k) = {by_t[32768] / by_t[4096]:.2f} in the table (goal <= 9)")
    if linearity:
        runs = ", ".join(f"{r:.2f}" for r in linearity)
        out.append(f"- the same, the two prefills alternating {len(linearity)} times: median "
                   f"{float(np.median(linearity)):.2f} ({runs})")
    if len(decode) > 1:
        first, last = decode[0], decode[-1]
        out.append(f"- decode ms/token at {last['context']} vs {first['context']}: "
                   f"{last['ms_per_token'] / first['ms_per_token'] - 1:+.1%} (goal within 10%)")
        growth = max(r["rss_after_mb"] for r in decode) / first["rss_before_mb"] - 1
        out.append(f"- RSS growth over the decode rows: {growth:+.2%} (goal under 1%)")
    return out


def plot(prefill: list[dict], decode: list[dict], directory: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, label in (("sbc", "sbc (streamed, fused kernels)"),) + RUNNERS:  # noqa: B007
        pts = [(r["T"], r[key]) for r in prefill if key in r]
        if pts:
            ax.loglog(*zip(*pts), marker="o", label=label)
    ax.set(xlabel="prompt length T (tokens)", ylabel="prefill time (s)", title="Prefill, small model, 2-core CPU")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    paths.append(os.path.join(directory, "bench_prefill_vs_T.png"))
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=110)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    contexts = [r["context"] for r in decode]
    ax.semilogx(contexts, [r["ms_per_token"] for r in decode], marker="o", label="ms / token")
    ax.set(xlabel="context length (tokens)", ylabel="decode time (ms / token)", title="Decode, small model (sbc)")
    ax.set_ylim(bottom=0)
    twin = ax.twinx()
    twin.semilogx(contexts, [r["rss_after_mb"] for r in decode], marker="s", color="tab:red", label="RSS (MB)")
    twin.set_ylabel("process RSS (MB)")
    twin.set_ylim(bottom=0)
    ax.grid(True, which="both", alpha=0.3)
    fig.legend(loc="lower right")
    paths.append(os.path.join(directory, "bench_decode_vs_context.png"))
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=110)
    return paths


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        return child(*sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="small")
    ap.add_argument("--prefill", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768, 65536])
    ap.add_argument("--decode", type=int, nargs="+", default=[1024, 16384, 65536, 1048576])
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--max-quadratic", type=int, default=16384)
    ap.add_argument("--max-chunked", type=int, default=16384)
    ap.add_argument("--max-real", type=int, default=65536)
    ap.add_argument("--tokens", type=int, default=32, help="decode steps per measurement")
    ap.add_argument("--linearity", type=int, default=3, help="alternating 4k / 32k prefill pairs (0: none)")
    ap.add_argument("--out", help="markdown report")
    ap.add_argument("--plots", help="directory for the PNG plots")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="sbc-bench-")
    parallel = export_onnx(args.config, os.path.join(work, "parallel.onnx"))
    chunked = export_onnx(args.config, os.path.join(work, "chunked.onnx"), form="chunked")
    compile_s, module = timed(lambda: sbc.compile(parallel))
    runners = [("onnxruntime", args.max_quadratic, ["ort", args.config, parallel]),
               ("onnxruntime_chunked", args.max_chunked, ["ort", args.config, chunked]),
               ("pytorch", args.max_quadratic, ["torch", args.config, "-"])]
    rng = np.random.default_rng(0)
    vocab = get_config(args.config).vocab_size
    cert = module.manifest["recurrent"]["memory_certificate"]
    head = (f"`{args.config}` model, batch 1, {platform.machine()} ({os.cpu_count()} cores); sbc compile "
            f"{compile_s:.1f} s; recurrent state {cert['state_bytes']} bytes (memory certificate); "
            f"sbc prefill streams chunks of {args.chunk}.")
    prefill = measure_prefill(args, module, runners, vocab, rng)
    decode = measure_decode(args, module, vocab, rng)
    linearity = measure_linearity(args, module, vocab, rng)
    text = report(args, head, prefill, decode, linearity)
    print("\n" + text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
            json.dump({"prefill": prefill, "decode": decode, "linearity": linearity, "head": head}, f, indent=1)
    if args.plots:
        print("plots:", ", ".join(plot(prefill, decode, args.plots)))


if __name__ == "__main__":
    main()
