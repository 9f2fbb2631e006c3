"""Sequence-mixing ops that run in O(T): LinearAttention (ONNX opset 27) and sbc's
SlidingWindowAttention. Both take packed [B, T, heads*D] activations and optional recurrent
state, so one declaration serves a full-sequence run, a chunk of a streamed prefill and a
single decode step.

LinearAttention: exactly ONNX LinearAttention-27. Per KV head, state S [dk, dv]:
    linear       S_t = S_{t-1} + k_t v_t^T
    gated        S_t = exp(g_t) * S_{t-1} + k_t v_t^T          (g: log decay, per head or key dim)
    delta        S_t = S_{t-1} + b_t k_t (v_t - S_{t-1}^T k_t)^T
    gated_delta  S_t = exp(g_t) S_{t-1} + b_t k_t (v_t - exp(g_t) S_{t-1}^T k_t)^T
    o_t = scale * q_t^T S_t (scale 0 means 1/sqrt(dk)); query head h reads KV head h // groups.

SlidingWindowAttention: softmax attention in which the query at absolute position p sees the
keys at positions p-window+1 .. p (itself and the previous window-1; never negative positions).
`position` is the absolute position of the first query (0 when absent). The KV window is a ring
buffer [B, H_kv, window, D]: the key of position a lives in slot a mod window. present_key /
present_value are the buffers after this chunk's keys were written.
"""

from __future__ import annotations

import numpy as np

from sbc.ir.assumptions import require
from sbc.ir.registry import Attr, OpError, op
from sbc.ir.types import TensorType

UPDATE_RULES = ("linear", "gated", "delta", "gated_delta")


def _static_width(v, what: str) -> int:
    if v.type.rank != 3:
        raise OpError(f"{what} must be [B, T, heads*D], got {v.type}")
    width = v.shape[2]
    if not isinstance(width, int):
        raise OpError(f"{what}: the packed head dim must be static, got {v.type}")
    return width


def _head_size(width: int, heads: int, what: str) -> int:
    if heads <= 0 or width % heads:
        raise OpError(f"{what} width {width} is not a multiple of {heads} heads")
    return width // heads


def _check_heads(q_heads: int, kv_heads: int, op_name: str) -> int:
    if kv_heads <= 0 or q_heads <= 0 or q_heads % kv_heads:
        raise OpError(f"{op_name}: q_num_heads {q_heads} must be a positive multiple of "
                      f"kv_num_heads {kv_heads}")
    return q_heads // kv_heads


def _same_rows(values, what: str) -> None:
    rows = {tuple(v.shape[:2]) for v in values}
    if len(rows) != 1:
        raise OpError(f"{what}: query/key/value (and decay/beta) must share [B, T], got "
                      f"{', '.join(str(v.type) for v in values)}")


def linear_attention_dims(node) -> dict:
    """dk, dv, groups and the decay/beta kinds of a LinearAttention node (checked)."""
    a = node.attrs
    q, k, v = node.inputs[:3]
    past, decay, beta = (list(node.inputs[3:]) + [None] * 3)[:3]
    groups = _check_heads(a["q_num_heads"], a["kv_num_heads"], "LinearAttention")
    hq, hkv = a["q_num_heads"], a["kv_num_heads"]
    dk = _head_size(_static_width(q, "LinearAttention: query"), hq, "query")
    if _static_width(k, "LinearAttention: key") != hkv * dk:
        raise OpError(f"LinearAttention: key {k.type} must have {hkv} heads of {dk}")
    dv = _head_size(_static_width(v, "LinearAttention: value"), hkv, "value")
    if a["update_rule"] not in UPDATE_RULES:
        raise OpError(f"LinearAttention: update_rule '{a['update_rule']}' is not one of {UPDATE_RULES}")
    gated = a["update_rule"] in ("gated", "gated_delta")
    delta = a["update_rule"] in ("delta", "gated_delta")
    if gated != (decay is not None) or delta != (beta is not None):
        raise OpError(f"LinearAttention: update_rule '{a['update_rule']}' "
                      f"{'needs' if gated else 'forbids'} decay and {'needs' if delta else 'forbids'} beta")
    decay_kind = None
    if decay is not None:
        width = _static_width(decay, "LinearAttention: decay")
        decay_kind = {hkv * dk: "key", hkv: "head"}.get(width)
        if decay_kind is None:
            raise OpError(f"LinearAttention: decay width {width} must be kv_num_heads ({hkv}) "
                          f"or kv_num_heads*dk ({hkv * dk})")
    beta_kind = None
    if beta is not None:
        width = _static_width(beta, "LinearAttention: beta")
        beta_kind = {hkv: "head", 1: "one"}.get(width)
        if beta_kind is None:
            raise OpError(f"LinearAttention: beta width {width} must be kv_num_heads ({hkv}) or 1")
    _same_rows([x for x in (q, k, v, decay, beta) if x is not None], "LinearAttention")
    if past is not None and tuple(past.shape[1:]) != (hkv, dk, dv):
        raise OpError(f"LinearAttention: past_state {past.type} must be [B, {hkv}, {dk}, {dv}]")
    scale = a["scale"] or 1.0 / np.sqrt(dk)
    return dict(hq=hq, hkv=hkv, dk=dk, dv=dv, groups=groups, decay=decay_kind, beta=beta_kind,
                delta=delta, scale=float(scale))


