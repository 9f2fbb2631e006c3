"""Guard rails for the CPU schedule rules of issue 18 (single-op speed vs onnxruntime): a
representative kernel of each rule is scheduled the way the rule intends (parallel, vectorised,
and the rule's own mark: rfactor lanes, a partitioned tail, the reduction loop outside the
vector loop) and stays exact vs NumPy, at static and symbolic sizes that are and are not whole
vectors."""

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import relax, s_tir, te, tirx, topi

from sbc.codegen.schedule_cpu import schedule_cpu
from sbc.codegen.schedule_cpu.common import is_matmul, prepare
from tests.codegen.test_schedule_cpu import TARGET, _accumulator_shape, build_module, lower, prim_funcs


def _softmax_ref(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _layernorm(x, g, b):
    n = float(int(x.shape[-1]))
    mean = topi.sum(x, axis=-1, keepdims=True) / n
    d = x - mean
    var = topi.sum(d * d, axis=-1, keepdims=True) / n
    return d * topi.rsqrt(var + 1e-5) * g + b


def _layernorm_ref(x, g, b):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-5) * g + b


def _qk(a, b):  # q @ k^T form with a symbolic N: [2, M, 32] x [2, 32, M]
    k = te.reduce_axis((0, 32), name="k")
    return te.compute((2, a.shape[1], b.shape[2]), lambda h, i, j: te.sum(a[h, i, k] * b[h, k, j], axis=k),
                      name="qk")


# name -> (shapes, None = the symbolic dim; TE fn; NumPy reference; marks the script must hold)
CASES = {
    # RowReduction with lanes: rows of 64 (whole vectors): rfactor partial sums, vectorised
    "softmax-lanes": ([(None, 64)], lambda x: topi.nn.softmax(x, axis=-1), _softmax_ref,
                      ["T.parallel(", "T.vectorized(", "_rf"]),
    "layernorm-lanes": ([(None, 64), (64,), (64,)], _layernorm, _layernorm_ref,
                        ["T.parallel(", "T.vectorized(", "_rf"]),
    # RowReduction without lanes (rows of 40: a predicate the rfactor block would lose), the
    # per-element block still vectorised
    "softmax-ragged": ([(None, 40)], lambda x: topi.nn.softmax(x, axis=-1), _softmax_ref,
                       ["T.parallel(", "T.vectorized("]),
    # a symbolic row length: whatever the lanes do, the rows past a vector boundary are exact
    "softmax-symbolic-row": ([(3, None)], lambda x: topi.nn.softmax(x, axis=-1), _softmax_ref,
                             ["T.parallel("]),
    # ColumnReduction: sum over a non-last axis, vector runs of columns inside the reduction
    "sum-over-rows": ([(3, None, 64)], lambda x: topi.sum(x, axis=1), lambda x: x.sum(1),
                      ["T.parallel(", "T.vectorized("]),
    # Transpose: tiles, a partitioned tail over the symbolic axis
    "transpose": ([(2, None, 48)], lambda x: topi.transpose(x, (0, 2, 1)),
                  lambda x: x.transpose(0, 2, 1), ["T.parallel(", "T.vectorized(",
                                                   "pragma_loop_partition_hint"]),
    # Spatial with a symbolic innermost dim: outer parallel, inner vectors, partitioned tail
    "where-symbolic-inner": ([(4, None, None)], lambda x: topi.where(topi.greater(x, 0.0), x, x * 0.5),
                             lambda x: np.where(x > 0, x, x * 0.5),
                             ["T.parallel(", "T.vectorized(", "pragma_loop_partition_hint"]),
    # Matmul with symbolic M and N (activation x activation)
    "matmul-qk-symbolic": ([(2, None, 32), (2, 32, None)], _qk, lambda a, b: a @ b,
                           ["T.parallel(", "T.vectorized("]),
}


@pytest.mark.parametrize("name", CASES)
def test_rule_schedules_and_stays_exact(name):
    shapes, fn, reference, marks = CASES[name]
    mod = schedule_cpu(lower(build_module(shapes, fn)), TARGET)
    for func in prim_funcs(mod):
        script = func.script()
        assert func.attrs["tirx.is_scheduled"]
        for mark in marks:
            assert mark in script, f"{mark} missing:\n{script}"
    with tvm.transform.PassContext(config={"s_tir.LoopPartition": {"partition_const_loop": True}}):
        exe = tvm.compile(mod, target=TARGET, relax_pipeline="default_build")
    vm = relax.VirtualMachine(exe, tvm.cpu())
    rng = np.random.default_rng(0)
    for rows in (1, 13, 64):
        inputs = [rng.normal(size=[rows if d is None else d for d in s]).astype(np.float32) for s in shapes]
        got = vm["main"](*[tvm.runtime.tensor(x) for x in inputs]).numpy()
        np.testing.assert_allclose(got, reference(*inputs), rtol=2e-5, atol=2e-5, err_msg=f"rows={rows}")


