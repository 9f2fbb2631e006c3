"""LinearAttention (gated, per-key-dim decay) on CPU at the `small` model's head shapes: sbc's
chunked TIR kernel vs sbc's recurrent TIR kernel (the lowering) vs the chunked form of
sbc.models.spikingbrain in PyTorch eager and, exported to ONNX, in onnxruntime.

B=1, Hq=8, Hkv=2, dk=dv=64, no past state. sbc's kernels are compiled as PrimFuncs and called on
TVM tensors; PyTorch and onnxruntime get q (pre-scaled) and k, v, g already split into heads
and repeated to the query heads, so the layout work is not timed for them. Every runner is
warmed up, the runners take turns, and each cell is the median of --repeat calls. Ratios > 1
mean the named runner is slower than sbc's recurrent kernel.

    .venv/bin/python bench/bench_linear_attention_cpu.py [--T 1024 4096 16384] [--repeat 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
import tvm

from sbc.codegen.kernels.linear_attention import linear_attention_kernel
from sbc.codegen.kernels.linear_attention_chunked import linear_attention_chunked_kernel
from sbc.codegen.targets import host_cpu_target
from sbc.runtimes.machine import host_cpu_features
from sbc.runtimes.threads import use_threads
from sbc.models.spikingbrain import gla_chunked

HQ, HKV, DK, DV = 8, 2, 64, 64
SCALE = 1.0 / np.sqrt(DK)


def compile_primfunc(func):
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return tvm.compile(mod, target=host_cpu_target())["main"]


def inputs(t: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Packed [1, T, heads*D] activations; a GLA-like log decay logsigmoid(x)/16 per key dim."""
    rng = np.random.default_rng(seed)
    x = {n: rng.normal(size=(1, t, w)).astype(np.float32)
         for n, w in (("q", HQ * DK), ("k", HKV * DK), ("v", HKV * DV))}
    x["g"] = (-np.logaddexp(0, -rng.normal(size=(1, t, HKV * DK))) / 16).astype(np.float32)
    return x


def sbc_runner(kernel, x):
    """A no-argument call of a compiled kernel on fixed TVM tensors; returns the output."""
    dev = tvm.cpu()
    placeholder = tvm.runtime.tensor(np.zeros(1, np.float32), dev)
    args = [tvm.runtime.tensor(x[n], dev) for n in ("q", "k", "v")] + [placeholder]
    args += [tvm.runtime.tensor(x["g"], dev), placeholder]
    out = tvm.runtime.tensor(np.zeros((1, x["q"].shape[1], HQ * DV), np.float32), dev)
    state = tvm.runtime.tensor(np.zeros((1, HKV, DK, DV), np.float32), dev)

    def call():
        kernel(*args, out, state)
        return out.numpy()
    return call


