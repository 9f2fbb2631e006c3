"""fp32 matmul y = x @ w: sbc-scheduled TVM (symbolic and static row count) vs unscheduled TVM
vs NumPy vs onnxruntime vs PyTorch; medians in one process, GFLOP/s and ratios, markdown table.

    .venv/bin/python bench/bench_matmul_cpu.py [--repeats 10] [--no-unscheduled] [--out FILE]
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
from tvm import relax, tirx, topi

from sbc.codegen.schedule_cpu import schedule_cpu
from sbc.codegen.target import host_cpu_features, host_cpu_target

SHAPES = [(128, 512, 512), (2048, 512, 512), (128, 512, 1536), (2048, 512, 1536), (128, 4096, 4096)]
TARGET = host_cpu_target()


def median_s(fn, repeats) -> float:
    """Median wall time of `fn` after one warm-up call. The pause first lets other runtimes'
    worker threads (TVM's spin-wait) go idle, so they do not steal cores from this one."""
    time.sleep(0.2)
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


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
    runs = {"sbc, M symbolic": tvm_matmul(None, k, n, True), "sbc, M static": tvm_matmul(m, k, n, True)}
    if unscheduled:
        runs["TVM unscheduled"] = tvm_matmul(None, k, n, False)
    for name, f in runs.items():
        np.testing.assert_allclose(f(tx, tw).numpy(), x @ w, rtol=1e-3, atol=1e-3, err_msg=name)
    times = {name: median_s(lambda f=f: f(tx, tw), 2 if "unscheduled" in name else repeats)
             for name, f in runs.items()}
    session, xt, wt = ort_session(w), torch.from_numpy(x), torch.from_numpy(w)
    times["NumPy"] = median_s(lambda: x @ w, repeats)
    times["onnxruntime"] = median_s(lambda: session.run(None, {"x": x}), repeats)
    times["PyTorch"] = median_s(lambda: torch.matmul(xt, wt), repeats)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--no-unscheduled", action="store_true", help="skip the slow unscheduled TVM")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    header = rows = None
    for m, k, n in SHAPES:
        times = bench_shape(m, k, n, args.repeats, not args.no_unscheduled)
        gflops = 2 * m * k * n / 1e9
        if header is None:
            names = list(times)
            header = ["| M x K x N | " + " | ".join(names) + " | sbc sym / ort | sbc static / ort |",
                      "|---|" + "---:|" * (len(names) + 2)]
            rows = []
        cells = " | ".join(f"{t * 1e3:.2f} ms ({gflops / t:.1f} GF/s)" for t in times.values())
        ort_t = times["onnxruntime"]
        rows.append(f"| {m} x {k} x {n} | {cells} | {ort_t / times['sbc, M symbolic']:.2f} "
                    f"| {ort_t / times['sbc, M static']:.2f} |")
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