def test_matmul_with_symbolic_n_has_no_predicate_in_the_k_loop():
    """N is padded to whole column tiles like M: the update block carries no predicate (with
    one, the tile buffer was C-sized and q @ k^T ran 20x slower than with static shapes)."""
    mod = schedule_cpu(lower(build_module(*CASES["matmul-qk-symbolic"][:2])), TARGET)
    script = prim_funcs(mod)[0].script()
    update = script[script.index('T.sblock("qk_update")'):]
    assert "T.where" not in update[:update.index("T.reads")], script


def test_column_reduction_puts_the_reduction_outside_the_vectors():
    mod = schedule_cpu(lower(build_module(*CASES["sum-over-rows"][:2])), TARGET)
    script = prim_funcs(mod)[0].script()
    body = script[script.index("T.parallel("):]
    assert body.index("range(m)") < body.rindex("T.vectorized("), script


def test_softmax_sum_is_not_a_matmul():
    """Softmax's sum of exp(x - max) reads two buffers in an S..SSR block; it used to pass for a
    matmul, which kept standalone softmax out of the row rule (serial, 20x slower)."""
    mod = lower(build_module([(None, 4, 64)], lambda x: topi.nn.softmax(x, axis=-1)))
    sch, blocks = prepare(prim_funcs(mod)[0])
    assert not any(is_matmul(sch, b) for b in blocks)
    mm = lower(build_module([(2, None, 32), (2, 32, 48)],
                            lambda a, b: topi.nn.batch_matmul(a, b, transpose_b=False)))
    sch, blocks = prepare(prim_funcs(mm)[0])
    assert any(is_matmul(sch, b) for b in blocks)


