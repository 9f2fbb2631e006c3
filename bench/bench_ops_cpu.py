"""Single-op ONNX models on CPU: sbc vs onnxruntime vs PyTorch, one run, medians, ratios.

Each op family of issue 18 (batched activation x activation MatMul in both attention shapes,
Softmax over the last axis, LayerNormalization, ReduceSum/ReduceMean over a non-last axis,
Transpose, an elementwise chain with broadcasting, Gather, CumSum, Where with a mask, and a
small Add for the per-call overhead) is built with onnx.helper (ir_version 10, so that
onnxruntime reads it), at two sizes, with static dims and with symbolic B and T. sbc compiles
each with `sbc.compile(model, target="cpu", cache=False)`; its outputs are checked against
onnxruntime's before anything is timed. "sbc / ort" is onnxruntime's time over sbc's: the
speed of sbc relative to onnxruntime (>= 1 means sbc is at least as fast).

    .venv/bin/python bench/bench_ops_cpu.py [--quick] [--repeats 5] [--ops softmax ...]
        [--sizes small large] [--aligned] [--out FILE.md] [--json FILE.json] [--plot FILE.png]

--aligned feeds every runtime 64-byte aligned inputs instead of NumPy's own (large arrays at
16 bytes). sbc's kernels take either in place (codegen/element_aligned_arguments.py); before
that, the runtime copied a 16-byte aligned input to an aligned buffer on every call (64 MB for
a [1, 4, 2048, 2048] input), and --aligned showed the kernels without that copy.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

import sbc
from bench_matmul_cpu import alternating_medians_s  # noqa: E402  (this folder: the same timing rules)

F32, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
NP = {F32: np.float32, I64: np.int64, BOOL: np.bool_}
SIZES = {"small": 512, "large": 2048}  # T; B = 1 throughout


# -- the op catalogue ------------------------------------------------------------------------------
# Each entry: fn(T, symbolic) -> (nodes, inputs [(name, elem type, shape with dim names)],
# output (name, elem type, shape), initializers {name: array}, torch fn(*inputs) -> output).
# A dim given as a string is symbolic in the symbolic variant and static (its value) otherwise.

def _op_matmul_qk(t):  # scores = q @ k^T: [B,4,T,32] x [B,4,32,T]
    return ([helper.make_node("MatMul", ["a", "b"], ["y"])],
            [("a", F32, ["B", 4, "T", 32]), ("b", F32, ["B", 4, 32, "T"])],
            ("y", F32, ["B", 4, "T", "T"]), {}, lambda a, b: torch.matmul(a, b))


def _op_matmul_av(t):  # probs @ v: [B,4,T,T] x [B,4,T,32]
    return ([helper.make_node("MatMul", ["a", "b"], ["y"])],
            [("a", F32, ["B", 4, "T", "T"]), ("b", F32, ["B", 4, "T", 32])],
            ("y", F32, ["B", 4, "T", 32]), {}, lambda a, b: torch.matmul(a, b))


def _op_softmax(t):
    return ([helper.make_node("Softmax", ["x"], ["y"], axis=-1)],
            [("x", F32, ["B", 4, "T", "T"])], ("y", F32, ["B", 4, "T", "T"]), {},
            lambda x: torch.softmax(x, -1))


def _op_layernorm(t):
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=512).astype(np.float32), rng.normal(size=512).astype(np.float32)
    tw, tb = torch.from_numpy(w), torch.from_numpy(b)
    return ([helper.make_node("LayerNormalization", ["x", "w", "bias"], ["y"], axis=-1, epsilon=1e-5)],
            [("x", F32, ["B", "T", 512])], ("y", F32, ["B", "T", 512]), {"w": w, "bias": b},
            lambda x: torch.nn.functional.layer_norm(x, (512,), tw, tb, 1e-5))


def _op_reducesum(t):  # over T, a non-last axis
    axes = np.array([1], np.int64)
    return ([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)],
            [("x", F32, ["B", "T", 512])], ("y", F32, ["B", 1, 512]), {"axes": axes},
            lambda x: x.sum(1, keepdim=True))


def _op_reducemean(t):  # over T, a non-last axis (opset 18: axes as an input)
    axes = np.array([1], np.int64)
    return ([helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=1)],
            [("x", F32, ["B", "T", 512])], ("y", F32, ["B", 1, 512]), {"axes": axes},
            lambda x: x.mean(1, keepdim=True))


def _op_transpose(t):
    return ([helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 1])],
            [("x", F32, ["B", "T", 512])], ("y", F32, ["B", 512, "T"]), {},
            lambda x: x.transpose(1, 2).contiguous())


def _op_elementwise(t):  # sigmoid((x + bias[512]) * scale[B,T,1]) : broadcasting both ways
    bias = np.random.default_rng(2).normal(size=512).astype(np.float32)
    tbias = torch.from_numpy(bias)
    return ([helper.make_node("Add", ["x", "bias"], ["h"]), helper.make_node("Mul", ["h", "s"], ["g"]),
             helper.make_node("Sigmoid", ["g"], ["y"])],
            [("x", F32, ["B", "T", 512]), ("s", F32, ["B", "T", 1])], ("y", F32, ["B", "T", 512]),
            {"bias": bias}, lambda x, s: torch.sigmoid((x + tbias) * s))


def _op_gather(t):  # embedding lookup: table [8192, 512], ids [B, T]
    table = np.random.default_rng(3).normal(size=(8192, 512)).astype(np.float32)
    ttable = torch.from_numpy(table)
    return ([helper.make_node("Gather", ["table", "ids"], ["y"], axis=0)],
            [("ids", I64, ["B", "T"])], ("y", F32, ["B", "T", 512]), {"table": table},
            lambda ids: torch.nn.functional.embedding(ids, ttable))


def _op_cumsum(t):  # over T
    axis = np.array(1, np.int64)
    return ([helper.make_node("CumSum", ["x", "axis"], ["y"])],
            [("x", F32, ["B", "T", 512])], ("y", F32, ["B", "T", 512]), {"axis": axis},
            lambda x: torch.cumsum(x, 1))


def _op_where(t):  # masked scores: where(mask[T, T], x, -1e9)
    fill = np.array(-1e9, np.float32)
    return ([helper.make_node("Where", ["mask", "x", "fill"], ["y"])],
            [("mask", BOOL, ["T", "T"]), ("x", F32, ["B", 4, "T", "T"])], ("y", F32, ["B", 4, "T", "T"]),
            {"fill": fill}, lambda m, x: torch.where(m, x, torch.tensor(-1e9)))


def _op_add_small(t):  # per-call overhead: the work is nothing
    return ([helper.make_node("Add", ["a", "b"], ["y"])],
            [("a", F32, [1, 4]), ("b", F32, [1, 4])], ("y", F32, [1, 4]), {}, lambda a, b: a + b)


OPS = {"matmul_qk": _op_matmul_qk, "matmul_av": _op_matmul_av, "softmax": _op_softmax,
       "layernorm": _op_layernorm, "reducesum_axis1": _op_reducesum,
       "reducemean_axis1": _op_reducemean, "transpose": _op_transpose,
       "elementwise_bcast": _op_elementwise, "gather": _op_gather, "cumsum": _op_cumsum,
       "where_mask": _op_where, "add_small": _op_add_small}
QUICK = ["matmul_qk", "softmax", "layernorm", "transpose", "add_small"]


def build_model(op, t, symbolic):
    """(onnx model, feeds, torch fn) for `op` at sequence length t."""
    nodes, inputs, (oname, otype, oshape), inits, torch_fn = OPS[op](t)
    values = {"B": 1, "T": t}

    def dims(shape):
        return [d if isinstance(d, int) else (d if symbolic else values[d]) for d in shape]

    graph = helper.make_graph(
        nodes, op, [helper.make_tensor_value_info(n, ty, dims(s)) for n, ty, s in inputs],
        [helper.make_tensor_value_info(oname, otype, dims(oshape))],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10  # onnx writes a newer one than onnxruntime 1.31 reads
    onnx.checker.check_model(model)
    rng = np.random.default_rng(0)
    feeds = {}
    for n, ty, s in inputs:
        shape = [values[d] if isinstance(d, str) else d for d in s]
        if ty == I64:
            feeds[n] = rng.integers(0, 8192, size=shape).astype(np.int64)
        elif ty == BOOL:
            feeds[n] = np.tril(np.ones(shape, bool))
        else:
            feeds[n] = rng.normal(size=shape).astype(np.float32)
    return model, feeds, torch_fn


def aligned(a: np.ndarray, alignment: int = 64) -> np.ndarray:
    """A copy of `a` whose data starts on an `alignment`-byte boundary."""
    raw = np.empty(a.nbytes + alignment, np.uint8)
    start = (-raw.ctypes.data) % alignment
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def bench_case(op, size, symbolic, repeats, align=False) -> dict:
    t = SIZES[size]
    model, feeds, torch_fn = build_model(op, t, symbolic)
    if align:
        feeds = {k: aligned(v) for k, v in feeds.items()}
    t0 = time.perf_counter()
    module = sbc.compile(model, target="cpu", cache=False)
    compile_s = time.perf_counter() - t0
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    want = session.run(None, feeds)[0]
    got = next(iter(module.run(feeds).values()))
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * max(1.0, float(np.abs(want).max())),
                               err_msg=f"{op} {size} {'symbolic' if symbolic else 'static'}")
    tfeeds = [torch.from_numpy(v) for v in feeds.values()]
    with torch.inference_mode():
        times = alternating_medians_s({"sbc": lambda: module.run(feeds),
                                       "onnxruntime": lambda: session.run(None, feeds),
                                       "PyTorch": lambda: torch_fn(*tfeeds)}, repeats)
    return {"op": op, "size": size, "T": t, "dims": "symbolic" if symbolic else "static",
            "compile_s": compile_s, **{f"{k}_s": v for k, v in times.items()},
            "ratio": times["onnxruntime"] / times["sbc"]}


def fmt_time(s: float) -> str:
    return f"{s * 1e6:.1f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def table(rows) -> str:
    lines = ["| op | T | dims | sbc | onnxruntime | PyTorch | sbc / ort (speed) | sbc / torch (speed) |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        t = "-" if r["op"] == "add_small" else r["T"]
        lines.append(f"| {r['op']} | {t} | {r['dims']} | {fmt_time(r['sbc_s'])} | "
                     f"{fmt_time(r['onnxruntime_s'])} | {fmt_time(r['PyTorch_s'])} | "
                     f"{r['ratio']:.2f}x | {r['PyTorch_s'] / r['sbc_s']:.2f}x |")
    return "\n".join(lines) + "\n"


def plot(rows, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [f"{r['op']} {r['T']} {r['dims'][:3]}" for r in rows]
    fig, ax = plt.subplots(figsize=(8, max(3, 0.28 * len(rows))))
    ax.barh(range(len(rows)), [r["ratio"] for r in rows], color="tab:blue")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("sbc speed / onnxruntime speed (>= 1: sbc as fast or faster)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"only {QUICK}, small size")
    ap.add_argument("--ops", nargs="+", choices=list(OPS), help="ops to run (default: all)")
    ap.add_argument("--sizes", nargs="+", choices=list(SIZES), help="sizes (default: both)")
    ap.add_argument("--dims", nargs="+", choices=["static", "symbolic"], default=["static", "symbolic"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--aligned", action="store_true",
                    help="64-byte aligned inputs (no staging copy in sbc's runtime)")
    ap.add_argument("--out", help="write the markdown table here")
    ap.add_argument("--json", help="write the raw numbers here")
    ap.add_argument("--plot", help="write a bar chart of the ratios here (png)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    ops = args.ops or (QUICK if args.quick else list(OPS))
    sizes = args.sizes or (["small"] if args.quick else list(SIZES))
    rows = []
    for op in ops:
        for size in (["small"] if op == "add_small" else sizes):
            for dims in args.dims:
                rows.append(bench_case(op, size, dims == "symbolic", args.repeats, args.aligned))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = (f"Single-op ONNX models, {os.cpu_count()} cores, B = 1, medians of {args.repeats} runs "
            f"(3 rounds of sbc, onnxruntime, PyTorch in turn)"
            f"{', 64-byte aligned inputs' if args.aligned else ''}; "
            f"onnxruntime {ort.__version__}, PyTorch {torch.__version__}.\n\n" + table(rows))
    print("\n" + text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
