"""The buffer signatures of the hand-written kernels: one helper per op, shared by its CPU and
GPU PrimFuncs. Each is called first thing in the PrimFunc's body, e.g.

    B, L, q, k, v, s0, g, bt, o, s = linear_attention_buffers((q_h, ..., s_h), hq, ...)

TVMScript evaluates a call to a Python function while it parses the body, inside the
PrimFunc's builder frame, so each T.match_buffer here lands in the function's buffer map as if
written inline; the assignment then names the vars and buffers (T.match_buffer must run in
the body: the handles are the PrimFunc's parameters)."""

from __future__ import annotations

from tvm.script import tirx as T

from sbc.ir.ops.spike import PANEL


def linear_attention_buffers(handles, hq: int, hkv: int, dk: int, dv: int, decay: str | None,
                             beta: str | None, past: bool):
    """B, L and the buffers q, k, v, past_state, decay, beta, output, present_state over the
    8 handles of a LinearAttention kernel; absent optional inputs (past_state unless `past`,
    decay None, beta None) are 1-element placeholders."""
    q_h, k_h, v_h, s0_h, g_h, beta_h, o_h, s_h = handles
    gw = {None: 1, "head": hkv, "key": hkv * dk}[decay]
    bw = {None: 1, "head": hkv, "one": 1}[beta]
    B = T.int64()
    L = T.int64()
    q = T.match_buffer(q_h, (B, L, hq * dk), "float32")
    k = T.match_buffer(k_h, (B, L, hkv * dk), "float32")
    v = T.match_buffer(v_h, (B, L, hkv * dv), "float32")
    s0 = T.match_buffer(s0_h, (B, hkv, dk, dv) if past else (1,), "float32")
    g = T.match_buffer(g_h, (B, L, gw) if decay is not None else (1,), "float32")
    bt = T.match_buffer(beta_h, (B, L, bw) if beta is not None else (1,), "float32")
    o = T.match_buffer(o_h, (B, L, hq * dv), "float32")
    s = T.match_buffer(s_h, (B, hkv, dk, dv), "float32")
    return B, L, q, k, v, s0, g, bt, o, s


def sliding_window_buffers(handles, hq: int, hkv: int, d: int, dv: int, window: int, past: bool,
                           position_shape: tuple | None):
    """B, L and the buffers q, k, v, past_key, past_value, position, output, present_key,
    present_value over the 9 handles of a SlidingWindowAttention kernel; absent optional
    inputs (the past unless `past`, position_shape None) are 1-element placeholders."""
    q_h, k_h, v_h, pk_h, pv_h, pos_h, o_h, nk_h, nv_h = handles
    w = window
    has_position = position_shape is not None
    B = T.int64()
    L = T.int64()
    q = T.match_buffer(q_h, (B, L, hq * d), "float32")
    k = T.match_buffer(k_h, (B, L, hkv * d), "float32")
    v = T.match_buffer(v_h, (B, L, hkv * dv), "float32")
    pk = T.match_buffer(pk_h, (B, hkv, w, d) if past else (1,), "float32")
    pv = T.match_buffer(pv_h, (B, hkv, w, dv) if past else (1,), "float32")
    pos = T.match_buffer(pos_h, position_shape if has_position else (1,),
                         "int64" if has_position else "float32")
    o = T.match_buffer(o_h, (B, L, hq * dv), "float32")
    nk = T.match_buffer(nk_h, (B, hkv, w, d), "float32")
    nv = T.match_buffer(nv_h, (B, hkv, w, dv), "float32")
    return B, L, q, k, v, pk, pv, pos, o, nk, nv


def spike_matmul_buffers(handles, lead: list, dtype: str, k: int, n: int, group: int,
                         has_bias: bool, float_weights: bool):
    """The buffers counts, scale, W, W_scale, bias, Y over the 6 handles of a SpikeMatMul
    kernel: counts [*lead, k] of `dtype`; W packed [N/16, K/4, 16, 4] int8 with W_scale
    [G, N], or [N/16, K, 16] float32 with a 1-element W_scale; bias [N] or a placeholder."""
    a_h, s_h, w_h, ws_h, b_h, y_h = handles
    panels = n // PANEL
    w_shape = (panels, k, PANEL) if float_weights else (panels, k // 4, PANEL, 4)
    ws_shape = (1,) if float_weights else (-(-k // group), n)
    A = T.match_buffer(a_h, (*lead, k), dtype)
    S = T.match_buffer(s_h, (*lead, 1), "float32")
    W = T.match_buffer(w_h, w_shape, "float32" if float_weights else "int8")
    WS = T.match_buffer(ws_h, ws_shape, "float32")
    B = T.match_buffer(b_h, (n,) if has_bias else (1,), "float32")
    Y = T.match_buffer(y_h, (*lead, n), "float32")
    return A, S, W, WS, B, Y
