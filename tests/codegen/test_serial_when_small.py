"""codegen.serial_when_small: a parallel loop nest whose work is small runs on the calling
thread (TVM's thread pool costs ~15 us to wake); with symbolic extents the choice is made when
the kernel runs, with static ones when it is compiled; a nest of unknown trip count stays
parallel."""

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import te, tirx
from tvm.tirx import compilation_pipeline as pipelines

from sbc.codegen.serial_when_small import SMALL, serial_when_small
from sbc.codegen.targets.cpu import CpuTarget, host_cpu_target


def _doubling(n):
    """y = 2 x over n elements: an outer parallel loop of 16-element vectors."""
    x = te.placeholder((n,), "float32", name="x")
    y = te.compute((n,), lambda i: x[i] * 2, name="y")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, y]))
    outer, inner = sch.split(sch.get_loops(sch.get_sblock("y"))[0], [None, 16])
    sch.parallel(outer)
    sch.vectorize(inner)
    return sch.mod


def build_lowered(mod, name: str | None = None):
    """The kernel built through TIR pipeline `name` (default: the cpu target's), and the
    bodies of the lowered functions."""
    name = name or CpuTarget.resolve().tir_pipeline()
    seen = []

    def recording():
        lower, host, device = pipelines.get_tir_pipeline(name)

        @tvm.transform.module_pass(opt_level=0)
        def record(m, _ctx):
            seen.extend(f.body for _, f in m.functions_items())
            return m
        return tvm.transform.Sequential([lower, record]), host, device

    pipelines.register_tir_pipeline("test.recording", recording)
    return tvm.tirx.build(mod, host_cpu_target(), pipeline="test.recording"), seen


def _loops(bodies):
    loops = []
    for body in bodies:
        tvm_ffi.structural_walk(body, (tirx.For, loops.append))
    return [loop.kind for loop in loops]


def test_symbolic_work_is_decided_when_the_kernel_runs():
    lib, bodies = build_lowered(_doubling(te.var("n", "int64")))
    ifs = []
    for body in bodies:
        tvm_ffi.structural_walk(body, (tirx.IfThenElse, ifs.append))
    chosen = [s for s in ifs if isinstance(s.then_case, tirx.For)]
    assert len(chosen) == 1
    assert chosen[0].then_case.kind == tirx.ForKind.SERIAL
    assert chosen[0].else_case.kind == tirx.ForKind.PARALLEL
    for n in (1, 5, 16 * SMALL + 3):  # both copies, ragged tails included
        x = np.arange(n, dtype=np.float32)
        y = tvm.runtime.empty((n,), "float32")
        lib["main"](tvm.runtime.tensor(x), y)
        np.testing.assert_array_equal(y.numpy(), 2 * x)


@pytest.mark.parametrize("n, kinds", [(64, {tirx.ForKind.SERIAL}),
                                      (16 * SMALL, {tirx.ForKind.PARALLEL})])
def test_static_work_keeps_only_the_loop_that_wins(n, kinds):
    lib, bodies = build_lowered(_doubling(n))
    assert set(_loops(bodies)) == kinds
    x = np.arange(n, dtype=np.float32)
    y = tvm.runtime.empty((n,), "float32")
    lib["main"](tvm.runtime.tensor(x), y)
    np.testing.assert_array_equal(y.numpy(), 2 * x)


def test_a_trip_count_from_inside_the_nest_stays_parallel():
    """for i in parallel(n): for j in range(i) (or range(kept[0])): its work is not a product
    of extents known before the loop runs."""
    n, i, j = tirx.Var("n", "int64"), tirx.Var("i", "int64"), tirx.Var("j", "int64")
    zero = tirx.IntImm("int64", 0)
    inner = tirx.For(j, zero, i, tirx.ForKind.SERIAL, tirx.Evaluate(zero))
    loop = tirx.For(i, zero, n, tirx.ForKind.PARALLEL, inner)
    assert serial_when_small(loop).same_as(loop)
    kept = tirx.decl_buffer((1,), "int64", "kept")  # a scalar the nest keeps in memory
    inner = tirx.For(j, zero, kept[0], tirx.ForKind.SERIAL, tirx.Evaluate(zero))
    loop = tirx.For(i, zero, n, tirx.ForKind.PARALLEL, inner)
    assert serial_when_small(loop).same_as(loop)
    serial = tirx.For(i, zero, n, tirx.ForKind.SERIAL, inner)
    assert serial_when_small(serial).same_as(serial)  # only parallel loops are considered


def test_a_let_bound_trip_count_reads_as_its_value():
    """TIR's common-subexpression pass binds `n // 16` to a name inside the loop nest; an
    extent naming it is still a function of n alone."""
    n, i, j = tirx.Var("n", "int64"), tirx.Var("i", "int64"), tirx.Var("j", "int64")
    chunks = tirx.Var("chunks", "int64")
    zero, sixteen = tirx.IntImm("int64", 0), tirx.IntImm("int64", 16)
    inner = tirx.For(j, zero, chunks, tirx.ForKind.SERIAL, tirx.Evaluate(zero))
    body = tirx.SeqStmt([tirx.Bind(chunks, tirx.FloorDiv(n, sixteen)), inner])
    chosen = serial_when_small(tirx.For(i, zero, n, tirx.ForKind.PARALLEL, body))
    assert isinstance(chosen, tirx.IfThenElse)
    assert "chunks" not in str(chosen.condition) and "n" in str(chosen.condition)

