"""The GPU kernels' numerics without a GPU: each hand-written GPU kernel (SpikeMatMul,
LinearAttention recurrent and chunked, SlidingWindowAttention) emitted with `bind_threads=False` - its thread loops
as serial loops, one loop over the threads per phase between barriers, per-thread registers
as arrays indexed by thread, shared memory as ordinary buffers - built for the CPU (llvm) and
compared with the op's NumPy reference.

What this proves: the GPU kernels' index arithmetic (block and thread decomposition, tile
bounds, rows past M and columns past N, partial groups of K, ring-buffer slots), the staging
through shared memory and the epilogue compute the op, given the barriers where they are;
the two forms share every phase body (T.macro), so the GPU kernel runs the same arithmetic.
What it does not: data races (a phase where a thread reads what another writes would be
serialised here in thread order), warp behaviour and real barrier semantics, occupancy and
launch limits, nor nvcc's code generation (fused multiply-adds round differently); the
tests in tests/targets compile the threaded form with nvcc, and a GPU run compares it.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from sbc.codegen.kernels.linear_attention_chunked_gpu import (ChunkPlan, choose_plan,
                                                             linear_attention_chunked_gpu_kernel)
from sbc.codegen.kernels.linear_attention_gpu import linear_attention_gpu_kernel
from sbc.codegen.kernels.sliding_window_gpu import sliding_window_gpu_kernel
from sbc.codegen.kernels.spike_matmul_gpu import (PORTABLE, GpuLimits, Tiles, choose_tiles,
                                                  spike_matmul_gpu_func)
from sbc.codegen.schedule_gpu import thread_bound
from sbc.errors import UnsupportedError
from sbc.ir import get_op
from sbc.ir.interpreter import run as interpret
from sbc.ir.ops.linear_attention import linear_attention_dims, sliding_window_dims
from sbc.ir.ops.spike import pack_spike_weight, quantize_groups
from tests.codegen.test_attention_kernels import (feeds_for, linear_attention_graph,
                                                  sliding_window_graph)

LLVM = tvm.target.Target({"kind": "llvm"})


def run_on_cpu(func, inputs: list, output_shapes: list) -> list[np.ndarray]:
    """Build `func` (no thread bindings) for llvm and run it on NumPy inputs (None: the
    kernels' 1-element placeholder)."""
    assert not thread_bound(func)
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=LLVM)
    args = [tvm.runtime.tensor(np.zeros(1, np.float32) if x is None else x) for x in inputs]
    outs = [tvm.runtime.tensor(np.zeros(shape, np.float32)) for shape in output_shapes]
    lib["main"](*args, *outs)
    return [o.numpy() for o in outs]


# -- SpikeMatMul -------------------------------------------------------------------------------

def spike_matmul_case(rows: tuple, k: int, n: int, counts_dtype: str, weights: str, bias: bool,
                      seed: int = 0):
    rng = np.random.default_rng(seed)
    counts = rng.integers(-100, 101, rows + (k,)).astype(counts_dtype.replace("i", "int"))
    scale = rng.uniform(0.1, 1, rows + (1,)).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    if weights == "i8":
        q, w_scale = quantize_groups(w, 0, 128)
        packed = pack_spike_weight(q)
    else:
        packed, w_scale = pack_spike_weight(w), None
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    return counts, scale, packed, w_scale, b


