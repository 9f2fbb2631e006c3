"""Guard rails for the CPU schedule rules of issue 18 (single-op speed vs onnxruntime): a
representative kernel of each rule is scheduled the way the rule intends (parallel, vectorised,
and the rule's own mark: rfactor lanes, a partitioned tail, the reduction loop outside the
vector loop) and stays exact vs NumPy, at static and symbolic sizes that are and are not whole
vectors."""

import numpy as np
import pytest
import tvm
from tvm import relax, te, topi

from sbc.codegen.schedule_cpu import schedule_cpu
from sbc.codegen.schedule_cpu.common import is_matmul, prepare
from tests.codegen.test_schedule_cpu import TARGET, build_module, lower, prim_funcs


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
