"""Attention (opset 25, including the opset 23/24 forms) and RotaryEmbedding (opset 23).

sbc has no TVM lowering for these two: the frontend imports them through their ONNX function
bodies (their official decompositions). They are declared here so that graphs built in sbc
can use them, so that the interpreter runs them, and so that the decomposition can be tested
against a declaration. `OpDef.extra["decompose"]` marks them.
"""

from __future__ import annotations

import numpy as np

from sbc.ir.assumptions import require
from sbc.ir.dims import Sym
from sbc.ir.ops.common import broadcast_shapes
from sbc.ir.registry import Attr, OpError, op
from sbc.ir.types import TensorType

# ONNX TensorProto codes for softmax_precision / stash_type -> NumPy dtypes sbc has
PRECISIONS = {1: np.float32, 10: np.float16, 11: np.float64}


def _heads_split(hidden, heads, what):
    """hidden = heads * head_size: the head size, checked when both are known."""
    if isinstance(hidden, int) and hidden % heads:
        raise OpError(f"Attention: {what} hidden size {hidden} is not a multiple of {heads} heads")
    return hidden // heads


# -- Attention ---------------------------------------------------------------------------------

@op("Attention", inputs=["Q", "K", "V", "attn_mask?", "past_key?", "past_value?",
                         "nonpad_kv_seqlen?"],
    outputs=["Y", "present_key", "present_value", "qk_matmul_output"],
    attrs={"is_causal": Attr("int", 0), "kv_num_heads": Attr("int", None),
           "q_num_heads": Attr("int", None), "qk_matmul_output_mode": Attr("int", 0),
           "scale": Attr("float", None), "softcap": Attr("float", 0.0),
           "softmax_precision": Attr("int", None), "left_window_size": Attr("int", -1),
           "right_window_size": Attr("int", -1), "num_outputs": Attr("int", 4)})