@op("LinearAttention", inputs=["query", "key", "value", "past_state?", "decay?", "beta?"],
    outputs=["output", "present_state"],
    attrs={"q_num_heads": Attr("int"), "kv_num_heads": Attr("int"),
           "update_rule": Attr("str", "gated_delta"), "scale": Attr("float", 0.0),
           "chunk_size": Attr("int", 64)}, foldable=False)
def linear_attention(node):
    """ONNX LinearAttention-27 (see the module docstring); chunk_size is a tuning hint only."""
    d = linear_attention_dims(node)
    q = node.inputs[0]
    past = node.inputs[3] if len(node.inputs) > 3 else None
    batch, seq = q.shape[:2]
    state_dtype = past.dtype if past is not None else q.dtype
    return [TensorType(q.dtype, (batch, seq, d["hq"] * d["dv"])),
            TensorType(state_dtype, (batch, d["hkv"], d["dk"], d["dv"]))]


def _heads(x: np.ndarray, heads: int) -> np.ndarray:
    """[B, T, H*D] -> [B, H, T, D]."""
    b, t, width = x.shape
    return x.reshape(b, t, heads, width // heads).transpose(0, 2, 1, 3)


@linear_attention.reference
def _(attrs, query, key, value, past_state=None, decay=None, beta=None):
    hq, hkv = attrs["q_num_heads"], attrs["kv_num_heads"]
    b, t, _ = query.shape
    q, k, v = (_heads(x, h).astype(np.float32) for x, h in ((query, hq), (key, hkv), (value, hkv)))
    dk, dv = q.shape[-1], v.shape[-1]
    scale = attrs["scale"] or 1.0 / np.sqrt(dk)
    # decay -> [B, H_kv, T, 1 or dk]; beta -> [B, H_kv or 1, T, 1]
    if decay is None:
        g = None
    elif decay.shape[-1] == hkv:  # per head
        g = decay.transpose(0, 2, 1)[..., None].astype(np.float32)
    else:  # per key dim
        g = _heads(decay, hkv).astype(np.float32)
    beta4 = None if beta is None else beta.transpose(0, 2, 1)[..., None].astype(np.float32)
    state = (np.zeros((b, hkv, dk, dv), np.float32) if past_state is None
             else past_state.astype(np.float32).copy())
    out = np.zeros((b, hq, t, dv), np.float32)
    groups = hq // hkv
    for i in range(t):
        if g is not None:
            state = state * np.exp(g[:, :, i])[..., None]
        v_t = v[:, :, i]
        if beta4 is not None:
            v_t = beta4[:, :, i] * (v_t - np.einsum("bhdm,bhd->bhm", state, k[:, :, i]))
        state = state + k[:, :, i, :, None] * v_t[:, :, None, :]
        out[:, :, i] = scale * np.einsum("bhd,bhdm->bhm", q[:, :, i], np.repeat(state, groups, axis=1))
    output = out.transpose(0, 2, 1, 3).reshape(b, t, hq * dv).astype(query.dtype)
    return output, state.astype(past_state.dtype if past_state is not None else query.dtype)


# -- sliding-window attention ------------------------------------------------------------------

def sliding_window_dims(node) -> dict:
    a = node.attrs
    q, k, v = node.inputs[:3]
    past_k, past_v, position = (list(node.inputs[3:]) + [None] * 3)[:3]
    groups = _check_heads(a["q_num_heads"], a["kv_num_heads"], "SlidingWindowAttention")
    hq, hkv, window = a["q_num_heads"], a["kv_num_heads"], a["window"]
    if window < 1:
        raise OpError(f"SlidingWindowAttention: window must be >= 1, got {window}")
    d = _head_size(_static_width(q, "SlidingWindowAttention: query"), hq, "query")
    if _static_width(k, "SlidingWindowAttention: key") != hkv * d:
        raise OpError(f"SlidingWindowAttention: key {k.type} must have {hkv} heads of {d}")
    dv = _head_size(_static_width(v, "SlidingWindowAttention: value"), hkv, "value")
    _same_rows([q, k, v], "SlidingWindowAttention")
    if (past_k is None) != (past_v is None):
        raise OpError("SlidingWindowAttention: past_key and past_value come together")
    if past_k is not None:
        for x, width in ((past_k, d), (past_v, dv)):
            if tuple(x.shape[1:]) != (hkv, window, width):
                raise OpError(f"SlidingWindowAttention: past buffer {x.type} must be "
                              f"[B, {hkv}, {window}, {width}]")
    if position is not None and (position.dtype != "i64" or position.type.numel != 1):
        raise OpError(f"SlidingWindowAttention: position must be one i64, got {position.type}")
    scale = a["scale"] or 1.0 / np.sqrt(d)
    return dict(hq=hq, hkv=hkv, d=d, dv=dv, groups=groups, window=window, scale=float(scale),
                past=past_k is not None, position=position is not None)


@op("SlidingWindowAttention",
    inputs=["query", "key", "value", "past_key?", "past_value?", "position?"],
    outputs=["output", "present_key", "present_value"],
    attrs={"q_num_heads": Attr("int"), "kv_num_heads": Attr("int"), "window": Attr("int"),
           "scale": Attr("float", 0.0), "full": Attr("int", 0)}, foldable=False)
def sliding_window_attention(node):
    """Causal softmax attention over a window of keys with a ring-buffer KV window (module
    docstring); GQA as in LinearAttention. full = 1: full causal attention, the window being
    the KV cache's capacity (a query must see every earlier key, so a chunk longer than it is
    refused here and runtimes refuse positions past it)."""
    d = sliding_window_dims(node)
    q = node.inputs[0]
    batch, seq = q.shape[:2]
    if node.attrs.get("full") and not require(d["window"], ">=", seq, "full causal attention "
                                              "holds at most its KV cache capacity of tokens"):
        raise OpError(f"SlidingWindowAttention: {seq} tokens exceed the KV cache capacity "
                      f"{d['window']} of a full causal attention")
    return [TensorType(q.dtype, (batch, seq, d["hq"] * d["dv"])),
            TensorType(q.dtype, (batch, d["hkv"], d["window"], d["d"])),
            TensorType(q.dtype, (batch, d["hkv"], d["window"], d["dv"]))]


@sliding_window_attention.reference
def _(attrs, query, key, value, past_key=None, past_value=None, position=None):
    hq, hkv, w = attrs["q_num_heads"], attrs["kv_num_heads"], attrs["window"]
    b, t, _ = query.shape
    q, k, v = (_heads(x, h).astype(np.float32) for x, h in ((query, hq), (key, hkv), (value, hkv)))
    d, dv = q.shape[-1], v.shape[-1]
    scale = attrs["scale"] or 1.0 / np.sqrt(d)
    p0 = 0 if position is None else int(np.asarray(position).reshape(-1)[0])
    if past_key is None:
        past_key = np.zeros((b, hkv, w, d), np.float32)
        past_value = np.zeros((b, hkv, w, dv), np.float32)
    # keys in absolute order: the window's past positions p0-w .. p0-1, then this chunk's
    past_pos = np.arange(p0 - w, p0)
    slots = past_pos % w
    keys = np.concatenate([past_key[:, :, slots], k], axis=2)
    values = np.concatenate([past_value[:, :, slots], v], axis=2)
    key_pos = np.concatenate([past_pos, p0 + np.arange(t)])
    query_pos = p0 + np.arange(t)
    offset = query_pos[:, None] - key_pos[None, :]
    visible = (offset >= 0) & (offset < w) & (key_pos[None, :] >= 0)
    groups = hq // hkv
    keys, values = np.repeat(keys, groups, axis=1), np.repeat(values, groups, axis=1)
    scores = np.where(visible, scale * q @ keys.transpose(0, 1, 3, 2), -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    out = (weights / weights.sum(-1, keepdims=True)) @ values
    output = out.transpose(0, 2, 1, 3).reshape(b, t, hq * dv).astype(query.dtype)
    present_key, present_value = past_key.copy(), past_value.copy()
    for i in range(max(0, t - w), t):  # only the last w keys survive in a w-slot ring
        present_key[:, :, (p0 + i) % w] = k[:, :, i]
        present_value[:, :, (p0 + i) % w] = v[:, :, i]
    return output, present_key.astype(query.dtype), present_value.astype(query.dtype)