@pytest.mark.parametrize("rows, k, n, counts_dtype, weights, bias", [
    ((2, 35), 300, 48, "i16", "i8", True),   # 70 rows: a full 64-row tile and a short one;
                                             # K = 300: groups 128, 128 and a partial 44
    ((1, 1), 256, 80, "i8", "i8", False),    # decode: one row; two column tiles, the second
                                             # 16 of 64 columns wide
    ((3, 5, 7), 132, 16, "i16", "i8", True),  # rank 4 counts, a 4-channel last group
    ((2, 33), 200, 64, "i16", "f32", True),  # float weights: K in chunks of 128, one past K
])
def test_spike_matmul_gpu_kernel_serially(rows, k, n, counts_dtype, weights, bias):
    counts, scale, w, w_scale, b = spike_matmul_case(rows, k, n, counts_dtype, weights, bias)
    func = spike_matmul_gpu_func(len(rows) + 1, counts_dtype, weights, k, n, 128, bias,
                                 bind_threads=False)
    (got,) = run_on_cpu(func, [counts, scale, w, w_scale, b], [rows + (n,)])
    want = get_op("SpikeMatMul").ref({"group": 128}, counts, scale, w, w_scale, b)
    if weights == "i8":
        # exact int32 sums, then the reference's f32 epilogue in the reference's order
        np.testing.assert_array_equal(got, want)
    else:  # a float inner product summed in another order
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_spike_matmul_tiles_follow_the_target_limits():
    cuda, maca = GpuLimits(32, 1024, 48 * 1024), GpuLimits(64, 1024, 64 * 1024)
    for limits in (cuda, maca, PORTABLE):
        for counts_bytes, weight_bytes, float_weights in ((2, 1, False), (1, 1, False), (2, 4, True)):
            tiles = choose_tiles(limits, counts_bytes, weight_bytes, 128, float_weights)
            assert tiles.cols % limits.warp_size == 0 and tiles.threads % limits.warp_size == 0
            assert tiles.threads <= limits.max_threads
            assert tiles.shared_bytes(counts_bytes, weight_bytes) <= limits.shared_bytes
    assert choose_tiles(cuda, 2, 1, 128, False) == Tiles(rows=64, cols=64, chunk=128, threads=256)
    # a small shared memory shrinks the row tile, then the K chunk (a divisor of the group)
    assert choose_tiles(GpuLimits(32, 1024, 16 * 1024), 2, 1, 128, False).rows == 32
    assert choose_tiles(GpuLimits(32, 1024, 8 * 1024), 2, 1, 96, False) == Tiles(8, 64, 96, 256)
    assert choose_tiles(GpuLimits(32, 1024, 4 * 1024), 2, 1, 96, False) == Tiles(8, 64, 48, 256)


def test_spike_matmul_serial_form_on_small_tiles():
    """Tiles made small by a small shared memory (32-row tiles, 8 rows per thread, chunks of
    64 channels, two per group) compute the same."""
    limits = GpuLimits(32, 1024, 8 * 1024)
    assert choose_tiles(limits, 2, 1, 128, False) == Tiles(rows=32, cols=64, chunk=64, threads=256)
    counts, scale, w, w_scale, b = spike_matmul_case((1, 37), 256, 32, "i16", "i8", True, seed=4)
    func = spike_matmul_gpu_func(3, "i16", "i8", 256, 32, 128, True, limits, bind_threads=False)
    (got,) = run_on_cpu(func, [counts, scale, w, w_scale, b], [(1, 37, 32)])
    np.testing.assert_array_equal(got, get_op("SpikeMatMul").ref({"group": 128}, counts, scale,
                                                                 w, w_scale, b))


# -- LinearAttention and SlidingWindowAttention ------------------------------------------------

def check_against_interpreter(graph, func, cases, tolerance):
    node = graph.nodes[-1]
    declared = len(get_op(node.op).inputs)
    for args in cases:
        feeds = feeds_for(graph, *args)
        inputs = [None if v is None else feeds[v.name]
                  for v in list(node.inputs) + [None] * (declared - len(node.inputs))]
        want = interpret(graph, feeds)
        got = run_on_cpu(func, inputs, [want[name].shape for name in graph.output_names])
        for name, value in zip(graph.output_names, got):
            scale = max(1.0, float(np.abs(want[name]).max()))
            np.testing.assert_allclose(value, want[name], atol=tolerance * scale,
                                       err_msg=f"{name} {args}")


@pytest.mark.parametrize("rule, decay_width, past, beta_width", [
    ("gated", 2 * 8, True, 1), ("gated", 2, False, 1), ("linear", 0, False, 1),
    ("delta", 0, True, 2), ("gated_delta", 2 * 8, True, 1)])
def test_linear_attention_gpu_kernel_serially(rule, decay_width, past, beta_width):
    graph = linear_attention_graph(rule, decay_width, past, beta_width)
    d = linear_attention_dims(graph.nodes[-1])
    func = linear_attention_gpu_kernel(d["hq"], d["hkv"], d["dk"], d["dv"], d["scale"],
                                       d["decay"], d["beta"], past=past, bind_threads=False)
    check_against_interpreter(graph, func, [(1, 1), (2, 37)], 1e-5)


@pytest.mark.parametrize("past, cases", [
    (False, [(1, 1), (2, 13)]),
    # decode steps and chunks before, at and after the window fills
    (True, [(1, 1, 0), (2, 13, 0), (1, 1, 9), (2, 3, 7), (1, 8, 2)])])
