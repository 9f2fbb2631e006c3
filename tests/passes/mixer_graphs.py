"""Token mixers spelled the ways other people's exports spell them (masks the other way round,
multiplied in or drawn by Trilu, finfo.min fills, Einsum, pairwise decay tensors, scales in odd
places, GQA in five dims), and near misses: the inputs of the recognise-mixers tests."""

from __future__ import annotations

import numpy as np

from sbc.ir import Graph, TensorType
from tests.passes.attention_graphs import B, T, band_mask, const, heads_input, repeat_kv

D = 8
FINFO_MIN = float(np.finfo(np.float32).min)


def _qkv(g: Graph, q_heads=4, kv_heads=2):
    q = heads_input(g, "q", q_heads)
    k, v = heads_input(g, "k", kv_heads), heads_input(g, "v", kv_heads)
    groups = q_heads // kv_heads
    return q, *((repeat_kv(g, k, groups), repeat_kv(g, v, groups)) if groups > 1 else (k, v))


def _scores(g: Graph, q, k, spelling: str):
    if spelling == "einsum":
        return g.add1("Einsum", q, k, equation="bhtd,bhsd->bhts")
    return g.add1("MatMul", q, g.add1("Transpose", k, perm=[0, 1, 3, 2]))


def _mix(g: Graph, weights, v, spelling: str):
    if spelling == "einsum":
        return g.add1("Einsum", weights, v, equation="bhts,bhsd->bhtd")
    return g.add1("MatMul", weights, v)


def _zero_outside(g: Graph, scores, how: str, mask_kind="causal"):
    """scores with the pairs the mask hides set to 0, spelled `how` (mask_kind "none": kept)."""
    if mask_kind == "none":
        return scores
    mask = band_mask(g, mask_kind)
    zero = const(g, np.float32(0))
    if how == "flipped":  # masked_fill(~mask, 0)
        return g.add1("Where", g.add1("Not", mask), zero, scores)
    if how == "multiplied":  # scores * causal
        return g.add1("Mul", scores, g.add1("Cast", mask, to="f32"))
    if how == "trilu":  # scores.tril()
        return g.add1("Trilu", scores, upper=0)
    if how == "zeros_like":  # torch.where(mask, s, zeros_like(s))
        return g.add1("Where", mask, scores, g.add1("ConstantOfShape", g.add1("Shape", scores),
                                                    value=np.zeros(1, np.float32)))
    return g.add1("Where", mask, scores, zero)


def linear_graph(how="flipped", spelling="matmul", decay=None, out_scale=None, mask="causal",
                 scale=None):
    """mask(q k^T [decayed]) v; decay None, "key" (q e^b, k e^-b), "pairwise" (a [B, H, T, T, D]
    e^(b_t - b_s) in a 3-operand Einsum) or "head" ((q k^T) * e^tril(b_t - b_s), b per head);
    scale multiplies the scores, out_scale the output."""
    g = Graph("linear")
    q, k, v = _qkv(g)
    if decay is not None:
        width = 1 if decay == "head" else D
        logd = g.add_input("g", TensorType("f32", (B, 2, T, width)))
        b = g.add1("CumSum", repeat_kv(g, logd, 2), const(g, np.int64(2)))
    if decay == "key":
        q = g.add1("Mul", q, g.add1("Exp", b))
        k = g.add1("Mul", k, g.add1("Exp", g.add1("Neg", b)))
    if decay == "pairwise":
        pair = g.add1("Sub", g.add1("Unsqueeze", b, const(g, [3])), g.add1("Unsqueeze", b, const(g, [2])))
        scores = g.add1("Einsum", q, k, g.add1("Exp", pair), equation="bhtc,bhsc,bhtsc->bhts")
    else:
        scores = _scores(g, q, k, spelling)
    if scale is not None:
        scores = g.add1("Mul", const(g, np.float32(scale)), scores)
    if decay == "head":
        pair = g.add1("Sub", b, g.add1("Transpose", b, perm=[0, 1, 3, 2]))
        scores = g.add1("Mul", scores, g.add1("Exp", g.add1("Trilu", pair, upper=0)))
    out = _mix(g, _zero_outside(g, scores, how, mask), v, spelling)
    if out_scale is not None:
        out = g.add1("Mul", out, const(g, np.float32(out_scale)))
    g.set_outputs([out], ["o"])
    return g


