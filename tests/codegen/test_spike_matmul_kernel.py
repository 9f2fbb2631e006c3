"""The spiking ops compiled for the CPU (sbc.compile) against the reference interpreter:
SpikeEncode's counts exactly, trains exactly, SpikeMatMul through each integer instruction
path (VNNI on zmm or ymm / AVX2 / portable), with row tiles of counts that fit a byte and wider ones,
and its f32-weight form; the zmm kernel's int32 tile stays in registers."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm

import sbc
import sbc.codegen.spike_breakeven
from sbc.codegen.kernels import spike_matmul as kernels
from sbc.runtimes.machine import host_cpu_features
from sbc.ir import Graph, Sym, TensorType
from sbc.ir.interpreter import run
from sbc.ir.ops.spike import expand, pack_spike_weight, quantize_groups
from sbc.passes.manager import DEFAULT_PIPELINE
from tests.passes.spike_graphs import spiking_matmul_graph

ROWS = (Sym.var("batch"), Sym.var("seq"))


def test_spike_encode_and_trains_compile_exactly():
    g = Graph()
    x = g.add_input("x", TensorType("f32", ROWS + (40,)))
    counts, scale = g.add("SpikeEncode", [x]).outputs
    outputs, names = [counts, scale], ["n", "v"]
    for coding, steps in (("twos_complement", 9), ("ternary", 121), ("bitwise_bidirectional", 7)):
        train = g.add1("SpikeExpand", counts, coding=coding, steps=steps)
        outputs += [train, g.add1("SpikeCollapse", train, coding=coding)]
        names += [coding, f"{coding}_counts"]
    g.set_outputs(outputs, names)
    x = np.random.default_rng(0).standard_normal((2, 5, 40)).astype(np.float32)
    x[0, 0] = 0
    got, expected = sbc.compile(g, passes="dce").run({"x": x}), run(g, {"x": x})
    np.testing.assert_allclose(got["v"], expected["v"], rtol=1e-6)
    # V_th's sum runs in another order: a count may flip by one where x / V_th is within
    # rounding of .5 (CONTEXT.md), never more
    flips = got["n"].astype(int) - expected["n"]
    assert np.abs(flips).max() <= 1 and (flips != 0).mean() < 0.01
    for coding in ("twos_complement", "ternary", "bitwise_bidirectional"):
        np.testing.assert_array_equal(got[f"{coding}_counts"], got["n"])  # lossless compiled
    np.testing.assert_array_equal(got["ternary"], expand(got["n"], "ternary", 121))


def spike_matmul_graph(counts_dtype: str, quantised: bool, bias: bool, k: int = 300,
                       n_out: int = 48) -> Graph:
    rng = np.random.default_rng(1)
    g = Graph()
    n = g.add_input("n", TensorType(counts_dtype, ROWS + (k,), "count"))
    s = g.add_input("s", TensorType("f32", ROWS + (1,)))
    w = rng.standard_normal((k, n_out)).astype(np.float32)
    if quantised:
        q, scales = quantize_groups(w, 0, 128)  # K = 300: two full groups and a partial one
        weights = [g.add_param("w", pack_spike_weight(q)), g.add_param("ws", scales)]
    else:
        weights = [g.add_param("w", pack_spike_weight(w)), None]
    b = g.add_param("b", rng.standard_normal(n_out).astype(np.float32)) if bias else None
    g.set_outputs([g.add1("SpikeMatMul", n, s, *weights, b)], ["y"])
    return g


def available_instructions() -> set[str]:
    features = host_cpu_features()["features"]
    found = {"portable", kernels.integer_dot_instruction(features)}
    if "avx512vnni" in features or "avxvnni" in features:
        found.add("vnni")
    if "avx2" in features:
        found.add("avx2")
    return found


def spike_counts(rng, shape: tuple, dtype: str) -> np.ndarray:
    """Spike-like counts over the dtype's whole range: most rows within a byte, the dtype's
    extremes included; with i16, rows 3 and 9 (the first two 6-row tiles) also hold counts
    past a byte, whose tiles the byte kernels compute in two planes."""
    info = np.iinfo(dtype)
    n = rng.integers(-100, 101, shape).astype(dtype).reshape(-1, shape[-1])
    n[0, :2] = info.min, info.max
    if info.bits == 16:
        n[3] = rng.integers(-3000, 3001, shape[-1])
        n[9, :4] = info.min, info.max, -129, 128
    return n.reshape(shape)


# N = 48: three panels, one-panel (16-column) tiles; N = 160: two-panel tiles, five of them,
# so that a task's block of column tiles (col_tiles_per_block) is short at the end
@pytest.mark.parametrize("n_out", [48, 160])
@pytest.mark.parametrize("instruction", ["vnni512", "vnni", "avx2", "portable"])
@pytest.mark.parametrize("counts_dtype", ["i16", "i8"])
def test_int8_spike_matmul_kernel(monkeypatch, instruction, counts_dtype, n_out):
    if instruction not in available_instructions():
        pytest.skip(f"this CPU has no {instruction}")
    monkeypatch.setattr(kernels, "integer_dot_instruction", lambda *_: instruction)
    g = spike_matmul_graph(counts_dtype, quantised=True, bias=counts_dtype == "i16", n_out=n_out)
    rng = np.random.default_rng(2)
    feeds = {"n": spike_counts(rng, (2, 7, 300), counts_dtype.replace("i", "int")),
             "s": rng.uniform(0.1, 1, (2, 7, 1)).astype(np.float32)}  # 14 rows: a short tile
    got, expected = sbc.compile(g, passes="dce").run(feeds)["y"], run(g, feeds)["y"]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())


def test_instruction_paths_are_bit_identical():
    """Every integer path gives the same bits (exact int32 sums, one epilogue order)."""
    from sbc.codegen.spike_breakeven import kernel_args, kernel_weights
    from sbc.codegen.targets import host_cpu_target
    rng = np.random.default_rng(7)
    counts = spike_counts(rng, (13, 300), "int16")
    weights = kernel_weights(rng, 300, 160, 128)
    outputs = []
    for instruction in sorted(available_instructions()):
        func = kernels.int8_kernel(2, "i16", 300, 160, 128, False, instruction)
        fn = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                         target=host_cpu_target())
        args = kernel_args(counts, weights, 160)
        fn(*args)
        outputs.append(args[-1].numpy().view(np.uint32))
    for out in outputs[1:]:
        np.testing.assert_array_equal(out, outputs[0])


def test_zmm_int32_tile_is_a_stack_tile_kept_in_registers():
    """The speed rests on this: the int32 tile is a constant-size "global" (stack) buffer,
    so LLVM keeps it in zmm registers; the hot loop is vpdpbusd on zmm with no stack traffic
    (a spilled tile would load and store it on every quad of k)."""
    from sbc.codegen.targets import host_cpu_target
    if "vnni512" not in available_instructions():
        pytest.skip("this CPU has no AVX-512 VNNI")
    func = kernels.int8_kernel(2, "i16", 512, 64, 128, False, "vnni512")
    tile = re.search(r'acc = T\.alloc_buffer\(\((\d+),\), "int32"\)', func.script())
    assert tile is not None, "the int32 tile is not a constant-size global buffer"
    assert int(tile.group(1)) * 4 < kernels.STACK_BYTES
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                      target=host_cpu_target())
    blocks = re.split(r"\n\.LBB\w+:", lib.mod.inspect_source("asm"))
    # the loop over k quads: the basic block with the most register-only vpdpbusd (the
    # column sums' loop takes its weights from memory), up to its back jump
    dot = r"vpdpbusd\s+%zmm\d+, %zmm\d+, %zmm\d+"
    hot = max(blocks, key=lambda b: len(re.findall(dot, b))).split("\n\tj")[0]
    assert len(re.findall(dot, hot)) >= kernels.ROWS * kernels.TILE_PANELS
    assert "rsp" not in hot, hot


def test_float_weight_spike_matmul():
    g = spike_matmul_graph("i16", quantised=False, bias=True, k=256)
    rng = np.random.default_rng(3)
    feeds = {"n": rng.integers(-9, 10, (1, 13, 256)).astype(np.int16),
             "s": rng.uniform(0.1, 1, (1, 13, 1)).astype(np.float32)}
    got, expected = sbc.compile(g, passes="dce").run(feeds)["y"], run(g, feeds)["y"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_quantised_spiking_layer_through_the_pipeline():
    graph = spiking_matmul_graph(k=256, n=32, bias=True)
    pipeline = [q for p in DEFAULT_PIPELINE
                for q in (["quantize-weights-int8", p] if p == "spike-matmul" else [p])]
    module = sbc.compile(graph, passes=pipeline)
    assert module.manifest["ops"] == {"SpikeEncode": 1, "SpikeMatMul": 1}
    x = np.random.default_rng(4).standard_normal((2, 9, 256)).astype(np.float32)
    y = module.run({"x": x})["y"]
    exact = run(graph, {"x": x})["y"]  # the f32 weights: only the int8 rounding differs
    assert np.abs(y - exact).max() <= 0.02 * np.abs(exact).max()


def zero_tile_counts(rng, rows: int, k: int, dtype, zero_tiles: bool) -> np.ndarray:
    """Spike-like counts; with zero_tiles, most 6-row x 128-channel tiles are all zero (a run
    of quiet tokens, a silent channel block) and a few tiles hold one nonzero count only."""
    n = rng.integers(-100, 101, (rows, k)) * (rng.random((rows, k)) < 0.3)
    if zero_tiles:
        n[:, 128:256] = 0  # a silent block of channels
        n[:7] = 0  # the first row tile and one row of the next
        n[12:18, :128] = 0
        n[15, 40] = -3  # a tile with a single spike must not be skipped
    return n.astype(dtype)


@pytest.mark.parametrize("counts_dtype", ["i16", "i8"])
def test_skip_zero_tiles_is_bit_identical_to_dense(counts_dtype):
    """Both attribute values through the SpikeMatMul lowering, K = 300 (a short last group),
    20 rows (a short last row tile), counts with many zero tiles and with none."""
    rng = np.random.default_rng(5)
    dense = spike_matmul_graph(counts_dtype, quantised=True, bias=True)
    skip = spike_matmul_graph(counts_dtype, quantised=True, bias=True)
    [n for n in skip.nodes if n.op == "SpikeMatMul"][0].attrs["kernel"] = "skip_zero_tiles"
    modules = [sbc.compile(g, passes="dce") for g in (dense, skip)]
    for zero_tiles in (True, False):
        feeds = {"n": zero_tile_counts(rng, 20, 300, counts_dtype.replace("i", "int"),
                                       zero_tiles).reshape(1, 20, 300),
                 "s": rng.uniform(0.1, 1, (1, 20, 1)).astype(np.float32)}
        got = [m.run(feeds)["y"] for m in modules]
        np.testing.assert_array_equal(got[1].view(np.uint32), got[0].view(np.uint32))
        np.testing.assert_allclose(got[0], run(dense, feeds)["y"], rtol=1e-6,
                                   atol=1e-6 * np.abs(got[0]).max())


def test_skip_zero_tiles_portable_path_and_float_weights(monkeypatch):
    """The portable (no AVX2) loops skip alike; f32 weights have no skipping kernel."""
    from sbc.ir.registry import OpError
    from sbc.codegen.spike_breakeven import kernel_args, kernel_weights
    rng = np.random.default_rng(6)
    monkeypatch.setattr(kernels, "integer_dot_instruction", lambda *_: "portable")
    counts = zero_tile_counts(rng, 20, 256, np.int16, zero_tiles=True)
    weights = kernel_weights(rng, 256, 32, 128)
    outputs = []
    for skip in (False, True):
        fn = sbc.codegen.spike_breakeven.build_kernel(256, 32, 128, "i16", skip)
        args = kernel_args(counts, weights, 32)
        fn(*args)
        outputs.append(args[-1].numpy())
    np.testing.assert_array_equal(outputs[1].view(np.uint32), outputs[0].view(np.uint32))
    g = spike_matmul_graph("i16", quantised=False, bias=False, k=256)
    with pytest.raises(OpError, match="needs int8 weights"):
        g.add1("SpikeMatMul", *[n for n in g.nodes if n.op == "SpikeMatMul"][0].inputs[:3],
               kernel="skip_zero_tiles")


def test_calibration_tile_is_the_kernel_tile():
    from sbc.passes.calibration import TILE
    assert TILE[0] == kernels.ROWS  # calibration keeps a copy so that it needs no TVM