def test_sliding_window_gpu_kernel_serially(past, cases):
    graph = sliding_window_graph(past)
    node = graph.nodes[-1]
    d = sliding_window_dims(node)
    position = node.inputs[5] if len(node.inputs) > 5 else None
    func = sliding_window_gpu_kernel(d["hq"], d["hkv"], d["d"], d["dv"], d["window"], d["scale"],
                                     d["past"], None if position is None else tuple(position.shape),
                                     bind_threads=False)
    check_against_interpreter(graph, func, cases, 1e-6)


# -- chunked LinearAttention -------------------------------------------------------------------

def linear_attention_case(hq, hkv, dk, dv, decay, past, batch, seq, g_min, seed=0):
    """Inputs of one LinearAttention call, log decays uniform in [g_min, 0]."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    width = {"key": hkv * dk, "head": hkv}.get(decay)
    g = rng.uniform(g_min, 0, (batch, seq, width)).astype(np.float32) if decay else None
    return [normal(batch, seq, hq * dk), normal(batch, seq, hkv * dk), normal(batch, seq, hkv * dv),
            normal(batch, hkv, dk, dv) if past else None, g, None]


def check_chunked(hq, hkv, dk, dv, decay, past, seqs, g_min, **kernel_args):
    func = linear_attention_chunked_gpu_kernel(hq, hkv, dk, dv, 0.3, decay, past,
                                               bind_threads=False, **kernel_args)
    attrs = {"q_num_heads": hq, "kv_num_heads": hkv, "scale": 0.3}
    for seq in seqs:
        inputs = linear_attention_case(hq, hkv, dk, dv, decay, past, 2, seq, g_min, seed=seq)
        want = get_op("LinearAttention").ref(attrs, *inputs)
        got = run_on_cpu(func, inputs, [w.shape for w in want])
        for name, value, expected in zip(("output", "present_state"), got, want):
            np.testing.assert_allclose(value, expected, atol=1e-5 * max(1.0, np.abs(expected).max()),
                                       err_msg=f"{name} T={seq}")


@pytest.mark.parametrize("decay, past, g_min", [
    ("key", True, -5.0),  # strong decay: e^{-b} alone would overflow within a chunk
    ("key", False, -0.3),
    ("head", True, -5.0),
    ("head", False, -0.3),
    (None, True, 0.0),
    (None, False, 0.0)])
def test_chunked_linear_attention_serially(decay, past, g_min):
    """Chunked at every T (short=0): one partial chunk (T = 1, 5), one whole (64), and two
    whole plus a partial one (130); GQA groups of 3; dk = 24 is one whole and one partial
    slice of 16 key dims."""
    check_chunked(6, 2, 24, 16, decay, past, (1, 5, 64, 130), g_min, short=0)


def test_chunked_linear_attention_branches_on_short_sequences():
    """The default PrimFunc: T = 1 and 5 take the recurrent nest, 64 and 130 the chunks."""
    check_chunked(4, 2, 8, 16, "key", True, (1, 5, 64, 130), -1.0)


def test_chunked_linear_attention_on_small_staging():
    """A GPU with 24 KiB of shared memory: state batches of 32 tokens, slices of 4 key dims,
    value batches of 8 (several of each per chunk) compute the same."""
    limits = GpuLimits(32, 1024, 24 * 1024)
    assert choose_plan(limits, 64, 64, "key") == ChunkPlan(64, 256, 4, 32, 8)
    check_chunked(2, 1, 64, 64, "key", True, (70,), -2.0, limits=limits, short=0)


def test_chunked_plan_follows_the_target_limits():
    cuda, maca = GpuLimits(32, 1024, 48 * 1024), GpuLimits(64, 1024, 64 * 1024)
    for limits in (cuda, maca, PORTABLE):
        for decay in ("key", "head", None):
            plan = choose_plan(limits, 128, 128, decay)  # SpikingBrain-7B's heads
            assert plan.threads % limits.warp_size == 0 and plan.threads <= limits.max_threads
            assert 4 * plan.output_floats(128, decay) <= limits.shared_bytes
            assert 4 * plan.state_floats(128, 128) <= limits.shared_bytes
    assert choose_plan(cuda, 128, 128, "key") == ChunkPlan(64, 256, 16, 32, 16)
    assert choose_plan(maca, 128, 128, "key") == ChunkPlan(64, 256, 32, 64, 8)
    with pytest.raises(UnsupportedError, match="accumulators"):
        choose_plan(cuda, 256, 256, "key")  # 256 state entries per thread: stays recurrent


# -- the scheduled kernels of a whole model ----------------------------------------------------
#
# Every other kernel of a GPU build is TE lowered and scheduled by codegen.schedule_gpu's rules
# (dlight's Matmul / GEMV / Reduction / GeneralReduction, Fallback, LoopNest). Scheduled TIR
# keeps the sequential meaning of its blocks (TVM inserts the barriers a thread mapping needs
# when it lowers), so the scheduled kernel with its thread-bound loops made serial, its shared
# and local buffers global, computes what the GPU must: its loop splits, fusions, tiling,
# cross-thread reductions (rfactor) and LoopNest's grid guards. TVM's Python API has no TIR
# mutator: the kernel is printed, rewritten, and parsed back.

def serial_form(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """A scheduled GPU kernel with every thread_binding loop serial and every buffer global,
    unbound from the GPU target."""
    import re
    text = func.script().replace("T.thread_binding(", "T.serial(")
    text = re.sub(r', thread="[\w.]+"', "", text)
    text = re.sub(r'scope="(shared|shared\.dyn|local|warp)"', 'scope="global"', text)
    return tvm.script.from_source(text).without_attr("target")


def _serial_kernels(limits):
    """The hand-written GPU kernels in their bind_threads=False form, chosen as
    codegen.schedule_gpu.kernels chooses them (tiles for `limits`)."""
    from sbc.codegen.kernels.linear_attention_chunked_gpu import chunked_gpu_args, chunked_supported
    from sbc.codegen.kernels.spike_matmul_gpu import spike_matmul_gpu_args
    from sbc.codegen.lower.common import optional_input
    from sbc.codegen.lower.linear_attention import sliding_window_args

    def linear_attention(node):
        d = linear_attention_dims(node)
        past = optional_input(node, 3) is not None
        if d["beta"] is None and chunked_supported(d["dk"], d["dv"], d["decay"]):
            args = chunked_gpu_args(d["hq"], d["hkv"], d["dk"], d["dv"], d["scale"], d["decay"], past)
            return linear_attention_chunked_gpu_kernel(**args, limits=limits, bind_threads=False)
        return linear_attention_gpu_kernel(d["hq"], d["hkv"], d["dk"], d["dv"], d["scale"],
                                           d["decay"], d["beta"], past=past, bind_threads=False)

    return {"LinearAttention": linear_attention,
            "SlidingWindowAttention": lambda node: sliding_window_gpu_kernel(
                *sliding_window_args(node, "gpu"), bind_threads=False),
            "SpikeMatMul": lambda node: spike_matmul_gpu_func(
                **spike_matmul_gpu_args(node), limits=limits, bind_threads=False)}


def gpu_scheduled_on_cpu(graph, target: str):
    """`graph` lowered and scheduled as for `target`, every kernel serial, built for llvm:
    (a function of the graph's inputs, {kernel: rules' or hand-written})."""
    from sbc.codegen.build import _Lowerer, fuse
    from sbc.codegen.schedule_gpu import schedule_gpu
    from sbc.codegen.targets import resolve
    gpu = resolve(target).tvm()
    lowerer = _Lowerer({"main": graph}, kernel_fns=_serial_kernels(GpuLimits.of(gpu)), where=target)
    mod = schedule_gpu(fuse(lowerer.run()), gpu)
    kinds = {}
    for gv, func in list(mod.functions_items()):
        if isinstance(func, tvm.tirx.PrimFunc):
            kinds[gv.name_hint] = "scheduled" if thread_bound(func) else "hand-written"
            if thread_bound(func):
                mod.update_func(gv, serial_form(func))
    exe = tvm.compile(mod, target=LLVM, relax_pipeline="default_build")
    vm = tvm.relax.VirtualMachine(exe, tvm.cpu())
    names = [v.name for v in graph.inputs] + [p.name for p in graph.params]
    params = [p.data for p in graph.params]

    def run(feeds):
        out = vm["main"](*[tvm.runtime.tensor(np.asarray(a, order="C"))
                           for a in [feeds[v.name] for v in graph.inputs] + params])
        return {name: out[i].numpy() for i, name in enumerate(graph.output_names)}
    assert len(names) == len(graph.inputs) + len(params)
    return run, kinds


@pytest.fixture(scope="module")
def tiny_w8_graph(tiny_onnx):
    """The tiny model as sbc optimises it with --quantize w8: the recurrent step program with
    SpikeMatMul, LinearAttention, SlidingWindowAttention, norms, RoPE and the embedding."""
    from sbc.driver import pipeline_for
    from sbc.frontend import import_onnx
    from sbc.passes import run_passes
    return run_passes(import_onnx(tiny_onnx), pipeline_for(None, "w8", None))


@pytest.mark.parametrize("target", ["cuda", "maca"])
def test_tiny_model_scheduled_kernels_serially(tiny_w8_graph, target):
    """Every kernel of the tiny model's GPU build (for cuda: 32-lane warps, 48 KiB of shared
    memory; for maca: 64-lane waves, 64 KiB) run serially on the CPU agrees with the reference
    interpreter, from an empty state and from the state a first chunk left."""
    graph = tiny_w8_graph
    run, kinds = gpu_scheduled_on_cpu(graph, target)
    assert sum(k == "scheduled" for k in kinds.values()) >= 25
    assert sum(k == "hand-written" for k in kinds.values()) >= 3
    rng = np.random.default_rng(0)
    state = {v.name: np.zeros([1 if str(d) == "batch" else int(d) for d in v.shape], np.float32)
             for v in graph.inputs if v.name.startswith("state.")}
    position = 0
    for seq in (9, 3):  # a prefill chunk, then the next chunk from its state
        feeds = {"ids": rng.integers(0, 256, (1, seq)).astype(np.int64),
                 "position": np.array(position, np.int64), **state}
        got, want = run(feeds), interpret(graph, feeds)
        for name in graph.output_names:
            scale = max(1.0, float(np.abs(want[name]).max()))
            # spikes (Round) may flip where x / V_th lands within float rounding of .5
            close = np.abs(got[name] - want[name]) <= 1e-4 * scale
            assert close.mean() > 0.99, f"{name} T={seq}: {np.abs(got[name] - want[name]).max()}"
        state = {n: got[n] for n in state}
        position += seq


def row_ops_graph():
    """Standalone (unfused) row kernels over rows of 300: Softmax and LogSoftmax on the last
    axis and on axis 1, RMSNormalization, LayerNormalization."""
    import onnx
    from onnx import TensorProto, helper
    from sbc.frontend import import_onnx
    from sbc.passes import run_passes
    F = TensorProto.FLOAT
    nodes = [helper.make_node("Softmax", ["x"], ["softmax"], axis=-1),
             helper.make_node("Softmax", ["x"], ["softmax_1"], axis=1),
             helper.make_node("LogSoftmax", ["x"], ["log_softmax"], axis=-1),
             helper.make_node("RMSNormalization", ["x", "scale"], ["rms"], axis=-1),
             helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["ln"], axis=-1)]
    outputs = ["softmax", "softmax_1", "log_softmax", "rms", "ln"]
    rng = np.random.default_rng(1)
    model = helper.make_model(helper.make_graph(
        nodes, "rows", [helper.make_tensor_value_info("x", F, ["b", "s", 300])],
        [helper.make_tensor_value_info(o, F, ["b", "s", 300]) for o in outputs],
        [onnx.numpy_helper.from_array(rng.uniform(0.5, 2, 300).astype(np.float32), "scale"),
         onnx.numpy_helper.from_array(rng.standard_normal(300).astype(np.float32), "bias")]),
        opset_imports=[helper.make_opsetid("", 23)])
    model.ir_version = 10
    return run_passes(import_onnx(model))


@pytest.mark.parametrize("target", ["cuda", "maca"])
def test_row_kernels_split_across_threads_serially(target):
    """Softmax, LogSoftmax and the norms split each row of 300 over the threads of a block
    (256 threads: a first pass of all of them, a second of 44; the partial results combined
    across threads); serial on the CPU they compute the reference, rows of -inf included
    (NaN where the reference has NaN)."""
    graph = row_ops_graph()
    run, kinds = gpu_scheduled_on_cpu(graph, target)
    assert set(kinds.values()) == {"scheduled"}
    rng = np.random.default_rng(2)
    for b, s in ((2, 3), (1, 1)):
        x = (rng.standard_normal((b, s, 300)) * 5).astype(np.float32)
        x[0, 0, ::3] = -np.inf  # a row with -inf entries
        if s > 1:
            x[1, 1] = -np.inf  # a row of -inf only
        got, want = run({"x": x}), interpret(graph, {"x": x})
        for name in graph.output_names:
            finite, nan = np.isfinite(want[name]), np.isnan(want[name])
            # NaN and +-inf where the reference has them
            np.testing.assert_array_equal(np.isnan(got[name]), nan, err_msg=name)
            np.testing.assert_array_equal(got[name][~finite & ~nan], want[name][~finite & ~nan],
                                          err_msg=name)
            np.testing.assert_allclose(got[name][finite], want[name][finite], rtol=1e-5, atol=1e-5,
                                       err_msg=f"{name} {b}x{s}")