def attention(node):
    """softmax(Q K^T * scale + bias) V over heads, ONNX Attention-25.

    Q [B, Hq, Sq, D], K [B, Hkv, Skv, D], V [B, Hkv, Skv, Dv] (4-D), or 3-D [B, S, H*D] with
    q_num_heads / kv_num_heads. Hq a multiple of Hkv (GQA: each KV head serves Hq/Hkv
    consecutive query heads). past_key/past_value [B, Hkv, P, *] are prepended to K/V. The
    bias adds attn_mask (bool: False -> -inf; float: added; its last dim is padded to P + Skv
    with -inf), the causal mask (query i sees key j <= i + offset, offset = P, or
    nonpad_kv_seqlen - Sq per batch), the sliding window and the nonpad_kv_seqlen padding. A
    row whose bias is all -inf outputs zeros.

    num_outputs (1 to 4, an sbc attribute like LayerNormalization's) says how many of the
    outputs exist, in order: Y [B, Hq, Sq, Dv]
    (3-D: [B, Sq, Hq*Dv]), present_key/value [B, Hkv, P + Skv, *], qk_matmul_output
    [B, Hq, Sq, P + Skv] (mode 0: raw Q K^T, 1: after softcap, 2: plus bias, 3: softmax).
    """
    q, k, v = node.inputs[:3]
    mask, past_k, past_v, nonpad = (node.inputs + [None] * 7)[3:7]
    a = node.attrs
    if not (q.type.rank == k.type.rank == v.type.rank) or q.type.rank not in (3, 4):
        raise OpError(f"{node.where()}: Q, K, V must all be 3-D or all 4-D, got "
                      f"{q.type}, {k.type}, {v.type}")
    for t in (q, k, v):
        if not t.dtype.startswith("f"):
            raise OpError(f"{node.where()}: Q, K, V must be float tensors, got {t.type}")
    if q.dtype != k.dtype:
        raise OpError(f"{node.where()}: Q and K differ in dtype ({q.dtype}, {k.dtype})")
    batch, hq, sq, d, hkv, skv, dv = _attention_dims(node, q, k, v)
    if isinstance(hq, int) and isinstance(hkv, int) and hq % hkv:
        raise OpError(f"{node.where()}: {hq} query heads are not a multiple of {hkv} KV heads")
    if (past_k is None) != (past_v is None):
        raise OpError(f"{node.where()}: past_key and past_value must be given together")
    if nonpad is not None and past_k is not None:
        raise OpError(f"{node.where()}: nonpad_kv_seqlen cannot be combined with past_key")
    if nonpad is not None and nonpad.dtype != "i64":
        raise OpError(f"{node.where()}: nonpad_kv_seqlen must be i64, got {nonpad.dtype}")
    past = 0
    if past_k is not None:
        want_k, want_v = (batch, hkv, past_k.shape[2], d), (batch, hkv, past_k.shape[2], dv)
        if past_k.type.rank != 4 or past_v.type.rank != 4 or \
                broadcast_shapes(past_k.shape, want_k) != tuple(past_k.shape) or \
                broadcast_shapes(past_v.shape, want_v) != tuple(past_v.shape):
            raise OpError(f"{node.where()}: past_key {past_k.type} / past_value {past_v.type} "
                          f"do not fit [batch, kv_heads, past, head_size]")
        past = past_k.shape[2]
    total = past + skv
    if mask is not None:
        if mask.dtype not in ("bool", q.dtype):
            raise OpError(f"{node.where()}: attn_mask must be bool or {q.dtype}, got {mask.dtype}")
        if mask.type.rank < 1 or mask.type.rank > 4:
            raise OpError(f"{node.where()}: attn_mask must have rank 1 to 4, got {mask.type}")
        broadcast_shapes(mask.shape[:-1], (batch, hq, sq))
    if a["softmax_precision"] is not None and a["softmax_precision"] not in PRECISIONS:
        raise OpError(f"{node.where()}: softmax_precision {a['softmax_precision']} is not "
                      f"supported (1, 10, 11 are)")
    if not 1 <= a["num_outputs"] <= 4:
        raise OpError(f"{node.where()}: num_outputs must be 1 to 4")
    if not 0 <= a["qk_matmul_output_mode"] <= 3:
        raise OpError(f"{node.where()}: qk_matmul_output_mode must be 0..3")
    y = (batch, hq, sq, dv) if q.type.rank == 4 else (batch, sq, hq * dv)
    return [TensorType(q.dtype, y), TensorType(k.dtype, (batch, hkv, total, d)),
            TensorType(v.dtype, (batch, hkv, total, dv)),
            TensorType(q.dtype, (batch, hq, sq, total))][:a["num_outputs"]]


def _attention_dims(node, q, k, v):
    """(batch, Hq, Sq, D, Hkv, Skv, Dv) of 3-D or 4-D inputs."""
    hq_attr, hkv_attr = node.attrs["q_num_heads"], node.attrs["kv_num_heads"]
    if q.type.rank == 3:
        if hq_attr is None or hkv_attr is None:
            raise OpError(f"{node.where()}: 3-D inputs need q_num_heads and kv_num_heads")
        batch, sq, skv = q.shape[0], q.shape[1], k.shape[1]
        d = _heads_split(q.shape[2], hq_attr, "Q")
        if not require(_heads_split(k.shape[2], hkv_attr, "K"), "==", d, "Attention Q and K head sizes"):
            raise OpError(f"{node.where()}: Q and K head sizes differ ({q.type}, {k.type})")
        dv = _heads_split(v.shape[2], hkv_attr, "V")
        return batch, hq_attr, sq, d, hkv_attr, skv, dv
    batch, hq, sq, d = q.shape
    _, hkv, skv, dk = k.shape
    for attr, actual in ((hq_attr, hq), (hkv_attr, hkv)):  # opset 23/24 allowed them on 4-D
        if attr is not None and attr != actual:
            raise OpError(f"{node.where()}: num_heads attribute {attr} contradicts 4-D inputs")
    if not require(d, "==", dk, "Attention Q and K head sizes"):
        raise OpError(f"{node.where()}: Q and K head sizes differ ({q.type}, {k.type})")
    if not all(require(a, "==", b, "Attention K and V [batch, heads, seq]")
               for a, b in zip(k.shape[:3], v.shape[:3])):
        raise OpError(f"{node.where()}: K {k.type} and V {v.type} differ in [batch, heads, seq]")
    return batch, hq, sq, d, hkv, skv, v.shape[3]


