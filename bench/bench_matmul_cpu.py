"""fp32 matmul y = x @ w: sbc-scheduled TVM (symbolic and static row count; w plain and, as
MatMulPacked after pack-matmul-weights, pre-packed into [N/16, K, 16] panels with a symbolic
batch x seq row count) vs unscheduled TVM vs NumPy vs onnxruntime vs PyTorch; medians in one
process, GFLOP/s and ratios, markdown table. One-row shapes are decode steps.

    .venv/bin/python bench/bench_matmul_cpu.py [--repeats 10] [--no-unscheduled]
        [--shapes 1024x512x1536 ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import onnxruntime as ort
import torch
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax, te, tirx, topi

from sbc.codegen.schedule_cpu import schedule_cpu
from sbc.codegen.targets import host_cpu_target
from sbc.runtimes.machine import host_cpu_features
from sbc.runtimes.threads import use_threads
from sbc.ir.ops.nn import pack_weight
from sbc.ir.ops.nn import PANEL

SHAPES = [(128, 512, 512), (2048, 512, 512), (128, 512, 1536), (2048, 512, 1536), (1024, 512, 1536),
          (128, 4096, 4096), (1024, 4096, 4096), (1, 512, 1536), (1, 4096, 4096), (7, 512, 1536)]
TARGET = host_cpu_target()


def median_s(fn, repeats) -> float:
    """Median wall time of `fn` after one warm-up call."""
    return statistics.median(block_s(fn, repeats))


def block_s(fn, repeats, warm_s: float = 0.02) -> list[float]:
    """Wall times of `repeats` calls of `fn` after warm-up calls. The pause first lets other
    runtimes' worker threads (TVM's spin-wait, PyTorch's OpenMP) go idle, so they do not steal
    cores from this one. The warm-up then runs for `warm_s` (3 calls at least): after the
    pause the first calls of every runtime here ran up to 6x slower, falling over about ten
    calls (the cores coming back to speed), and one warm-up call left that slope in the
    timed calls."""
    time.sleep(0.2)
    start, calls = time.perf_counter(), 0
    while calls < 3 or time.perf_counter() - start < warm_s:
        fn()
        calls += 1
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def alternating_medians_s(fns: dict, repeats: int, rounds: int = 3) -> dict:
    """Median wall time of each of `fns` (name -> fn) over `repeats` calls taken in `rounds`
    blocks in turn (a, b, c, a, b, c, ...): the shared machine's speed drifts by up to 2x over
    seconds, and a slow phase then weighs on every runtime alike, not on whichever was timed
    in it."""
    rounds = max(1, min(rounds, repeats))
    samples = {name: [] for name in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            samples[name] += block_s(fn, repeats // rounds + (r < repeats % rounds))
    return {name: statistics.median(times) for name, times in samples.items()}


def tvm_matmul(rows, k, n, scheduled: bool):
    """A VM function (x, w) -> x @ w; `rows` an int or None (symbolic)."""
    m = tirx.Var("m", "int64") if rows is None else rows
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((m, k), "float32"))
    w = relax.Var("w", relax.TensorType((k, n), "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit_output(bb.emit_te(topi.matmul, x, w))
        bb.emit_func_output(y)
    mod = tvm.transform.Sequential([relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                                    relax.transform.FuseOps(), relax.transform.FuseTIR()])(bb.get())
    if scheduled:
        mod = schedule_cpu(mod, TARGET)
    vm = relax.VirtualMachine(tvm.compile(mod, target=TARGET, relax_pipeline="default_build"), tvm.cpu())
    return vm["main"]


def matmul_packed(a, bp):
    """sbc's MatMulPacked lowering: y[b, i, j] = sum_k a[b, i, k] * bp[j // P, k, j % P]."""
    k = te.reduce_axis((0, a.shape[-1]), name="k")
    return te.compute((*a.shape[:-1], bp.shape[0] * PANEL), lambda *i: te.sum(
        a[(*i[:-1], k)] * bp[i[-1] // PANEL, k, i[-1] % PANEL], axis=k), name="matmul_packed")


def tvm_matmul_packed(k, n):
    """A VM function (x [1, seq, K], wp [N/P, K, P]) -> x @ w, seq symbolic, as sbc builds it."""
    seq = tirx.Var("seq", "int64")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, seq, k), "float32"))
    w = relax.Var("w", relax.TensorType((n // PANEL, k, PANEL), "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit_output(bb.emit_te(matmul_packed, x, w))
        bb.emit_func_output(y)
    mod = tvm.transform.Sequential([relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                                    relax.transform.FuseOps(), relax.transform.FuseTIR()])(bb.get())
    vm = relax.VirtualMachine(tvm.compile(schedule_cpu(mod, TARGET), target=TARGET,
                                          relax_pipeline="default_build"), tvm.cpu())
    return vm["main"]


def ort_session(w):
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", w.shape[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", w.shape[1]])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10  # onnx 1.23 writes 14, which onnxruntime 1.31 rejects
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def bench_shape(m, k, n, repeats, unscheduled) -> dict[str, float]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(m, k)).astype(np.float32)
    w = (rng.normal(size=(k, n)) / np.sqrt(k)).astype(np.float32)
    tx, tw = tvm.runtime.tensor(x), tvm.runtime.tensor(w)
    packed = tvm_matmul_packed(k, n)
    tx3, twp = tvm.runtime.tensor(x[None]), tvm.runtime.tensor(pack_weight(w, PANEL))
    runs = {"sbc, M symbolic": (tvm_matmul(None, k, n, True), tx, tw),
            "sbc, M static": (tvm_matmul(m, k, n, True), tx, tw),
            "sbc packed, M symbolic": (packed, tx3, twp)}
    if unscheduled:
        runs["TVM unscheduled"] = (tvm_matmul(None, k, n, False), tx, tw)
    for name, (f, a, b) in runs.items():
        got = f(a, b).numpy().reshape(m, n)
        np.testing.assert_allclose(got, x @ w, rtol=1e-3, atol=1e-3, err_msg=name)
    times = {name: median_s(lambda f=f, a=a, b=b: f(a, b), 2 if "unscheduled" in name else repeats)
             for name, (f, a, b) in runs.items()}
    session, xt, wt = ort_session(w), torch.from_numpy(x), torch.from_numpy(w)
    times["NumPy"] = median_s(lambda: x @ w, repeats)
    times["onnxruntime"] = median_s(lambda: session.run(None, {"x": x}), repeats)
    times["PyTorch"] = median_s(lambda: torch.matmul(xt, wt), repeats)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--no-unscheduled", action="store_true", help="skip the slow unscheduled TVM")
    ap.add_argument("--shapes", nargs="+", help="M x K x N to run, e.g. 1024x512x1536 (default: all)")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    use_threads(None)  # TVM's pool: one thread per core, as a loaded module runs
    header = rows = None
    shapes = [tuple(int(d) for d in s.split("x")) for s in args.shapes] if args.shapes else SHAPES
    for m, k, n in shapes:
        times = bench_shape(m, k, n, args.repeats, not args.no_unscheduled)
        gflops = 2 * m * k * n / 1e9
        if header is None:
            names = list(times)
            header = ["| M x K x N | " + " | ".join(names) + " | sbc sym / ort | sbc static / ort "
                      "| sbc packed / ort |", "|---|" + "---:|" * (len(names) + 3)]
            rows = []
        cells = " | ".join(f"{t * 1e3:.2f} ms ({gflops / t:.1f} GF/s)" for t in times.values())
        ort_t = times["onnxruntime"]
        ratios = [ort_t / times[name] for name in ("sbc, M symbolic", "sbc, M static", "sbc packed, M symbolic")]
        rows.append(f"| {m} x {k} x {n} | {cells} | " + " | ".join(f"{r:.2f}" for r in ratios) + " |")
        print(rows[-1], flush=True)
    cpu = host_cpu_features()
    text = (f"fp32 matmul, {cpu['cpu']} ({', '.join(cpu['features'])}), {os.cpu_count()} cores, "
            f"medians of {args.repeats} runs (unscheduled TVM: 2).\n\n" + "\n".join(header + rows) + "\n")
    print("\n" + text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
