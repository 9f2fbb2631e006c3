"""Fusion of producers into row reductions (codegen.build.FUSE_PRODUCERS): an RMSNorm's
elementwise tail is fused into the SpikeEncode that reads it; identical
call sites still share one PrimFunc; the fused encoder is scheduled (rows in parallel, counts
vectorised) and its counts stay bit-identical to the reference interpreter."""

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import relax, s_tir, tirx

from sbc.codegen.build import _Lowerer, build, fuse, fuse_ops, fused_kernels, to_relax
from sbc.codegen.schedule_cpu import schedule_cpu
from sbc.codegen.targets import host_cpu_target
from sbc.ir import Graph, Sym, TensorType
from tests.codegen.test_lower import check, const

D = 64
RNG = np.random.default_rng(3)


def rmsnorm(g: Graph, x, name: str):
    """RMSNorm as the exporter writes it: x * 1 / sqrt(mean(x^2) + eps) * w."""
    mean = g.add1("ReduceMean", g.add1("Pow", x, const(g, 2.0, np.float32)), const(g, [-1]))
    inv = g.add1("Reciprocal", g.add1("Sqrt", g.add1("Add", mean, const(g, 1e-6, np.float32))))
    w = g.add_param(name, (1 + 0.1 * RNG.normal(size=D)).astype(np.float32))
    return g.add1("Mul", g.add1("Mul", x, inv), w)


def encode_graph(layers: int = 1, producer: str = "rmsnorm") -> Graph:
    """`layers` times: h -> producer (rmsnorm, or a matmul) -> SpikeEncode; each layer's
    counts and scale are outputs, and h + 1 feeds the next layer."""
    g = Graph()
    h = g.add_input("x", TensorType("f32", (Sym.var("batch"), Sym.var("seq"), D)))
    outs, names = [], []
    for i in range(layers):
        if producer == "rmsnorm":
            y = rmsnorm(g, h, f"norm{i}")
        else:
            y = g.add1("MatMul", h, g.add_param(f"w{i}", RNG.normal(size=(D, D)).astype(np.float32)))
        counts, scale = g.add("SpikeEncode", [y], {"dtype": "i16"}).outputs
        outs += [counts, scale]
        names += [f"counts{i}", f"scale{i}"]
        h = g.add1("Add", h, const(g, 1.0, np.float32))
    g.set_outputs(outs, names)
    return g


def prim_funcs(mod) -> dict:
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}


def encoders(mod) -> dict:
    return {n: f for n, f in prim_funcs(mod).items() if "spikeencode" in n}


def test_encode_fused_into_its_rmsnorm():
    funcs = prim_funcs(fuse(to_relax(encode_graph())))
    # the norm's tail (add eps, sqrt, reciprocal, two muls) and the encoder: one kernel; the
    # mean of x^2 is not fused (an FMA in the sum would change its bits)
    assert sorted(funcs) == ["fused_add_sqrt_reciprocal_mul_mul1_spikeencode", "pow", "reducemean"]


def test_encode_after_a_matmul_is_not_fused():
    """A matmul is no elementwise producer: the encoder stays a kernel of its own."""
    funcs = prim_funcs(fuse(to_relax(encode_graph(producer="matmul"))))
    assert [n for n in funcs if "spikeencode" in n] == ["spikeencode"], list(funcs)


def test_identical_layers_share_one_fused_kernel():
    lowerer = _Lowerer({"main": encode_graph(layers=3)})
    lowered = lowerer.run()
    mod = fuse(lowered)
    funcs = list(prim_funcs(mod).items())
    for i, (a, fa) in enumerate(funcs):  # one PrimFunc per structural class
        for b, fb in funcs[i + 1:]:
            assert not tvm_ffi.structural_equal(fa, fb, map_free_vars=True), (a, b)
    (name,) = encoders(mod)
    calls = []
    relax.analysis.post_order_visit(mod["main"].body, lambda e: calls.append(e.args[0].name_hint)
                                    if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op)
                                    and e.op.name == "relax.call_tir" else None)
    assert calls.count(name) == 3
    # error messages name every node the shared kernel serves
    groups = fused_kernels(fuse_ops(lowered), lowerer.kernels)
    ops = [n.op for n in next(nodes for g, nodes in groups.items() if g.endswith("spikeencode"))]
    assert ops.count("SpikeEncode") == 3 and ops.count("Sqrt") == 3


def loops_of(func) -> list:
    found = []
    tvm_ffi.structural_walk(func.body, (tirx.For, found.append))
    return found


def test_fused_encode_is_parallel_and_vectorised():
    mod = schedule_cpu(fuse(to_relax(encode_graph())), host_cpu_target())
    (func,) = encoders(mod).values()
    # one parallel loop (over rows) holds the whole kernel: sum, threshold and counts
    (rows,) = [loop for loop in loops_of(func) if loop.kind == tirx.ForKind.PARALLEL]
    blocks = []
    tvm_ffi.structural_walk(rows.body, (s_tir.SBlock, lambda b: blocks.append(b.name_hint)))
    # (the sum's init is its own block, before the sum's loop: see schedule_cpu.common.hoist_inits)
    assert sorted(blocks) == ["spike_abs_sum_init", "spike_abs_sum_update", "spike_counts", "spike_threshold"]
    # the counts loop is left to LLVM's loop vectoriser (TVM cannot vectorise nearbyint):
    # packed divisions (vdivps, not scalar vdivss) show that it did
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                      target=host_cpu_target())
    assert "vdivps" in lib.mod.inspect_source("asm")


@pytest.mark.parametrize("producer", ["rmsnorm", "matmul"])
def test_counts_bit_identical_to_the_interpreter(producer):
    g = encode_graph(layers=2, producer=producer)
    built = build(g)
    for batch, seq in [(1, 1), (2, 37)]:
        x = RNG.normal(size=(batch, seq, D)).astype(np.float32)
        check(g, {"x": x}, built=built)  # counts exactly, scales to 1e-5