def test_softmax_of_masked_rows_is_exact():
    """-inf entries (masked scores) give exact zeros; a row of 40 (not whole vectors) and one
    of 64 (rfactor lanes) agree with NumPy."""
    for n in (40, 64):
        mod = schedule_cpu(lower(build_module([(None, n)], lambda x: topi.nn.softmax(x, axis=-1))), TARGET)
        vm = relax.VirtualMachine(tvm.compile(mod, target=TARGET, relax_pipeline="default_build"), tvm.cpu())
        x = np.random.default_rng(1).normal(size=(5, n)).astype(np.float32)
        x[:, n // 2:] = -np.inf
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        assert (got[:, n // 2:] == 0).all()
        np.testing.assert_allclose(got, _softmax_ref(x), rtol=2e-5, atol=1e-7)


def _cumsum_ref(x, axis, exclusive, reverse):
    y = np.flip(x, axis) if reverse else x
    out = np.cumsum(y, axis=axis, dtype=x.dtype)
    if exclusive and x.shape[axis]:
        out = np.concatenate([np.zeros_like(np.take(out, [0], axis=axis)),
                              np.take(out, np.arange(out.shape[axis] - 1), axis=axis)], axis)
    return np.flip(out, axis) if reverse else out


def _scan(axis, exclusive, reverse):
    from sbc.codegen.lower.reduce import scan_sum_func
    return lambda x: te.extern_primfunc([x], scan_sum_func(list(x.shape), x.dtype, axis, exclusive, reverse))


# (shape with None for the symbolic dim, axis, marks of the Scan rule's loops): runs of 16 of
# the 48 columns join the 2 leading rows in the parallel loop (6 tasks; the Spatial rule would
# run only the 2 rows in parallel); columns of a symbolic count get a partitioned tail; a scan
# along the last axis runs its rows in parallel; 5 columns and no rows: one vector
SCANS = [((2, None, 48), 1, ["T.parallel(T.int64(6))", "T.vectorized(T.int64(16))"]),
         ((2, 40, None), 1, ["T.parallel(", "T.vectorized(", "pragma_loop_partition_hint"]),
         ((3, None), 1, ["T.parallel(T.int64(3))"]),
         ((None, 5), 0, ["T.vectorized(T.int64(5))"])]


@pytest.mark.parametrize("shape,axis,marks", SCANS)
@pytest.mark.parametrize("exclusive,reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_scan_rule_runs_columns_in_parallel_and_stays_exact(shape, axis, marks, exclusive, reverse):
    """CumSum's block (codegen.lower.reduce.scan_sum_func) under the Scan rule: independent
    columns in parallel and vectorised, each summed in np.cumsum's order (equal bit for bit),
    also over a symbolic axis fed 0 or 1."""
    mod = schedule_cpu(lower(build_module([shape], _scan(axis, exclusive, reverse))), TARGET)
    script = prim_funcs(mod)[0].script()
    for mark in marks:
        assert mark in script, f"{mark} missing:\n{script}"
    with tvm.transform.PassContext(config={"s_tir.LoopPartition": {"partition_const_loop": True}}):
        vm = relax.VirtualMachine(tvm.compile(mod, target=TARGET, relax_pipeline="default_build"), tvm.cpu())
    rng = np.random.default_rng(0)
    for n in (0, 1, 13, 37):
        x = rng.normal(size=[n if d is None else d for d in shape]).astype(np.float32)
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        np.testing.assert_array_equal(got, _cumsum_ref(x, axis, exclusive, reverse), err_msg=f"n={n}")


def _sbc_softmax(x):
    """sbc's own lowering of Softmax over the last axis (exp a block of its own, kept)."""
    from types import SimpleNamespace

    from sbc.codegen.lower import RULES
    return RULES["Softmax"].fn(None, SimpleNamespace(op="Softmax", attrs={"axis": -1}), x)


def _in_one_serial_loop(func, *prefixes) -> bool:
    """Some serial loop holds a block of each name prefix (the row loop is parallel)."""
    loops = []
    tvm_ffi.structural_walk(func.body, (tirx.For, loops.append))
    for loop in loops:
        names = []
        tvm_ffi.structural_walk(loop.body, (s_tir.SBlock, lambda b: names.append(b.name_hint)))
        if loop.kind == tirx.ForKind.SERIAL and all(
                any(n.startswith(p) for n in names) for p in prefixes):
            return True
    return False


def test_softmax_rows_of_whole_vectors_take_one_pass():
    """Rows of whole vectors: the rfactor lanes of the max and of the sum sit under the row
    loop with the exp row and the scaling, so each row is read by one task while in cache and
    its exp is computed once (it took three passes over the whole tensor, exp twice)."""
    mod = schedule_cpu(lower(build_module([(None, 4, 64)], _sbc_softmax)), TARGET)
    script = prim_funcs(mod)[0].script()
    assert script.count("T.parallel(") == 1 and script.count("_rf") >= 2, script
    # exp (codegen.fast_math.exp_nonpositive: arithmetic, no T.exp call) in one block only
    assert script.count('T.sblock("softmax_exp")') == 1 and "T.exp(" not in script, script
    assert script.count("T.vectorized(") >= 4, script  # both lane loops, the exp, the scaling
    # exp and sum in one pass over the row: the sum's lanes add each vector of exp as soon as
    # it is computed, in the exp's own serial loop over the row's vectors
    assert _in_one_serial_loop(prim_funcs(mod)[0], "softmax_exp", "softmax_sum_rf"), script
    vm = relax.VirtualMachine(tvm.compile(mod, target=TARGET, relax_pipeline="default_build"), tvm.cpu())
    x = np.random.default_rng(2).normal(size=(3, 4, 64)).astype(np.float32)
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), _softmax_ref(x), rtol=2e-5, atol=1e-7)


def _guarded(shape):
    """A float32 array of `shape` (64-byte aligned, so the runtime passes it without a copy)
    whose last byte is followed by an inaccessible page: a read past its end crashes."""
    import ctypes
    import mmap
    nbytes = int(np.prod(shape)) * 4
    assert nbytes % 64 == 0
    pages = -(-nbytes // mmap.PAGESIZE) + 1
    buf = mmap.mmap(-1, pages * mmap.PAGESIZE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    guard = base + (pages - 1) * mmap.PAGESIZE
    libc = ctypes.CDLL(None)
    assert libc.mprotect(ctypes.c_void_p(guard), mmap.PAGESIZE, 0) == 0  # PROT_NONE
    offset = (pages - 1) * mmap.PAGESIZE - nbytes
    return np.frombuffer(buf, np.float32, int(np.prod(shape)), offset).reshape(shape), buf


@pytest.mark.parametrize("op,attrs", [("CumSum", {}), ("CumSum", {"exclusive": 1, "reverse": 1}),
                                      ("Softmax", {"axis": -1})])
def test_scan_and_softmax_read_nothing_past_the_input(op, attrs):
    """x ends right before an inaccessible page, with a symbolic dim of 37 (not whole vectors):
    the vector loops' last, partial vector must not read past the end."""
    from onnx import TensorProto, helper

    import sbc
    inputs = ["x", "axis"] if op == "CumSum" else ["x"]
    graph = helper.make_graph(
        [helper.make_node(op, inputs, ["y"], **attrs)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, "t", 48])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, "t", 48])],
        [helper.make_tensor("axis", TensorProto.INT64, [], [1])] if op == "CumSum" else [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    module = sbc.compile(model, target="cpu", cache=False)
    x, _keep = _guarded((2, 37, 48))
    x[...] = np.random.default_rng(0).normal(size=x.shape)
    got = module.run({"x": x})["y"]
    if op == "CumSum":
        np.testing.assert_array_equal(got, _cumsum_ref(np.array(x), 1, attrs.get("exclusive", 0),
                                                       attrs.get("reverse", 0)))
    else:
        np.testing.assert_allclose(got, _softmax_ref(np.array(x)), rtol=2e-5, atol=1e-7)


# -- BatchedMatmul (activation x activation) and softmax over a symbolic row (issue 18) --------

def _bmm(transposed):
    """[2, 4, M, 32] x B: B [2, 4, 32, N] (probs @ v, q @ k^T with k stored transposed) or
    [2, 4, N, 32] read as B^T (q @ k^T as Einsum writes it)."""
    def fn(a, b):
        k = te.reduce_axis((0, 32), name="k")
        n = b.shape[2] if transposed else b.shape[3]
        return te.compute((2, 4, a.shape[2], n), lambda p, h, i, j: te.sum(
            a[p, h, i, k] * (b[p, h, j, k] if transposed else b[p, h, k, j]), axis=k), name="bmm")
    return fn


def _bmm_ref(transposed):
    return lambda a, b: a @ (b.transpose(0, 1, 3, 2) if transposed else b)


# (A shape, B shape with None for the symbolic dim, B transposed); N = the symbolic dim or 96
# (wider than PACK_ABOVE: B packed into panels), 32 (probs @ v's width, read in place)
BMMS = {
    "qk-symbolic": ((2, 4, None, 32), (2, 4, 32, None), False),
    "qkT-symbolic": ((2, 4, None, 32), (2, 4, None, 32), True),
    "qk-static-ragged": ((2, 4, 13, 32), (2, 4, 32, 96), False),
    "av-symbolic-m": ((2, 4, None, 32), (2, 4, 32, 32), False),
}


@pytest.mark.parametrize("name", BMMS)
def test_batched_matmul_is_register_tiled_without_predicates_and_exact(name):
    """BatchedMatmul: parallel row tiles, vectorised, an accumulator tile of 6 (or 4) rows x 2
    vectors (not a padded copy of C: a C-sized tile buffer was allocated per task), no copy of
    A outside the kernel, no predicate in the k loop, tails split off by LoopPartition; a wide B
    is packed into panels inside the kernel. Exact at sizes off the tile (1, 13, 37 rows)."""
    from sbc.codegen.schedule_cpu.common import vector_lanes
    a_shape, b_shape, transposed = BMMS[name]
    shapes = [a_shape, b_shape]
    mod = schedule_cpu(lower(build_module(shapes, _bmm(transposed))), TARGET)
    (func,) = prim_funcs(mod)
    script = func.script()
    assert "T.parallel(" in script and "T.vectorized(" in script, script
    update = script[script.index('T.sblock("bmm_update")'):]
    assert "T.where" not in update[:update.index("T.reads")], script
    assert "x0_pad" not in script, script  # A is read in place (guarded loads in the last tile)
    symbolic = None in a_shape or None in b_shape
    assert not symbolic or "pragma_loop_partition_hint" in script, script
    # the tile: 6 (4) rows x 2 vectors, a small buffer
    shape = _accumulator_shape(func, "bmm_update")
    lanes = vector_lanes(TARGET)
    assert shape in ([6, 2 * lanes], [4, 2 * lanes]) or shape[-2:] in ([6, 2 * lanes], [4, 2 * lanes]) \
        and all(d == 1 for d in shape[:-2]), (shape, script)
    n_static = b_shape[2] if transposed else b_shape[3]
    if n_static is None or n_static > 64:
        assert "_global" in script and "x1" in script and "T.int64(16)" in script, script  # B packed
    with tvm.transform.PassContext(config={"s_tir.LoopPartition": {"partition_const_loop": True}}):
        vm = relax.VirtualMachine(tvm.compile(mod, target=TARGET, relax_pipeline="default_build"), tvm.cpu())
    rng = np.random.default_rng(0)
    for rows in (1, 13, 37):
        inputs = [rng.normal(size=[rows if d is None else d for d in s]).astype(np.float32) for s in shapes]
        got = vm["main"](*[tvm.runtime.tensor(x) for x in inputs]).numpy()
        np.testing.assert_allclose(got, _bmm_ref(transposed)(*inputs), rtol=1e-5, atol=1e-5,
                                   err_msg=f"rows={rows}")


def test_batched_matmul_tile_fits_the_vector_registers():
    """12 accumulators whatever the width: 6 x 16 with AVX2 (6 x 32 would need 24 of the 16
    ymm registers and spill), 6 x 32 with AVX-512."""
    from sbc.codegen.schedule_cpu.common import vector_lanes
    assert vector_lanes(tvm.target.Target({"kind": "llvm", "mcpu": "znver3"})) == 8
    assert vector_lanes(tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})) == 16