def _to_heads(x, heads):
    """[B, S, H*D] -> [B, H, S, D]."""
    b, s, hidden = x.shape
    return x.reshape(b, s, heads, hidden // heads).transpose(0, 2, 1, 3)


def _attention_bias(attrs, mask, nonpad, batch, sq, total, past, dtype):
    """The additive bias, broadcastable to [B, H, Sq, total]: 0 where attended, -inf not."""
    neg_inf, zero = dtype.type(-np.inf), dtype.type(0)
    bias = np.zeros((sq, total), dtype)
    if mask is not None:
        if mask.shape[-1] < total:  # a short mask covers the first keys; the rest are masked
            widths = [(0, 0)] * (mask.ndim - 1) + [(0, total - mask.shape[-1])]
            mask = np.pad(mask, widths, constant_values=False if mask.dtype == bool else neg_inf)
        bias = bias + (np.where(mask, zero, neg_inf) if mask.dtype == bool else mask)
    # query i sits at absolute position i + offset: after the past, or ending the valid keys
    offset = (np.asarray(nonpad).reshape(-1, 1, 1, 1) - sq if nonpad is not None and past == 0
              else np.int64(past))
    rel = np.arange(sq).reshape(sq, 1) + offset - np.arange(total)  # query pos - key pos
    allowed = np.ones(rel.shape, bool)
    if attrs["is_causal"]:
        allowed &= rel >= 0
    if attrs["left_window_size"] >= 0:
        allowed &= rel <= attrs["left_window_size"]
    if attrs["right_window_size"] >= 0:
        allowed &= -rel <= attrs["right_window_size"]
    if nonpad is not None:
        allowed = allowed & (np.arange(total) < np.asarray(nonpad).reshape(-1, 1, 1, 1))
    return bias + np.where(allowed, zero, neg_inf)


def _masked_softmax(x, all_masked):
    """Softmax over the last axis; rows with no attendable key are zeros, not NaN."""
    peak = np.max(x, axis=-1, keepdims=True)
    e = np.exp(x - np.where(np.isfinite(peak), peak, 0))
    total = np.sum(e, axis=-1, keepdims=True)
    p = e / np.where(total == 0, 1, total)
    return np.where(all_masked, np.zeros((), p.dtype), p)


@attention.reference
def _(attrs, q, k, v, mask=None, past_k=None, past_v=None, nonpad=None):
    three_d = q.ndim == 3
    if three_d:
        q = _to_heads(q, attrs["q_num_heads"])
        k, v = _to_heads(k, attrs["kv_num_heads"]), _to_heads(v, attrs["kv_num_heads"])
    past = 0 if past_k is None else past_k.shape[2]
    if past_k is not None:
        k, v = np.concatenate([past_k, k], axis=2), np.concatenate([past_v, v], axis=2)
    present_k, present_v = k, v
    batch, hq, sq, d = q.shape
    total = k.shape[2]
    scale = attrs["scale"] if attrs["scale"] is not None else 1 / np.sqrt(d)
    root = q.dtype.type(np.sqrt(scale))  # both operands scaled by sqrt(scale): no overflow
    group = hq // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    raw = np.matmul(q * root, np.swapaxes(k * root, -1, -2))
    capped = raw
    if attrs["softcap"] > 0:
        capped = (attrs["softcap"] * np.tanh(raw / attrs["softcap"])).astype(raw.dtype)
    bias = _attention_bias(attrs, mask, nonpad, batch, sq, total, past, q.dtype)
    logits = capped + bias
    all_masked = np.isneginf(np.max(bias, axis=-1, keepdims=True))
    precision = PRECISIONS.get(attrs["softmax_precision"], logits.dtype)
    probs = _masked_softmax(logits.astype(precision), all_masked).astype(q.dtype)
    y = np.matmul(probs, v)
    if three_d:
        y = y.transpose(0, 2, 1, 3).reshape(batch, sq, -1)
    qk = (raw, capped, logits, probs)[attrs["qk_matmul_output_mode"]]
    qk = np.broadcast_to(qk, (batch, hq, sq, total)).astype(q.dtype)
    return (y.astype(q.dtype), present_k, present_v, qk)[:attrs["num_outputs"]]


attention.extra["decompose"] = True


# -- RotaryEmbedding ---------------------------------------------------------------------------

@op("RotaryEmbedding", inputs=["X", "cos_cache", "sin_cache", "position_ids?"],
    attrs={"interleaved": Attr("int", 0), "rotary_embedding_dim": Attr("int", 0),
           "num_heads": Attr("int", 0)})
def rotary_embedding(node):
    """Rotate pairs of each head's first rotary_embedding_dim (0: all) features by the angle of
    the token's position: (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos). Pairs are the two
    halves of the rotated part, or (interleaved) adjacent features.

    X is [B, H, S, D] or [B, S, H*D] (num_heads gives H). The caches are [B, S, R/2], or
    [max_position, R/2] indexed by position_ids [B, S]. Y has X's type.
    """
    x, cos, sin = node.inputs[:3]
    pos = node.inputs[3] if len(node.inputs) > 3 else None
    if x.type.rank not in (3, 4):
        raise OpError(f"{node.where()}: X must be 3-D or 4-D, got {x.type}")
    if x.type.rank == 3 and node.attrs["num_heads"] <= 0:
        raise OpError(f"{node.where()}: 3-D X needs num_heads")
    head = x.shape[3] if x.type.rank == 4 else _heads_split(x.shape[2], node.attrs["num_heads"], "X")
    rot = node.attrs["rotary_embedding_dim"] or head
    if isinstance(rot, int) and rot % 2:
        raise OpError(f"{node.where()}: rotary_embedding_dim {rot} must be even")
    if isinstance(head, int) and isinstance(rot, int) and rot > head:
        raise OpError(f"{node.where()}: rotary_embedding_dim {rot} exceeds the head size {head}")
    want_rank = 2 if pos is not None else 3
    for c in (cos, sin):
        if c.type.rank != want_rank or c.dtype != x.dtype:
            raise OpError(f"{node.where()}: caches must be {x.dtype} of rank {want_rank} "
                          f"({'with' if pos is not None else 'without'} position_ids), got {c.type}")
        last = c.shape[-1]
        if isinstance(last, int) and not isinstance(rot, Sym) and last != rot // 2:
            raise OpError(f"{node.where()}: cache last dim {last} must be "
                          f"rotary_embedding_dim / 2 = {rot // 2}")
    if pos is not None and (pos.dtype != "i64" or pos.type.rank != 2):
        raise OpError(f"{node.where()}: position_ids must be i64 [batch, seq], got {pos.type}")
    return [x.type]


@rotary_embedding.reference
def _(attrs, x, cos, sin, pos=None):
    shape = x.shape
    # work in [B, S, H, D]
    h = x.transpose(0, 2, 1, 3) if x.ndim == 4 else x.reshape(
        shape[0], shape[1], attrs["num_heads"], -1)
    rot = attrs["rotary_embedding_dim"] or h.shape[3]
    if pos is not None:
        cos, sin = cos[pos], sin[pos]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # one angle per (batch, token), all heads
    part = h[..., :rot]
    x1, x2 = (part[..., 0::2], part[..., 1::2]) if attrs["interleaved"] else \
        (part[..., :rot // 2], part[..., rot // 2:])
    real, imag = x1 * cos - x2 * sin, x1 * sin + x2 * cos
    rotated = (np.stack([real, imag], axis=-1).reshape(part.shape) if attrs["interleaved"]
               else np.concatenate([real, imag], axis=-1))
    out = np.concatenate([rotated, h[..., rot:]], axis=-1).astype(x.dtype)
    return out.transpose(0, 2, 1, 3) if x.ndim == 4 else out.reshape(shape)


rotary_embedding.extra["decompose"] = True
