"""exp on sbc's CPU target is vector arithmetic (codegen/fast_math.py): within 1 ulp of the
correctly rounded value in float32's normal range, IEEE at the edges (NaN, +-inf, overflow,
underflow), no scalar library call left in a vectorised loop, float64 untouched."""

import numpy as np
import pytest
import tvm
from tvm.script import tirx as T

from sbc.codegen.targets import host_cpu_target

N = 4096


def exp_kernel(dtype: str, lanes: int):
    @T.prim_func
    def kernel(a: T.Buffer((N,), dtype), b: T.Buffer((N,), dtype)):
        for i in range(N // lanes):
            for j in T.vectorized(lanes):
                b[i * lanes + j] = T.exp(a[i * lanes + j])
    return tvm.compile(tvm.IRModule({"main": kernel}), target=host_cpu_target())


def run(lib, x: np.ndarray) -> np.ndarray:
    out = tvm.runtime.tensor(np.zeros_like(x))
    lib["main"](tvm.runtime.tensor(x), out)
    return out.numpy()


@pytest.mark.parametrize("lanes", [1, 8, 16])
def test_float32_exp_within_one_ulp(lanes):
    x = np.concatenate([np.linspace(-104, 89, N // 2),
                        np.random.default_rng(0).normal(0, 20, N // 2)]).astype(np.float32)
    got = run(exp_kernel("float32", lanes), x)
    exact = np.exp(x.astype(np.float64))
    normal = (exact > np.finfo(np.float32).tiny) & (exact < np.finfo(np.float32).max)
    rounded = exact[normal].astype(np.float32)
    assert np.max(np.abs(got[normal] - rounded) / np.spacing(rounded)) <= 1.0
    assert np.all(got[exact >= 2.0 ** 128] == np.inf)
    assert np.all(np.abs(got[~normal & (exact < 1)] - exact[~normal & (exact < 1)]) <= 2e-45)


def test_float32_exp_edges():
    x = np.zeros(N, np.float32)
    x[:6] = [np.nan, np.inf, -np.inf, 88.8, -120.0, 0.0]
    got = run(exp_kernel("float32", 8), x)[:6]
    assert np.isnan(got[0]) and got[1] == np.inf and got[2] == 0.0
    assert got[3] == np.inf and got[4] == 0.0 and got[5] == 1.0


def test_no_scalar_exp_calls_in_vector_loops():
    assembly = exp_kernel("float32", 16).mod.inspect_source("asm")
    assert "expf" not in assembly


def test_float64_keeps_llvm_exp():
    x = np.linspace(-50, 50, N)
    np.testing.assert_allclose(run(exp_kernel("float64", 4), x), np.exp(x), rtol=1e-15)