@pytest.mark.parametrize("row", [None, 40, 64])
def test_softmax_reduces_whole_vectors_for_any_row_length(row):
    """sbc's Softmax: over a symbolic row (T) the exp row is padded to whole vectors of 16
    with zeros (codegen.lower.reduce) and the max is padded with its identity
    (vector_rewrites), so both reductions keep vector partial results (rfactor lanes) under
    the one parallel row loop, as over a static row of whole vectors; exact vs NumPy with
    masked (-inf) entries, a NaN row, at lengths on and off the vector (1, 13, 16, 37)."""
    shape = (2, None, row) if row is not None else (2, 3, None)
    mod = schedule_cpu(lower(build_module([shape], _sbc_softmax)), TARGET)
    (func,) = prim_funcs(mod)
    script = func.script()
    assert script.count("T.parallel(") == 1, script
    if row != 40:  # 40: a static row off the vector (no lanes, as before)
        assert script.count("_rf") >= 2 and script.count("T.vectorized(") >= 4, script
    with tvm.transform.PassContext(config={"s_tir.LoopPartition": {"partition_const_loop": True}}):
        vm = relax.VirtualMachine(tvm.compile(mod, target=TARGET, relax_pipeline="default_build"), tvm.cpu())
    rng = np.random.default_rng(3)
    for n in (1, 13, 16, 37):
        x = (rng.normal(size=[n if d is None else d for d in shape]) * 4).astype(np.float32)
        masked = max(1, x.shape[2] // 2)  # a row of -inf alone is NaN (as in NumPy)
        x[0, 0, masked:] = -np.inf
        if x.shape[1] > 1:
            x[1, 1, 0] = np.nan
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        with np.errstate(invalid="ignore"):
            want = _softmax_ref(x.astype(np.float64))
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7, err_msg=f"n={n}")
        assert (got[0, 0, masked:] == 0).all()


