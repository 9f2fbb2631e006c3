"""fp32 matmul y = x @ W + b at the `small` model's shapes: sbc (symbolic and static row count)
vs onnxruntime vs PyTorch vs NumPy, medians in one process, GFLOP/s and ratios.

    .venv/bin/python bench/bench_matmul_cpu.py --out docs/bench_matmul_cpu.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

import sbc
from sbc.ir import Graph, Sym, TensorType

SHAPES = [(128, 512, 512), (128, 512, 1536), (128, 512, 8192), (2048, 512, 1536), (128, 4096, 4096)]


def median_s(fn, repeats=10) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sbc_module(w, b, rows):
    g = Graph()
    x = g.add_input("x", TensorType("f32", (rows, w.shape[0])))
    g.set_outputs([g.add1("Add", g.add1("MatMul", x, g.add_param("w", w)), g.add_param("b", b))], ["y"])
    return sbc.compile(g)


def ort_session(w, b):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])]
    graph = helper.make_graph(nodes, "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", w.shape[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", w.shape[1]])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = ["| M x K x N | sbc, M symbolic | sbc, M static | onnxruntime | PyTorch | NumPy | sbc (symbolic) / onnxruntime |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for m, k, n in SHAPES:
        x = rng.normal(size=(m, k)).astype(np.float32)
        w = (rng.normal(size=(k, n)) / np.sqrt(k)).astype(np.float32)
        b = rng.normal(size=n).astype(np.float32)
        flops = 2 * m * k * n
        dynamic, static = sbc_module(w, b, Sym.var("m")), sbc_module(w, b, m)
        np.testing.assert_allclose(dynamic.run({"x": x})["y"], x @ w + b, rtol=1e-3, atol=1e-3)
        session = ort_session(w, b)
        xt, wt, bt = map(torch.from_numpy, (x, w, b))
        times = [median_s(lambda: dynamic.run({"x": x})), median_s(lambda: static.run({"x": x})),
                 median_s(lambda: session.run(None, {"x": x})), median_s(lambda: torch.addmm(bt, xt, wt)),
                 median_s(lambda: x @ w + b)]
        cells = " | ".join(f"{t * 1e3:.2f} ms ({flops / t / 1e9:.0f} GF/s)" for t in times)
        rows.append(f"| {m} x {k} x {n} | {cells} | {times[2] / times[0]:.2f}x |")
        print(rows[-1], flush=True)
    text = f"fp32 matmul + bias, {os.cpu_count()} cores, medians of 10 runs.\n\n" + "\n".join(rows) + "\n"
    print("\n" + text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