def heads(x: np.ndarray, n: int) -> torch.Tensor:
    """[1, T, n*D] -> [1, Hq, T, D] (KV heads repeated to the query heads)."""
    b, t, w = x.shape
    y = torch.from_numpy(x).reshape(b, t, n, w // n).transpose(1, 2)
    return y.repeat_interleave(HQ // n, dim=1).contiguous()


def torch_args(x) -> tuple:
    return (heads(x["q"], HQ) * SCALE, heads(x["k"], HKV), heads(x["v"], HKV), heads(x["g"], HKV))


def packed(o) -> np.ndarray:
    """[1, Hq, T, dv] -> [1, T, Hq*dv]."""
    o = np.asarray(o)
    return o.transpose(0, 2, 1, 3).reshape(o.shape[0], o.shape[2], -1)


def torch_runner(args):
    def call():
        with torch.inference_mode():
            return packed(gla_chunked(*args).numpy())
    return call


class _Chunked(torch.nn.Module):
    def forward(self, q, k, v, g):
        return gla_chunked(q, k, v, g)


def ort_session(threads: int | None):
    """onnxruntime session for the exported chunked form (dynamic T), or None if export fails."""
    try:
        import onnxruntime as ort
        example = torch_args(inputs(128))
        path = os.path.join(tempfile.mkdtemp(prefix="sbc-bench-la-"), "gla_chunked.onnx")
        t = torch.export.Dim("T", min=2)
        torch.onnx.export(_Chunked(), example, path, dynamo=True, verbose=False,
                          input_names=["q", "k", "v", "g"], output_names=["o"],
                          dynamic_shapes=({2: t}, {2: t}, {2: t}, {2: t}))
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # the table then shows "-" for onnxruntime
        print(f"onnxruntime skipped: {type(e).__name__}: {str(e).splitlines()[0][:200]}", file=sys.stderr)
        return None


def ort_runner(session, args):
    feeds = {n: a.numpy() for n, a in zip("qkvg", args)}
    return lambda: packed(session.run(None, feeds)[0])


def medians(runners: dict, repeat: int) -> dict[str, float]:
    """Median seconds per runner; runners take turns so that machine noise hits all alike.
    The pause lets the other runtimes' spinning worker threads (OpenMP, TVM, onnxruntime) go
    idle first."""
    times = {name: [] for name in runners}
    for _ in range(repeat):
        for name, call in runners.items():
            time.sleep(0.25)
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--no-ort", action="store_true", help="skip the ONNX export and onnxruntime")
    ap.add_argument("--threads", type=int, help="threads for every runner (default: each runtime's own, "
                    "all cores); 1 compares one core each, which noise from other processes hurts least")
    args = ap.parse_args()
    use_threads(args.threads)  # TVM's pool (None: one thread per core)
    if args.threads:
        torch.set_num_threads(args.threads)

    kernels = {"sbc recurrent": compile_primfunc(linear_attention_kernel(HQ, HKV, DK, DV, SCALE, "key", None, False)),
               "sbc chunked": compile_primfunc(linear_attention_chunked_kernel(HQ, HKV, DK, DV, SCALE, "key", False))}
    session = None if args.no_ort else ort_session(args.threads)
    names = list(kernels) + ["PyTorch chunked (eager)"] + ([] if session is None else ["onnxruntime chunked"])
    rows = []
    for t in args.T:
        x = inputs(t)
        runners = {name: sbc_runner(k, x) for name, k in kernels.items()}
        targs = torch_args(x)
        runners["PyTorch chunked (eager)"] = torch_runner(targs)
        if session is not None:
            runners["onnxruntime chunked"] = ort_runner(session, targs)
        want = runners["sbc recurrent"]()
        err = {n: float(np.abs(call() - want).max() / np.abs(want).max()) for n, call in runners.items()}
        rows.append((t, medians(runners, args.repeat), err))
        print(f"T={t}: " + ", ".join(f"{n} {s * 1e3:.2f} ms" for n, s in rows[-1][1].items()), file=sys.stderr)

    base = "sbc recurrent"
    cpu = host_cpu_features()
    threads = f"{args.threads} thread(s) per runner" if args.threads else "default threads"
    print(f"LinearAttention gated (per-key-dim decay), B=1, Hq={HQ}, Hkv={HKV}, dk=dv={DK}; "
          f"{cpu['cpu']}, {cpu['cores']} cores, {threads}; median of {args.repeat}, ms.\n")
    print("| T | " + " | ".join(names) + " | " + " | ".join(f"{n} / {base}" for n in names if n != base)
          + " | max rel. diff vs recurrent: sbc chunked, others |")
    print("|---:" * (2 * len(names) + 1) + "|---|")
    for t, med, err in rows:
        cells = [f"{med[n] * 1e3:.2f}" for n in names]
        ratios = [f"{med[n] / med[base]:.2f}x" for n in names if n != base]
        others = max([err[n] for n in names if n not in (base, "sbc chunked")], default=0.0)
        print(f"| {t} | " + " | ".join(cells + ratios) + f" | {err['sbc chunked']:.1e}, {others:.1e} |")
    print(f"\n    .venv/bin/python bench/bench_linear_attention_cpu.py --T {' '.join(map(str, args.T))} "
          f"--repeat {args.repeat}{' --no-ort' if args.no_ort else ''}"
          f"{f' --threads {args.threads}' if args.threads else ''}")


if __name__ == "__main__":
    main()