def softmax_graph(fill="finfo", window=4, mask="band", guard=False, split_scale=False):
    """softmax(fill(q k^T * scale)) v over a band of `window` keys; fill: "finfo"
    (Where(band, s, finfo.min)), "bias" (s + Where(band, 0, -1e9)), "flipped"
    (Where(~band, -inf, s)); guard: Where(IsNaN(p), 0, p) after the softmax; split_scale:
    sqrt(scale) on q and on k (what SDPA exports)."""
    g = Graph("softmax")
    q, k, v = _qkv(g)
    root = float(D) ** -0.25
    if split_scale:
        q, k = g.add1("Mul", q, const(g, np.float32(root))), g.add1("Mul", k, const(g, np.float32(root)))
    scores = _scores(g, q, k, "matmul")
    if not split_scale:
        scores = g.add1("Mul", scores, const(g, np.float32(root * root)))
    allowed = band_mask(g, mask, window)
    if fill == "finfo":
        scores = g.add1("Where", allowed, scores, const(g, np.float32(FINFO_MIN)))
    elif fill == "bias":
        bias = g.add1("Where", allowed, const(g, np.float32(0)), const(g, np.float32(-1e9)))
        scores = g.add1("Add", bias, scores)
    else:
        scores = g.add1("Where", g.add1("Not", allowed), const(g, np.float32(-np.inf)), scores)
    p = g.add1("Softmax", scores, axis=-1)
    if guard:
        p = g.add1("Where", g.add1("IsNaN", p), const(g, np.float32(0)), p)
    g.set_outputs([g.add1("MatMul", p, v)], ["o"])
    return g


def grouped_5d_graph(window=4):
    """GQA in five dims without repeating k, v: q [B, T, Hkv, G, D],
    einsum('bqhgd,bkhd->bhgqk'), softmax over a band, einsum('bhgqk,bkhd->bqhgd')."""
    g = Graph("gqa5d")
    q = g.add_input("q", TensorType("f32", (B, T, 2, 2, D)))
    k = g.add_input("k", TensorType("f32", (B, T, 2, D)))
    v = g.add_input("v", TensorType("f32", (B, T, 2, D)))
    scores = g.add1("Einsum", q, k, equation="bqhgd,bkhd->bhgqk")
    scores = g.add1("Where", band_mask(g, "band", window), scores, const(g, np.float32(-np.inf)))
    p = g.add1("Softmax", scores, axis=-1)
    g.set_outputs([g.add1("Einsum", p, v, equation="bhgqk,bkhd->bqhgd")], ["o"])
    return g


def relu_scores_graph():
    """A near miss: relu(q k^T) masked (ReLU attention agrees with linear attention on
    positive inputs only)."""
    g = Graph("relu")
    q, k, v = _qkv(g)
    scores = g.add1("Relu", _scores(g, q, k, "matmul"))
    g.set_outputs([_mix(g, _zero_outside(g, scores, "where"), v, "matmul")], ["o"])
    return g


def mixed_heads_graph():
    """A near miss: scores mixed across heads before the mask (each head's weights depend on
    the others')."""
    g = Graph("mixed_heads")
    q, k, v = _qkv(g)
    mix = const(g, np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32))
    scores = g.add1("Einsum", mix, _scores(g, q, k, "matmul"), equation="hg,bgts->bhts")
    g.set_outputs([_mix(g, _zero_outside(g, scores, "where"), v, "matmul")], ["o"])
    return g


def bidirectional_graph(window=4):
    """A near miss: softmax over |i - j| < w (the future is seen)."""
    g = Graph("bidirectional")
    q, k, v = _qkv(g)
    n = g.add1("Constant", value=np.array(T, dtype=object))
    arange = g.add1("Range", const(g, np.int64(0)), n, const(g, np.int64(1)))
    diff = g.add1("Abs", g.add1("Sub", g.add1("Unsqueeze", arange, const(g, [1])),
                                g.add1("Unsqueeze", arange, const(g, [0]))))
    allowed = g.add1("Less", diff, const(g, np.int64(window)))
    scores = g.add1("Where", allowed, _scores(g, q, k, "matmul"), const(g, np.float32(-np.inf)))
    g.set_outputs([g.add1("MatMul", g.add1("Softmax", scores, axis=-1), v)], ["o"])
    return g


def retention_graph(gammas=(0.9, 0.9, 0.5, 0.5), window=None):
    """RetNet's retention: ((q k^T) * D) v, D[h, i, j] = gammas[h]^(i - j) where the key is
    seen (causal, or a band of `window` keys), else 0; one gamma per query head (4 query
    heads, 2 KV heads repeated)."""
    g = Graph("retention")
    q, k, v = _qkv(g)
    seen = band_mask(g, "band" if window else "causal", window or 0)
    n = g.add1("Constant", value=np.array(T, dtype=object))
    arange = g.add1("Range", const(g, np.int64(0)), n, const(g, np.int64(1)))
    diff = g.add1("Sub", g.add1("Unsqueeze", arange, const(g, [1])), g.add1("Unsqueeze", arange, const(g, [0])))
    gamma = const(g, np.array(gammas, np.float32).reshape(-1, 1, 1))
    powers = g.add1("Pow", gamma, g.add1("Cast", diff, to="f32"))
    decay = g.add1("Where", seen, powers, const(g, np.float32(0)))
    out = _mix(g, g.add1("Mul", _scores(g, q, k, "matmul"), decay), v, "matmul")
    g.set_outputs([out], ["o"])
    return g
