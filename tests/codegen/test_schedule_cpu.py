"""sbc's CPU schedules on small Relax modules built with emit_te: results stay exact (vs NumPy)
for static and symbolic shapes, and the kernels really are parallel and vectorised (so the
test fails if scheduling silently stops applying)."""

import numpy as np
import pytest
import tvm
from tvm import relax, s_tir, te, tirx, topi

from sbc.codegen.schedule_cpu import STACK_BYTES, TILE_I, TILE_J, ScheduleCPU, schedule_cpu
from sbc.codegen.schedule_cpu.common import vector_lanes
from sbc.codegen.targets import host_cpu_target
from sbc.runtimes.machine import host_cpu_features

TARGET = host_cpu_target()
M = tirx.Var("m", "int64")  # the symbolic row count (batch * seq)


def _rmsnorm(x, g):
    mean_sq = topi.sum(x * x, axis=-1, keepdims=True) / float(int(x.shape[-1]))
    return x * topi.rsqrt(mean_sq + 1e-6) * g


def _matmul_packed(a, bp):
    """What sbc lowers MatMulPacked to: B pre-packed into [N/16, K, 16] column panels."""
    k = te.reduce_axis((0, a.shape[-1]), name="k")
    return te.compute((*a.shape[:-1], bp.shape[0] * 16), lambda *i: te.sum(
        a[(*i[:-1], k)] * bp[i[-1] // 16, k, i[-1] % 16], axis=k), name="matmul_packed")


def _unpacked(bp):
    return bp.transpose(1, 0, 2).reshape(bp.shape[1], -1)


# name -> (input shapes with None for the symbolic dim, TE function, NumPy reference,
#          whether every kernel must also be vectorised)
CASES = {
    "matmul": ([(None, 64), (64, 96)], topi.matmul, lambda x, w: x @ w, True),
    "matmul-static-ragged": ([(10, 40), (40, 24)], topi.matmul, lambda x, w: x @ w, True),
    "matmul-bias-relu": ([(None, 64), (64, 96), (96,)],
                         lambda x, w, b: topi.nn.relu(topi.add(topi.matmul(x, w), b)),
                         lambda x, w, b: np.maximum(x @ w + b, 0), True),
    # rows = batch x symbolic seq, B pre-packed (padded through a plain view of B)
    "matmul-packed": ([(2, None, 40), (3, 40, 16)], _matmul_packed,
                      lambda a, bp: a @ _unpacked(bp), True),
    "batched-matmul": ([(2, None, 32), (2, 32, 48)],
                       lambda a, b: topi.nn.batch_matmul(a, b, transpose_b=False), lambda a, b: a @ b, True),
    "batched-matmul-bt": ([(2, None, 32), (2, 48, 32)], topi.nn.batch_matmul,
                          lambda a, b: a @ b.transpose(0, 2, 1), True),
    "elementwise": ([(None, 37), (37,)], lambda x, y: topi.sigmoid(x) * topi.tanh(x) + y,
                    lambda x, y: 1 / (1 + np.exp(-x)) * np.tanh(x) + y, True),
    "softmax": ([(None, 40)], lambda x: topi.nn.softmax(x, axis=-1),
                lambda x: np.exp(x - x.max(-1, keepdims=True)) / np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True),
                False),
    "rmsnorm": ([(None, 48), (48,)], _rmsnorm,
                lambda x, g: x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * g, False),
    "sum-over-symbolic-axis": ([(3, None, 16)], lambda x: topi.sum(x, axis=1), lambda x: x.sum(1), False),
    # topi's cumsum is opaque TIR, already parallel: schedule_cpu must pass it through intact
    "cumsum": ([(None, 33)], lambda x: topi.cumsum(x, axis=1), lambda x: np.cumsum(x, 1), False),
}


def build_module(shapes, fn):
    """One Relax function `main` calling the TE computation `fn` (emit_te -> call_tir)."""
    bb = relax.BlockBuilder()
    params = [relax.Var(f"x{i}", relax.TensorType([M if d is None else d for d in s], "float32"))
              for i, s in enumerate(shapes)]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(bb.emit_te(fn, *params))
        bb.emit_func_output(out)
    return bb.get()


def lower(mod):
    """The relax passes before scheduling: group kernels, fuse each group into one PrimFunc."""
    return tvm.transform.Sequential([
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ])(mod)


def prim_funcs(mod):
    return [f for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]


@pytest.mark.parametrize("name", CASES)
def test_scheduled_kernels_are_parallel_vectorised_and_exact(name):
    shapes, fn, reference, vectorised = CASES[name]
    mod = schedule_cpu(lower(build_module(shapes, fn)), TARGET)
    for func in prim_funcs(mod):
        script = func.script()
        assert name == "cumsum" or func.attrs["tirx.is_scheduled"]
        assert "T.parallel(" in script, script
        assert not vectorised or "T.vectorized(" in script, script
    vm = relax.VirtualMachine(tvm.compile(mod, target=TARGET, relax_pipeline="default_build"), tvm.cpu())
    rng = np.random.default_rng(0)
    for rows in (1, 13):
        inputs = [rng.normal(size=[rows if d is None else d for d in s]).astype(np.float32) for s in shapes]
        got = vm["main"](*[tvm.runtime.tensor(x) for x in inputs]).numpy()
        np.testing.assert_allclose(got, reference(*inputs), rtol=1e-5, atol=1e-5)


def test_matmul_tile_keeps_no_row_predicate_in_the_k_loop():
    """Symbolic M is padded to whole row tiles: the inner update block has no predicate."""
    mod = schedule_cpu(lower(build_module(*CASES["matmul"][:2])), TARGET)
    script = prim_funcs(mod)[0].script()
    update = script[script.index('T.sblock("T_matmul_update")'):]
    update = update[:update.index("T.reads")]
    assert "T.where" not in update, script


def _allocated(stmt):
    """Every buffer allocated by a block in `stmt`."""
    found = list(getattr(stmt, "alloc_buffers", []))
    for attr in ("body", "block", "then_case", "else_case"):
        if getattr(stmt, attr, None) is not None:
            found += _allocated(getattr(stmt, attr))
    for s in getattr(stmt, "seq", []):
        found += _allocated(s)
    return found


def _accumulator_shape(func, update="matmul_packed_update"):
    """Shape of the buffer the matmul's k loop accumulates into, as allocated once TVM has
    compacted buffers to the region each loop iteration touches (ints where static)."""
    sch = s_tir.Schedule(func)
    acc = sch.get(sch.get_sblock(update)).writes[0].source.name
    compacted = tvm.transform.Sequential([
        s_tir.transform.LowerInitBlock(), s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
        s_tir.transform.ConvertBlocksToOpaque(), s_tir.transform.CompactBufferAllocation(),
    ])(tvm.IRModule({"main": func}))["main"]
    (buf,) = [b for b in _allocated(compacted.body) if b.name == acc]
    return [int(d) if isinstance(d, tirx.IntImm) else d for d in buf.shape]


@pytest.mark.parametrize("rows", [None, 1000])
def test_packed_matmul_accumulates_in_a_register_tile(rows):
    """Symbolic (batch x seq) or ragged rows with pre-packed B: the accumulator is one
    TILE_I x (2 vectors) tile small enough for the stack (so LLVM keeps it in registers), not a
    [batch, seq, N] buffer, and the k loop carries no row predicate. Two vectors: 12
    accumulators fit AVX2's 16 registers (6 x 32 floats spilled there) and AVX-512's 32."""
    shapes = [(1, rows, 64), (4, 64, 16)]  # N = 64: two tiles of 32 columns, or four of 16
    mod = schedule_cpu(lower(build_module(shapes, _matmul_packed)), TARGET)
    (func,) = prim_funcs(mod)
    assert _accumulator_shape(func) == [1, TILE_I, min(TILE_J, 2 * vector_lanes(TARGET))]
    assert TILE_I * TILE_J * 4 < STACK_BYTES
    assert 'scope="local"' not in func.script()  # "local" buffers come from the workspace pool
    update = func.script()[func.script().index('T.sblock("matmul_packed_update")'):]
    assert "T.where" not in update[:update.index("T.reads")]


@pytest.mark.parametrize("n", [48, 64])
def test_packed_matmul_exact_at_row_counts_off_the_tile(n):
    """Row counts below, off and across the row tile; N = 48 uses one-panel tiles."""
    shapes = [(1, None, 40), (n // 16, 40, 16), (n,)]
    fn = lambda a, bp, bias: topi.add(_matmul_packed(a, bp), bias)  # noqa: E731
    mod = schedule_cpu(lower(build_module(shapes, fn)), TARGET)
    vm = relax.VirtualMachine(tvm.compile(mod, target=TARGET, relax_pipeline="default_build"), tvm.cpu())
    rng = np.random.default_rng(1)
    bp, bias = rng.normal(size=shapes[1]).astype(np.float32), rng.normal(size=n).astype(np.float32)
    for rows in (1, 7, 1000):
        a = rng.normal(size=(1, rows, 40)).astype(np.float32)
        got = vm["main"](*[tvm.runtime.tensor(x) for x in (a, bp, bias)]).numpy()
        want = a.astype(np.float64) @ _unpacked(bp).astype(np.float64) + bias
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_pass_object_skips_scheduled_functions():
    mod = lower(build_module(*CASES["elementwise"][:2]))
    once = ScheduleCPU(TARGET)(mod)
    tvm.ir.assert_structural_equal(ScheduleCPU(TARGET)(once), once)


def test_unschedulable_function_is_left_alone():
    """A PrimFunc without blocks (opaque TIR) passes through untouched instead of failing."""
    func = te.create_prim_func([a := te.placeholder((4,), name="a"), te.compute((4,), lambda i: a[i] + 1)])
    opaque = tvm.IRModule({"f": func})
    opaque = tvm.s_tir.transform.ConvertBlocksToOpaque()(opaque)
    opaque = tvm.s_tir.transform.LowerOpaqueBlock()(opaque)
    out = schedule_cpu(opaque, TARGET)
    assert "T.parallel(" not in out["f"].script()


def test_target_and_features():
    assert TARGET.kind.name == "llvm"
    assert str(TARGET.attrs["mcpu"]) == host_cpu_features()["cpu"]
    assert int(TARGET.attrs["num-cores"]) >= 1
