"""codegen.schedule_gpu's rules on the op families dlight alone left unbound or unbuildable:
scans (CumSum, forward / exclusive / reverse), scatters with symbolic dims (in parallel over
the updates), softmax and log-softmax over any axis (a block per row, the row split across its
threads), ReduceMax's NaN-propagating max, ArgMax / ArgMin (a pair reduced; the value is thread-local),
integer and boolean ops, odd shapes. Each is compiled for cuda and maca (nvcc; the MACA source
through the compatibility header), and its scheduled kernels are run serially on the CPU
against the reference interpreter (tests/codegen/test_gpu_kernels_serial.gpu_scheduled_on_cpu).
A build that TVM still fails reports the kernel, its nodes and ops in one line, and
`sbc compile --tvm-log FILE` keeps TVM's full error.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from sbc.frontend import import_onnx
from sbc.ir.interpreter import run as interpret
from sbc.passes import run_passes
from tests.codegen.test_gpu_kernels_serial import gpu_scheduled_on_cpu
from tests.targets.gpu_env import nvcc_or_skip
from tests.targets.sweep import CHECKS

F, I64 = TensorProto.FLOAT, TensorProto.INT64
SHAPES = {"reduce_max": ["b", 1, 5], "argmax": ["b", 5], "argmin": ["b", "s", 1]}


def ops_model() -> onnx.ModelProto:
    """x f32 [b, s, 5], n int64 [m, 1] ScatterND rows with their updates u [m, s, 5], e int64
    [b, s, 5] ScatterElements positions along axis 1; outputs one op family each."""
    def ints(name, values):
        return helper.make_tensor(name, I64, [len(values)], values)
    node = helper.make_node
    nodes = [
        node("CumSum", ["x", "ax1"], ["cumsum"]),
        node("CumSum", ["x", "ax2"], ["cumsum_rev"], exclusive=1, reverse=1),
        node("Softmax", ["x"], ["softmax"], axis=1),
        node("LogSoftmax", ["x"], ["log_softmax"], axis=-1),
        node("ReduceMax", ["x", "ax1"], ["reduce_max"], keepdims=1),
        node("ArgMax", ["x"], ["argmax"], axis=1, keepdims=0),
        node("ArgMin", ["x"], ["argmin"], axis=2, select_last_index=1),
        node("ScatterND", ["x", "n", "u"], ["scatter_nd"]),
        node("ScatterElements", ["x", "e", "x"], ["scatter_add"], axis=1, reduction="add"),
        node("ScatterElements", ["x", "e", "x"], ["scatter_elements"], axis=1),
        node("ScatterND", ["x", "n", "u"], ["scatter_nd_mul"], reduction="mul"),
        node("Cast", ["e"], ["xi"], to=TensorProto.INT32),
        node("Mod", ["xi", "three"], ["mod"]),
        node("Equal", ["mod", "zero"], ["is_zero"]),
        node("Where", ["is_zero", "x", "cumsum"], ["where"]),
    ]
    outputs = ["cumsum", "cumsum_rev", "softmax", "log_softmax", "reduce_max", "argmax",
               "argmin", "scatter_nd", "scatter_add", "scatter_elements", "scatter_nd_mul", "where"]
    graph = helper.make_graph(
        nodes, "ops",
        [helper.make_tensor_value_info("x", F, ["b", "s", 5]),
         helper.make_tensor_value_info("n", I64, ["m", 1]),
         helper.make_tensor_value_info("u", F, ["m", "s", 5]),
         helper.make_tensor_value_info("e", I64, ["b", "s", 5])],
        [helper.make_tensor_value_info(o, I64 if o.startswith("arg") else F,
                                       SHAPES.get(o, ["b", "s", 5])) for o in outputs],
        [ints("ax1", [1]), ints("ax2", [2]), helper.make_tensor("three", TensorProto.INT32, [], [3]),
         helper.make_tensor("zero", TensorProto.INT32, [], [0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


def feeds(b=2, s=37, m=3, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((b, s, 5)) * 4).astype(np.float32)
    if s > 3:
        x[0, 3] = -np.inf  # a row of -inf along the last axis
    return {"x": x, "n": rng.permutation(b)[:m, None].astype(np.int64) if m <= b else
            rng.integers(0, b, (m, 1)).astype(np.int64),
            "u": rng.standard_normal((m, s, 5)).astype(np.float32),
            "e": rng.integers(0, s, (b, s, 5)).astype(np.int64)}


@pytest.mark.parametrize("target, warp", [("cuda", 32), ("maca", 64)])
def test_op_families_compile_for_gpu(target, warp):
    """Compiled (nvcc); the softmaxes reduce each row through warp shuffles of the target's
    width (MACA: 64 lanes, 64-bit masks) and shared memory (test_softmax_splits_...)."""
    import re
    import sbc
    from sbc.codegen.maca import split_kernels
    nvcc_or_skip()
    module = sbc.compile(ops_model(), target=target, cache=False)
    CHECKS[target](module)
    source = dict(split_kernels(module.files[f"{target}/kernels.{'cu' if target == 'cuda' else 'maca'}"].decode()))
    for name in ("softmax_kernel", "logsoftmax_kernel"):
        shuffles = re.findall(r"__shfl_down_sync\((\w+)\[0\], \w+\[0\], \d+, (\d+)\)", source[name])
        assert shuffles and {int(w) for _, w in shuffles} == {warp}, (name, shuffles)
        assert "__shared__" in source[name] and "__syncthreads()" in source[name]
        assert ("0xffffffffffffffffULL" in source[name]) == (target == "maca")


@pytest.mark.parametrize("target", ["cuda", "maca"])
def test_op_families_compute_the_reference_when_serial(target):
    """Scheduled for `target`, thread loops made serial, built for the CPU: equal to the
    interpreter, at odd sizes (37 rows of 5, one row of -inf) and a single row."""
    graph = run_passes(import_onnx(ops_model()))
    run, kinds = gpu_scheduled_on_cpu(graph, target)
    assert kinds and set(kinds.values()) == {"scheduled"}
    for shape in ((2, 37, 2), (1, 1, 1)):
        f = feeds(*shape)
        got, want = run(f), interpret(graph, f)
        for name in graph.output_names:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_scan_keeps_its_axis_in_one_thread():
    """CumSum's block (one per column, codegen.lower.reduce.scan_sum_func) under dlight's
    Fallback: the columns over a grid of thread blocks, the scan along the axis a loop inside
    each thread (never a host function, never one thread for the whole scan); the scatters'
    updates in parallel too."""
    import json
    import sbc
    module = sbc.compile(ops_model(), target="maca", cache=False)
    plan = json.loads(module.files["maca/launches.json"])
    launches = {s["launch"]: s for f in plan["functions"].values() for s in f["steps"] if "launch" in s}
    cumsum = [s for name, s in launches.items() if name.startswith("cumsum")]
    assert cumsum and all(isinstance(s["extents"]["threadIdx.x"], int) and s["extents"]["threadIdx.x"] >= 32
                          for s in cumsum), cumsum
    source = module.files["maca/kernels.maca"].decode()
    from sbc.codegen.maca import split_kernels
    body = dict(split_kernels(source))[next(n for n in launches if n.startswith("cumsum"))]
    assert "for (" in body  # the sequential axis
    # the scatters: the copy and the updates each over a grid of blocks, never one thread
    # (ScatterND 'none' per update index; reductions per slice position / position off the axis)
    scatters = [s for name, s in launches.items() if name.startswith("scatter")]
    assert len(scatters) == 8 and all(s["extents"]["threadIdx.x"] == 256 and
                                      s["extents"]["blockIdx.x"] != 1 for s in scatters), scatters


def softmax_model(axis=-1) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["y"], axis=axis, name="attn_softmax")], "sm",
        [helper.make_tensor_value_info("x", F, ["b", "s", 300])],
        [helper.make_tensor_value_info("y", F, ["b", "s", 300])]),
        opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


@pytest.mark.parametrize("target, warp", [("cuda", 32), ("maca", 64)])
def test_softmax_splits_each_row_across_threads(target, warp):
    """A standalone softmax (not fused into attention) is one block per row of 300, its
    threads splitting the row (the max and the sum reduced across the threads: warp shuffles
    and shared memory, test_op_families_compile_for_gpu), not one thread per row."""
    import re
    from sbc.codegen.build import _Lowerer, fuse
    from sbc.codegen.schedule_gpu import schedule_gpu
    from sbc.codegen.targets import resolve
    graph = run_passes(import_onnx(softmax_model()))
    gpu = resolve(target).tvm()
    mod = schedule_gpu(fuse(_Lowerer({"main": graph}, where=target).run()), gpu)
    (func,) = [f for gv, f in mod.functions_items() if gv.name_hint == "softmax"]
    text = func.script()
    # the rows over blocks, the 300 columns of a row over the block's threads
    assert re.search(r'T\.thread_binding\(b \* s, thread="blockIdx\.x"\)', text), text[:2000]
    bound = re.findall(r'for (\w+) in T\.thread_binding\(T\.int64\((\d+)\), thread="threadIdx\.x"\)', text)
    threads = {int(n) for _, n in bound}
    assert threads and all(n >= warp and n % warp == 0 for n in threads), threads
    for block in ("softmax_max", "softmax_sum"):  # a row's reduction axis: over the threads
        reduce = re.search(rf'T\.sblock\("{block}"\):(?:\n.*?)*?T\.axis\.reduce\((.*)\)', text).group(1)
        assert any(re.search(rf"\b{var}\b", reduce) for var, _ in bound), (block, reduce)


def test_tvm_failure_is_one_line_and_the_log_has_tvm_error(tmp_path, capsys, monkeypatch):
    """With the guard off, ReduceLogSumExp's -inf max is split across threads and TVM fails
    (the bug this issue reported as 'the TVM error is chained below' with nothing below): the
    line names the kernel, its node and op and TVM's reason; --tvm-log holds the trace."""
    import sbc.codegen.schedule_gpu as sg
    from sbc.cli import main
    model = helper.make_model(helper.make_graph(
        [helper.make_node("ReduceLogSumExp", ["x", "ax"], ["y"], name="attn_lse")], "lse",
        [helper.make_tensor_value_info("x", F, ["b", 300])],
        [helper.make_tensor_value_info("y", F, ["b", 1])],
        [helper.make_tensor("ax", I64, [1], [1])]),
        opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    path = tmp_path / "lse.onnx"
    onnx.save(model, path)
    monkeypatch.setattr(sg, "reductions_splittable", lambda func: True)
    log = tmp_path / "tvm.log"
    assert main(["compile", str(path), "--target", "maca", "--no-cache", "--tvm-log", str(log),
                 "-o", str(tmp_path / "lse.sbc")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    line = err[0]
    assert "kernel 'reducelogsumexp'" in line and "'attn_lse' (ReduceLogSumExp)" in line, line
    assert "No matched reducer" in line and "--tvm-log" in line and "chained below" not in line
    text = log.read_text()
    assert text.startswith("sbc: error: TVM could not compile kernel 'reducelogsumexp'")
    assert "lse_max" in text and len(text.splitlines()) > 20