def test_exp_nonpositive_is_within_1_ulp_and_exact_at_the_ends():
    """codegen.fast_math.exp_nonpositive (softmax's exp): within 1 ulp of exp over [-87.3, 0],
    within two of the smallest subnormal (1.4e-45) of it down to -87.68, 0 below and at -inf, NaN
    kept."""
    from sbc.codegen.fast_math import exp_nonpositive
    x = np.concatenate([-np.geomspace(1e-8, 87.33, 200001), np.linspace(-87.33, 0, 100001),
                        np.linspace(-90, -87.33, 10001),
                        [0.0, -0.0, -87.4, -87.7, -100.0, -np.inf, np.nan]]).astype(np.float32)
    mod = build_module([(None,)], lambda t: te.compute(t.shape, lambda i: exp_nonpositive(t[i]), name="e"))
    mod = schedule_cpu(lower(mod), TARGET)
    vm = relax.VirtualMachine(tvm.compile(mod, target=TARGET, relax_pipeline="default_build"), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    want = np.exp(x.astype(np.float64)).astype(np.float32)
    normal = (x >= -87.33) & np.isfinite(x)
    ulp = np.abs(got[normal].view(np.int32) - want[normal].view(np.int32))
    assert ulp.max() <= 1, (ulp.max(), x[normal][ulp.argmax()])
    tiny = (x < -87.33) & (x >= -87.68)
    assert tiny.any() and np.abs(got[tiny] - want[tiny]).max() <= 1.5e-45 * 2
    assert (got[(x < -87.7) & ~np.isnan(x)] == 0).all() and np.isnan(got[-1])
    assert (got[~np.isnan(x)] >= 0).all()


@pytest.mark.parametrize("equation", ["bhqd,bhkd->bhqk", "bhqk,bhkd->bhqd"])
def test_attention_einsums_are_exact_at_symbolic_lengths(equation):
    """Einsum's lowering reaches BatchedMatmul (the q @ k^T form reads B transposed); a
    symbolic T off the tile (1, 13, 37) and one wide enough to pack B (70) stay exact."""
    from onnx import TensorProto, helper

    import sbc
    (first, second), out = equation.split("->")[0].split(","), equation.split("->")[1]
    dims = {"b": 1, "h": 2, "q": "t", "k": "t", "d": 32}
    graph = helper.make_graph(
        [helper.make_node("Einsum", ["x", "y"], ["z"], equation=equation)], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [dims[c] for c in s])
         for n, s in (("x", first), ("y", second))],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [dims[c] for c in out])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    module = sbc.compile(model, target="cpu", cache=False)
    rng = np.random.default_rng(0)
    for t in (1, 13, 37, 70):
        size = {"b": 1, "h": 2, "q": t, "k": t, "d": 32}
        x, y = (rng.normal(size=[size[c] for c in s]).astype(np.float32) for s in (first, second))
        got = module.run({"x": x, "y": y})["z"]
        np.testing.assert_allclose(got, np.einsum(equation, x, y), rtol=1e-5, atol=1e-5, err_msg=f"t={t}")


