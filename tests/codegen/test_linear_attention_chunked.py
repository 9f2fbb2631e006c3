"""The chunked LinearAttention kernel (and the recurrent one it shares its tail step with),
compiled as PrimFuncs and compared with the op's NumPy reference: rules linear and gated (per
head and per key dim), GQA, with and without past state, T around the sub-chunk and chunk
sizes, and decays strong enough to underflow."""

from functools import lru_cache

import numpy as np
import pytest
import tvm
from tvm.script import tirx as T

from sbc.codegen.kernels.linear_attention import fast_exp, linear_attention_kernel
from sbc.codegen.kernels.linear_attention_chunked import linear_attention_chunked_kernel
from sbc.codegen.targets import host_cpu_target
from sbc.ir.registry import get_op

SMALL = (4, 2, 8, 16)  # hq, hkv, dk, dv
MODEL = (8, 2, 64, 64)  # the `small` model's heads
TOLERANCE = 1e-5  # max |error| relative to max |reference|


def _compile(func):
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return tvm.compile(mod, target=host_cpu_target())["main"]


@lru_cache(maxsize=None)
def kernel(kind, shape, decay, past):
    hq, hkv, dk, dv = shape
    scale = 1.0 / np.sqrt(dk)
    if kind == "chunked":
        return _compile(linear_attention_chunked_kernel(hq, hkv, dk, dv, scale, decay, past))
    return _compile(linear_attention_kernel(hq, hkv, dk, dv, scale, decay, None, past))


def case(shape, decay, past, batch, seq, strong=False, seed=0):
    """Inputs (q, k, v, past_state, decay) of the op; strong: g = -20 on every third channel."""
    hq, hkv, dk, dv = shape
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=(batch, seq, w)).astype(np.float32) for w in (hq * dk, hkv * dk, hkv * dv))
    s0 = rng.normal(size=(batch, hkv, dk, dv)).astype(np.float32) if past else None
    g = None
    if decay is not None:
        g = -np.abs(rng.normal(size=(batch, seq, hkv * dk if decay == "key" else hkv))) * 0.1
        if strong:
            g[..., ::3] = -20.0
        g = g.astype(np.float32)
    return q, k, v, s0, g


def check(kind, shape, decay, past, batch, seq, strong=False):
    q, k, v, s0, g = case(shape, decay, past, batch, seq, strong)
    hq, hkv, dk, dv = shape
    dev = tvm.cpu()
    placeholder = np.zeros(1, np.float32)
    args = [tvm.runtime.tensor(x if x is not None else placeholder, dev) for x in (q, k, v, s0, g, None)]
    out = tvm.runtime.tensor(np.zeros((batch, seq, hq * dv), np.float32), dev)
    state = tvm.runtime.tensor(np.zeros((batch, hkv, dk, dv), np.float32), dev)
    kernel(kind, shape, decay, past)(*args, out, state)
    attrs = {"q_num_heads": hq, "kv_num_heads": hkv, "scale": 0.0}
    want_out, want_state = get_op("LinearAttention").ref(attrs, q, k, v, s0, g)
    for name, got, want in (("output", out.numpy(), want_out), ("present_state", state.numpy(), want_state)):
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err <= TOLERANCE, f"{kind} {name} decay={decay} past={past} T={seq}: rel. error {err:.2e}"


@pytest.mark.parametrize("decay", [None, "head", "key"])
@pytest.mark.parametrize("past", [False, True])
def test_chunked_kernel_matches_reference(decay, past):
    # every T from no full sub-chunk through a partial tail after several chunks
    for batch, seq in ((1, 1), (2, 15), (1, 16), (2, 17), (1, 63), (1, 64), (2, 65), (1, 1000)):
        check("chunked", SMALL, decay, past, batch, seq)


@pytest.mark.parametrize("kind", ["chunked", "recurrent"])
@pytest.mark.parametrize("decay", ["head", "key"])
def test_strong_decay_underflows_like_the_reference(kind, decay):
    # exp(-20) per step: products of decays underflow within a sub-chunk
    for seq in (1, 63, 64, 65, 1000):
        check(kind, MODEL, decay, True, 1, seq, strong=True)


def test_chunked_kernel_odd_head_sizes():
    for decay in (None, "key"):  # dk neither a multiple of 4 nor even; dv not a vector width
        for seq in (1, 16, 40):
            check("chunked", (3, 1, 5, 7), decay, True, 2, seq)


def test_fast_exp():
    n = 4096

    @T.prim_func
    def f(a: T.Buffer((n,), "float32"), b: T.Buffer((n,), "float32")):
        for io in range(n // 16):
            for ii in T.vectorized(16):
                b[io * 16 + ii] = fast_exp(a[io * 16 + ii])

    x = np.concatenate([np.linspace(-100, 10, n - 4), [0.0, -87.0, -87.3, -1e30]]).astype(np.float32)
    y = tvm.runtime.tensor(np.zeros(n, np.float32))
    _compile(f)(tvm.runtime.tensor(x), y)
    got, want = y.numpy().astype(np.float64), np.exp(x.astype(np.float64))
    normal = x > -87.0
    assert np.max(np.abs(got[normal] - want[normal]) / want[normal]) < 5e-7
    assert np.all(got[~normal] < 2e-38)  # where expf underflows: ~1e-38, far below any weight that matters
