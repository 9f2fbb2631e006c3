"""GPU benchmarks on an NVIDIA GPU: prefill latency vs T, decode ms per token, and one
SpikeMatMul (spike counts x int8 weights, int32 sums) against cuBLAS's fp32 and fp16 GEMM
through PyTorch at the same shape. Every time is the median of repeated runs after a warm-up,
with the device synchronised (sbc's module.run copies results back to the host, so its times
include that copy; PyTorch's are device times around torch.cuda.synchronize).

    .venv/bin/python bench/bench_gpu.py [--config small] [--seq 128 512 2048] [--out FILE.md]

Exits 2 with one line when no CUDA device is present. PyTorch's rows read "n/a" when the
installed torch has no CUDA (the CPU wheel).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np


def median_ms(fn, repeats: int, budget_s: float, sync=lambda: None) -> float:
    fn()  # warm-up (and, for sbc, the first launch's module load)
    sync()
    times = []
    start = time.perf_counter()
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def torch_cuda():
    """torch if it has CUDA here, else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def bench_prefill_decode(config: str, seqs: list[int], repeats: int, budget_s: float) -> list[str]:
    """Prefill (module.run over the whole sequence) per T, then decode steps of a session."""
    import sbc
    from sbc.models.export import export_onnx
    work = tempfile.mkdtemp(prefix="sbc-bench-gpu-")
    onnx_path = export_onnx(config, os.path.join(work, f"{config}.onnx"))
    t0 = time.perf_counter()
    module = sbc.compile(onnx_path, target="cuda", cache=False)
    compile_s = time.perf_counter() - t0
    path = os.path.join(work, f"{config}.sbc")
    module.save(path)
    module = sbc.load(path)  # as users run it: from the artifact, on the device
    rng = np.random.default_rng(0)
    lines = [f"### Prefill, `{config}` model, batch 1 (compile {compile_s:.1f} s)", "",
             "| T | prefill (ms) | tokens/s |", "|---:|---:|---:|"]
    for seq in seqs:
        ids = rng.integers(0, 256, size=(1, seq), dtype=np.int64)
        ms = median_ms(lambda: module.run({"ids": ids}), repeats, budget_s)
        lines.append(f"| {seq} | {ms:.2f} | {seq / ms * 1e3:,.0f} |")
        print(f"prefill T={seq}: {ms:.2f} ms", flush=True)
    session = module.session(batch=1)
    session.prefill(rng.integers(0, 256, size=(1, 16), dtype=np.int64))
    token = np.array([[1]], np.int64)
    steps = 64
    t0 = time.perf_counter()
    for _ in range(steps):
        session.decode(token)
    decode_ms = (time.perf_counter() - t0) * 1e3 / steps
    print(f"decode: {decode_ms:.2f} ms/token", flush=True)
    lines += ["", f"Decode (session, batch 1, after a 16-token prefill, {steps} steps): "
                  f"**{decode_ms:.2f} ms/token** ({1e3 / decode_ms:,.0f} tokens/s).", ""]
    return lines


def spike_matmul_module(m: int, k: int, n: int):
    """sbc's SpikeMatMul for cuda: counts i16 [1, m, k], per-row scale, int8 weights with one
    scale per 128 input channels; saved and loaded as an artifact."""
    import sbc
    from sbc.ir import Graph, TensorType
    from sbc.ir.ops.spike import pack_spike_weight, quantize_groups
    rng = np.random.default_rng(0)
    g = Graph()
    counts = g.add_input("n", TensorType("i16", (1, m, k), "count"))
    scale = g.add_input("s", TensorType("f32", (1, m, 1)))
    q, w_scale = quantize_groups(rng.standard_normal((k, n)).astype(np.float32), 0, 128)
    g.set_outputs([g.add1("SpikeMatMul", counts, scale, g.add_param("w", pack_spike_weight(q)),
                          g.add_param("ws", w_scale), None)], ["y"])
    module = sbc.compile(g, target="cuda", passes="dce", cache=False)
    path = os.path.join(tempfile.mkdtemp(prefix="sbc-bench-smm-"), "smm.sbc")
    module.save(path)
    feeds = {"n": rng.integers(-7, 8, (1, m, k)).astype(np.int16),
             "s": rng.uniform(0.1, 1, (1, m, 1)).astype(np.float32)}
    return sbc.load(path), feeds


def bench_spike_matmul(shapes: list[str], repeats: int, budget_s: float) -> list[str]:
    torch = torch_cuda()
    lines = ["### SpikeMatMul vs cuBLAS (through PyTorch)", "",
             "| M x K x N | sbc SpikeMatMul int8 (ms) | cuBLAS fp32 (ms) | cuBLAS fp16 (ms) |",
             "|---|---:|---:|---:|"]
    for shape in shapes:
        m, k, n = (int(x) for x in shape.split("x"))
        module, feeds = spike_matmul_module(m, k, n)
        ms = median_ms(lambda: module.run(feeds), repeats, budget_s)
        cublas = ["n/a (torch without CUDA)"] * 2
        if torch is not None:
            cublas = []
            for dtype in (torch.float32, torch.float16):
                a = torch.randn(m, k, device="cuda", dtype=dtype)
                b = torch.randn(k, n, device="cuda", dtype=dtype)
                cublas.append(f"{median_ms(lambda: a @ b, repeats, budget_s, torch.cuda.synchronize):.3f}")
        lines.append(f"| {m} x {k} x {n} | {ms:.3f} | {cublas[0]} | {cublas[1]} |")
        print(lines[-1], flush=True)
    lines += ["", "sbc's time includes copying the inputs to and the result from the device "
                  "(module.run); cuBLAS's is the GEMM alone.", ""]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="small")
    ap.add_argument("--seq", type=int, nargs="+", default=[128, 512, 2048])
    ap.add_argument("--shapes", nargs="+", default=["1024x512x1536", "2048x1024x4096"],
                    help="SpikeMatMul shapes MxKxN")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=10.0, help="time budget per measurement")
    ap.add_argument("--out", help="also write the markdown tables to this file")
    args = ap.parse_args()
    from sbc.runtimes.cuda import cuda_device_count
    if cuda_device_count() == 0:
        print("bench_gpu: error: no CUDA device was found (driver and GPU needed)", file=sys.stderr)
        return 2
    lines = ["## GPU benchmarks", ""]
    lines += bench_prefill_decode(args.config, args.seq, args.repeats, args.budget_s)
    lines += bench_spike_matmul(args.shapes, args.repeats, args.budget_s)
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