@pytest.mark.parametrize("row", [64, None])
def test_softmax_stores_exp_in_its_output(row):
    """RowReduction stores softmax's exp row in the output and scales it there (as MLAS does):
    no intermediate the size of the output is left, the static row or the symbolic one whose
    exp is padded to whole vectors with zeros. The kernel's output ends right before an
    inaccessible page at a length off the vector (37): the padding is never written there."""
    shape = (2, 8, row)
    mod = schedule_cpu(lower(build_module([shape], _sbc_softmax)), TARGET)
    (func,) = prim_funcs(mod)
    script = func.script()
    assert "softmax_exp = T.sblock_alloc_buffer" not in script, script
    assert script.count("T.parallel(") == 1 and script.count("_rf") >= 2, script
    with tvm.transform.PassContext(config={"s_tir.LoopPartition": {"partition_const_loop": True}}):
        kernel = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                                target=TARGET)
    n = row or 37
    x = (np.random.default_rng(4).normal(size=(2, 8, n)) * 4).astype(np.float32)
    x[0, 0, n // 2:] = -np.inf
    out, _keep = _guarded(x.shape)
    kernel["main"](tvm.runtime.tensor(x), tvm_ffi.from_dlpack(out))
    np.testing.assert_allclose(out, _softmax_ref(x.astype(np.float64)), rtol=2e-6, atol=1e-7)
    assert (out[0, 0, n // 2:] == 0).all()


def test_softmax_read_elsewhere_keeps_its_exp_row():
    """Negative case: a last block that reads the exp row at another element than it writes
    (y[i, j] = e[i, n - 1 - j] / s[i], a reversed softmax) would overwrite exp values it still
    needs, so the exp keeps its own buffer; exact."""
    def reversed_softmax(x):
        n = x.shape[1]
        r1, r2 = te.reduce_axis((0, n), name="r1"), te.reduce_axis((0, n), name="r2")
        mx = te.compute((x.shape[0], 1), lambda i, _: te.max(x[i, r1], axis=r1), name="mx")
        e = te.compute(x.shape, lambda i, j: tirx.exp(x[i, j] - mx[i, 0]), name="e",
                       attrs={"sbc.computed_once": 1})
        s = te.compute((x.shape[0], 1), lambda i, _: te.sum(e[i, r2], axis=r2), name="s")
        return te.compute(x.shape, lambda i, j: e[i, n - 1 - j] / s[i, 0], name="y")

    mod = schedule_cpu(lower(build_module([(None, 64)], reversed_softmax)), TARGET)
    script = prim_funcs(mod)[0].script()
    assert "e = T.sblock_alloc_buffer" in script and "T.parallel(" in script, script
    vm = relax.VirtualMachine(tvm.compile(mod, target=TARGET, relax_pipeline="default_build"), tvm.cpu())
    x = np.random.default_rng(5).normal(size=(5, 64)).astype(np.float32)
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), _softmax_ref(x)[:, ::-1],
                               rtol=2e-6, atol=1e-7)
