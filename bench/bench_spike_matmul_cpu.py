"""SpikeMatMul (spike counts x int8 weights, int32 sums; and its f32-weight form) vs the fp32
matmul the default pipeline compiles (MatMulPacked; and plain MatMul), and onnxruntime's and
PyTorch's fp32 MatMul, at the small model's projection shape [1, M, K] x [K, N] with symbolic
batch and seq, as compiled models run them. Each is warmed up and timed as the median of
--repeats calls in one process, sbc's variants interleaved, then onnxruntime and PyTorch each
in its own block; the table's ratios are against SpikeMatMul int8.

    .venv/bin/python bench/bench_spike_matmul_cpu.py [--shapes 1024x512x1536 4096x4096x4096] [--repeats 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
import torch
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from sbc.codegen.build import build
from sbc.codegen.kernels.spike_matmul import integer_dot_instruction
from sbc.runtimes.machine import host_cpu_features
from sbc.runtimes.threads import use_threads
from sbc.ir import Graph, Sym, TensorType
from sbc.ir.ops.nn import pack_weight
from sbc.ir.ops.spike import pack_spike_weight, quantize_groups

ROWS = (Sym.var("batch"), Sym.var("seq"))


def fp32_graph(w, packed: bool):
    g = Graph()
    x = g.add_input("x", TensorType("f32", ROWS + (w.shape[0],)))
    weight = g.add_param("w", pack_weight(w, 16) if packed else w)
    g.set_outputs([g.add1("MatMulPacked" if packed else "MatMul", x, weight)], ["y"])
    return g


def spike_graph(w, quantised: bool):
    g = Graph()
    n = g.add_input("n", TensorType("i16", ROWS + (w.shape[0],), "count"))
    s = g.add_input("s", TensorType("f32", ROWS + (1,)))
    if quantised:
        q, scales = quantize_groups(w, 0, 128)
        weights = [g.add_param("w", pack_spike_weight(q)), g.add_param("ws", scales)]
    else:
        weights = [g.add_param("w", pack_spike_weight(w))]
    g.set_outputs([g.add1("SpikeMatMul", n, s, *weights)], ["y"])
    return g


def runner(graph, feeds):
    built = build(graph)
    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    args = [tvm.runtime.tensor(feeds[name]) for name, _ in built.inputs]
    args += [tvm.runtime.tensor(built.params[name]) for name in built.param_names]
    return lambda: vm["main"](*args)


def ort_matmul(w, x):
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", w.shape[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", w.shape[1]])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10  # what onnxruntime 1.31 reads
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"x": x})


def torch_matmul(w, x):
    wt, xt = torch.from_numpy(w), torch.from_numpy(x)
    return lambda: torch.matmul(xt, wt)


def median_ms(runs: dict, repeats: int) -> dict[str, float]:
    """Median ms per run, the runs interleaved (one call of each per round): a neighbour's
    load then slows all of them alike instead of whichever happened to run during it. Only for
    runs on one thread pool (see bench)."""
    for fn in runs.values():
        fn()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def bench(m: int, k: int, n: int, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    counts = rng.integers(-7, 8, (1, m, k)).astype(np.int16)  # SpikingBrain: 94% of |n| <= 7
    scale = rng.uniform(0.05, 0.5, (1, m, 1)).astype(np.float32)
    x = counts * scale
    runs = {"fp32 MatMulPacked": runner(fp32_graph(w, True), {"x": x}),
            "fp32 MatMul": runner(fp32_graph(w, False), {"x": x}),
            "SpikeMatMul int8": runner(spike_graph(w, True), {"n": counts, "s": scale}),
            "SpikeMatMul f32 W": runner(spike_graph(w, False), {"n": counts, "s": scale})}
    q, scales = quantize_groups(w, 0, 128)
    dequantised = q * np.repeat(scales, 128, axis=0)[:k]
    for name, fn in runs.items():  # the int8 kernel against the weights it was given
        expected = x[0] @ (dequantised if "int8" in name else w)
        np.testing.assert_allclose(fn()[0].numpy()[0], expected, rtol=1e-3, atol=1e-3, err_msg=name)
    # onnxruntime's and PyTorch's worker threads spin for a while after each call, which slowed
    # whichever sbc kernel ran next by up to 3x when they were interleaved: each gets its own
    # block, after the sbc kernels, and a pause lets the previous block's threads go idle
    times = median_ms(runs, repeats)
    for name, fn in (("onnxruntime fp32", ort_matmul(w, x)), ("PyTorch fp32", torch_matmul(w, x))):
        time.sleep(1.0)
        times.update(median_ms({name: fn}, repeats))
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["1024x512x1536"])
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    use_threads(None)  # TVM's pool: one thread per core, as a loaded module runs
    print(f"cpu {host_cpu_features()['cpu']}, integer dot product: {integer_dot_instruction()}")
    for shape in args.shapes:
        m, k, n = map(int, shape.split("x"))
        times = bench(m, k, n, args.repeats)
        gflop = 2 * m * k * n / 1e9
        spike = times["SpikeMatMul int8"]
        print(f"M={m} K={k} N={n}:")
        for name, t in times.items():
            print(f"  {name:<20} {t:8.2f} ms {gflop / t * 1e3:6.0f} GOP/s  {t / spike:5.2f}x SpikeMatMul int8")


if __name__ == "__main__":
    main()
