"""LinearAttention as a recurrent TIR kernel: O(T * dk * dv) per head, state kept in place.

One parallel task per (batch, KV head) walks the tokens in order and keeps that head's state
S [dk, dv] (16 KiB for 64 x 64 fp32, resident in L1) in the present_state output buffer:
    S <- exp(g_t) * S                      (gated rules; g per key dim or per head)
    v' = beta_t * (v_t - S^T k_t)          (delta rules; else v' = v_t)
    S <- S + k_t v'^T
    o_t[h] = scale * q_t[h]^T S            for each of the `groups` query heads of this KV head
The same kernel is a full-sequence prefill, one chunk of a streamed prefill (past_state in,
present_state out) and a single-token decode step (T = 1). Absent optional inputs are declared
as 1-element placeholders that the kernel never reads.
"""

from __future__ import annotations

from tvm.script import tirx as T


def linear_attention_kernel(hq: int, hkv: int, dk: int, dv: int, scale: float, decay: str | None,
                            beta: str | None, past: bool):
    """PrimFunc(q, k, v, past_state, decay, beta) -> (output, present_state); decay in
    (None, "head", "key"), beta in (None, "head", "one") as in linear_attention_dims."""
    groups = hq // hkv
    gw = {None: 1, "head": hkv, "key": hkv * dk}[decay]
    bw = {None: 1, "head": hkv, "one": 1}[beta]
    gated, delta = decay is not None, beta is not None

    @T.prim_func(private=True)
    def kernel(q_h: T.handle, k_h: T.handle, v_h: T.handle, s0_h: T.handle, g_h: T.handle,
               beta_h: T.handle, o_h: T.handle, s_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        B = T.int64()
        L = T.int64()
        q = T.match_buffer(q_h, (B, L, hq * dk), "float32")
        k = T.match_buffer(k_h, (B, L, hkv * dk), "float32")
        v = T.match_buffer(v_h, (B, L, hkv * dv), "float32")
        s0 = T.match_buffer(s0_h, (B, hkv, dk, dv) if past else (1,), "float32")
        g = T.match_buffer(g_h, (B, L, gw) if gated else (1,), "float32")
        bt = T.match_buffer(beta_h, (B, L, bw) if delta else (1,), "float32")
        o = T.match_buffer(o_h, (B, L, hq * dv), "float32")
        s = T.match_buffer(s_h, (B, hkv, dk, dv), "float32")
        for bh in T.parallel(B * hkv):
            b = bh // hkv
            h = bh % hkv
            vt = T.alloc_buffer((dv,), "float32", scope="local")
            acc = T.alloc_buffer((dv,), "float32", scope="local")
            for i, j in T.grid(dk, dv):
                if past:
                    s[b, h, i, j] = s0[b, h, i, j]
                else:
                    s[b, h, i, j] = T.float32(0)
            for t in range(L):
                for j in T.vectorized(dv):
                    vt[j] = v[b, t, h * dv + j]
                if delta:
                    if gated:
                        for i in range(dk):
                            for j in T.vectorized(dv):
                                if decay == "key":
                                    s[b, h, i, j] = s[b, h, i, j] * T.exp(g[b, t, h * dk + i])
                                else:
                                    s[b, h, i, j] = s[b, h, i, j] * T.exp(g[b, t, h])
                    for j in T.vectorized(dv):
                        acc[j] = T.float32(0)
                    for i in range(dk):
                        for j in T.vectorized(dv):
                            acc[j] = acc[j] + s[b, h, i, j] * k[b, t, h * dk + i]
                    for j in T.vectorized(dv):
                        if beta == "head":
                            vt[j] = bt[b, t, h] * (vt[j] - acc[j])
                        else:
                            vt[j] = bt[b, t, 0] * (vt[j] - acc[j])
                    for i in range(dk):
                        for j in T.vectorized(dv):
                            s[b, h, i, j] = s[b, h, i, j] + k[b, t, h * dk + i] * vt[j]
                else:  # decay and update in one sweep over the state
                    for i in range(dk):
                        for j in T.vectorized(dv):
                            if decay == "key":
                                s[b, h, i, j] = (s[b, h, i, j] * T.exp(g[b, t, h * dk + i])
                                                 + k[b, t, h * dk + i] * vt[j])
                            elif decay == "head":
                                s[b, h, i, j] = (s[b, h, i, j] * T.exp(g[b, t, h])
                                                 + k[b, t, h * dk + i] * vt[j])
                            else:
                                s[b, h, i, j] = s[b, h, i, j] + k[b, t, h * dk + i] * vt[j]
                for gq in range(groups):
                    for j in T.vectorized(dv):
                        acc[j] = T.float32(0)
                    for i in range(dk):
                        for j in T.vectorized(dv):
                            acc[j] = acc[j] + q[b, t, (h * groups + gq) * dk + i] * s[b, h, i, j]
                    for j in T.vectorized(dv):
                        o[b, t, (h * groups + gq) * dv + j] = acc[j] * T.float32(scale)

    return kernel
