"""Hand-built attention subgraphs in the shapes exporters write (torch.onnx for SpikingBrain):
the inputs of the fusion-pass tests, with switches that make near misses."""

from __future__ import annotations

import math

import numpy as np

from sbc.ir import Graph, TensorType
from tests.passes.helpers import sym

B, T = sym("batch"), sym("seq")


def const(g: Graph, value, name="c"):
    return g.add1("Constant", name=name, value=np.asarray(value))


def symbolic(g: Graph, dims, name="shape"):
    return const(g, np.array(list(dims), dtype=object), name)


def repeat_kv(g: Graph, x, groups: int):
    """[B, H, T, D] -> [B, H*groups, T, D] the way torch exports repeat_kv."""
    _, h, _, d = x.shape
    u = g.add1("Unsqueeze", x, const(g, [2]))
    e = g.add1("Expand", u, symbolic(g, [B, h, groups, T, d]))
    return g.add1("Reshape", e, symbolic(g, [B, h * groups, T, d]))


def band_mask(g: Graph, kind: str = "causal", window: int = 4):
    """Bool [T, T]: causal (i >= j), strict (i > j: off by one), or band (0 <= i-j < window)."""
    n = g.add1("Constant", value=np.array(T, dtype=object))
    arange = g.add1("Range", const(g, np.int64(0)), n, const(g, np.int64(1)))
    rows = g.add1("Unsqueeze", arange, const(g, [1]))
    cols = g.add1("Unsqueeze", arange, const(g, [0]))
    diff = g.add1("Sub", rows, cols)
    zero = const(g, np.int64(0))
    if kind == "strict":
        return g.add1("Greater", diff, zero)
    causal = g.add1("GreaterOrEqual", diff, zero)
    if kind == "band":
        return g.add1("And", causal, g.add1("Less", diff, const(g, np.int64(window))))
    return causal


def heads_input(g: Graph, name: str, heads: int, d: int = 8):
    return g.add_input(name, TensorType("f32", (B, heads, T, d)))


def gla_graph(q_heads=4, kv_heads=2, decay="key", sign=1, mask="causal", masked=True,
              k_heads=None):
    """The parallel GLA form: mask(q e^b (k e^-b)^T) v, b = cumsum(g); decay None/key/head.
    k_heads: give k that many heads, left to MatMul's broadcasting (a head mismatch)."""
    g = Graph("gla")
    q = heads_input(g, "q", q_heads)
    k, v = heads_input(g, "k", k_heads or kv_heads), heads_input(g, "v", kv_heads)
    groups = q_heads // kv_heads
    if decay is not None:
        logd = g.add_input("g", TensorType("f32", (B, kv_heads, T, 8 if decay == "key" else 1)))
        b = g.add1("CumSum", repeat_kv(g, logd, groups) if groups > 1 else logd, const(g, np.int64(2)))
        up, down = g.add1("Exp", b), g.add1("Exp", g.add1("Neg", b))
        up, down = (up, down) if sign > 0 else (down, up)
    kr, vr = (repeat_kv(g, k, groups), repeat_kv(g, v, groups)) if groups > 1 else (k, v)
    kr = k if k_heads else kr
    if decay is not None:
        q, kr = g.add1("Mul", q, up), g.add1("Mul", kr, down)
    scores = g.add1("MatMul", q, g.add1("Transpose", kr, perm=[0, 1, 3, 2]))
    if masked:
        scores = g.add1("Where", band_mask(g, mask), scores, const(g, np.float32(0)))
    g.set_outputs([g.add1("MatMul", scores, vr)], ["o"])
    return g


def zeroed_rows(g: Graph, which: str):
    """bool [T, 1] for a "safe softmax" Where(rows, 0, softmax): never, or the first row."""
    n = g.add1("Constant", value=np.array(T, dtype=object))
    rows = g.add1("Unsqueeze", g.add1("Range", const(g, np.int64(0)), n, const(g, np.int64(1))),
                  const(g, [1]))
    return g.add1("Less" if which == "never" else "Equal", rows, const(g, np.int64(0)))


def swa_graph(q_heads=4, kv_heads=2, mask="band", window=4, additive=False, axis=-1, safe=None):
    """Masked softmax attention: softmax(mask(q k^T / sqrt(d))) v; safe: the softmax output
    goes through Where(zeroed_rows(safe), 0, .) as in ONNX Attention's function body."""
    g = Graph("swa")
    q = heads_input(g, "q", q_heads)
    k, v = heads_input(g, "k", kv_heads), heads_input(g, "v", kv_heads)
    groups = q_heads // kv_heads
    kr, vr = (repeat_kv(g, k, groups), repeat_kv(g, v, groups)) if groups > 1 else (k, v)
    scores = g.add1("MatMul", q, g.add1("Transpose", kr, perm=[0, 1, 3, 2]))
    scores = g.add1("Div", scores, const(g, np.float32(math.sqrt(8))))
    allowed = band_mask(g, mask, window)
    ninf = const(g, np.float32(-np.inf))
    if additive:
        scores = g.add1("Add", scores, g.add1("Where", allowed, const(g, np.float32(0)), ninf))
    else:
        scores = g.add1("Where", allowed, scores, ninf)
    weights = g.add1("Softmax", scores, axis=axis)
    if safe is not None:
        weights = g.add1("Where", zeroed_rows(g, safe), const(g, np.float32(0)), weights)
    g.set_outputs([g.add1("MatMul", weights, vr)], ["o"])
    return g
