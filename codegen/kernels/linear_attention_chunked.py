"""LinearAttention (update rules linear and gated) as a chunked TIR kernel, linear in T.

One parallel task per (batch, KV head) takes the tokens in sub-chunks of SUB = 16 and carries
the state S [dk, dv] (in the present_state output buffer) from each sub-chunk to the next.
With a_t = exp(g_t) (per key dim, per head broadcast over dk, or 1 for linear) and, inside a
sub-chunk that starts with state S0,
    P_t   = prod_{m <= t} a_m                 decay since the sub-chunk start
    E_tj  = prod_{j < m <= t} a_m  (j <= t)   decay from key j to query t
    R_j   = prod_{m > j} a_m                  decay from key j to the sub-chunk end
    o_t   = scale * [ (q_t * P_t)^T S0 + sum_{j <= t} <q_t, k_j * E_tj> v_j ]
    S_end = diag(P_end) S0 + sum_j (k_j * R_j) v_j^T
This is the chunked form of CONTEXT.md with every sub-chunk boundary as the reference point.
Each factor is a product of decays (never exp(-b), never a quotient), so all are <= 1 for
g <= 0 and a strong decay underflows to 0 exactly where the true weight does.

Carrying the state every 16 tokens instead of every 64 is deliberate: the q.S0 term costs
dk*dv per query token whatever the chunk size, while the intra-chunk work grows with it, so on
one CPU core the shortest chunk that still fills a vector is the cheapest stable one.

Per sub-chunk the work is small dense products with register-tile accumulators:
  scores   [groups*16, dk] x [dk, 16] with the keys along the 16 lanes (k_j * E_tj built
           for one query at a time, E_tj = E_(t-1)j * a_t)
  outputs  [q*P | scores] [groups*16, dk+16] x [S0 ; V] [dk+16, dv], 4 x 64 register tiles
  state    diag(P_end) S0 + (k*R)^T V, [dk, 16] x [16, dv]
The T mod 16 tail (and a T = 1 decode) runs linear_attention.recurrent_step in the same
PrimFunc, so one kernel serves any symbolic T, with past_state in and present_state out.

Not the lowering: per token and KV head it does ~(groups+1)*dk*dv + 2*groups*16*dk
multiply-adds against the recurrent kernel's (groups+2)*dk*dv, and both run near the FMA
peak, so on one core the recurrent kernel is ~1.4x faster at the small model's heads (groups 4,
dk = dv = 64) and they tie at the 7B's (groups 7, dk = dv = 128). The chunked kernel wins
(~1.3-1.8x) only where the state outgrows L1 and groups are few (dk = dv = 128, groups 1).
Its sub-chunks are independent work that a T-parallel version could spread over the cores
when B * H_kv is below the core count.
"""

from __future__ import annotations

from tvm.script import tirx as T

from sbc.codegen.kernels.linear_attention import col_tile, fast_exp, prefetch_token, recurrent_step
from sbc.codegen.kernels.signatures import linear_attention_buffers

SUB = 16  # tokens per sub-chunk: the keys of one AVX-512 vector in the scores
ROWS = 4  # register tile height of the output and state products


def _load(hkv, dk, dv, decay):
    """Macro: transposed keys, values, a_t = exp(g_t), the keys decayed to the sub-chunk end
    (k_j * R_j) and P_end, for the sub-chunk starting at token t0."""
    gated = decay is not None

    @T.macro
    def load(k, v, g, b, h, t0, kt, vb, a, ks, pend):
        for t in range(SUB):
            for j in T.vectorized(dv):
                vb[t, j] = v[b, t0 + t, h * dv + j]
            for i in range(dk):
                kt[i, t] = k[b, t0 + t, h * dk + i]
        if gated:
            for t in range(SUB):
                for i in T.vectorized(dk):
                    if decay == "key":
                        a[t, i] = fast_exp(g[b, t0 + t, h * dk + i])
                    else:
                        a[t, i] = fast_exp(g[b, t0 + t, h])
            for i in T.vectorized(dk):
                pend[i] = T.float32(1)
            for tt in range(SUB):  # backwards: pend is R_j, and P_end at the end
                for i in T.vectorized(dk):
                    ks[SUB - 1 - tt, i] = k[b, t0 + SUB - 1 - tt, h * dk + i] * pend[i]
                    pend[i] = pend[i] * a[SUB - 1 - tt, i]

    return load


def _parts(groups: int, dk: int) -> int:
    """Partial sums over dk in the scores so that >= 8 FMA chains are in flight."""
    parts = 1
    while parts * groups < 8 and dk % (2 * parts) == 0:
        parts *= 2
    return parts


def _scores(hq, hkv, dk, dv, decay):
    """Macro: att[gq*SUB + t, j] = <q_t, k_j * E_tj> for j <= t, else 0; meanwhile prefetches
    the next sub-chunk's rows, one token per query (at long T they come from DRAM)."""
    groups = hq // hkv
    parts = _parts(groups, dk)
    prefetch = prefetch_token(hq, hkv, dk, dv, decay)

    @T.macro
    def scores(q, k, v, g, o, b, h, t0, kt, a, w, eh, sacc, att):
        for t in range(SUB):
            prefetch(q, k, v, g, o, b, h, T.min(t0 + SUB + t, q.shape[1] - 1))
            if decay == "key":  # w[i, j] = k_j[i] * E_tj[i]; lanes j >= t restart from k_j
                for i in range(dk):
                    for j in T.vectorized(SUB):
                        w[i, j] = T.Select(j < t, w[i, j] * a[t, i], kt[i, j])
            if decay == "head":  # one E_tj per key
                for j in T.vectorized(SUB):
                    eh[j] = T.Select(j < t, eh[j] * a[t, 0], T.float32(1))
            for p, gq in T.grid(parts, groups):
                for j in T.vectorized(SUB):
                    sacc[p, gq, j] = T.float32(0)
            for ii in range(dk // parts):
                for p in T.unroll(parts):
                    for gq in T.unroll(groups):
                        qi = q[b, t0 + t, (h * groups + gq) * dk + ii * parts + p]
                        for j in T.vectorized(SUB):
                            if decay == "key":
                                sacc[p, gq, j] = sacc[p, gq, j] + qi * w[ii * parts + p, j]
                            else:
                                sacc[p, gq, j] = sacc[p, gq, j] + qi * kt[ii * parts + p, j]
            for p in range(1, parts):
                for gq in T.unroll(groups):
                    for j in T.vectorized(SUB):
                        sacc[0, gq, j] = sacc[0, gq, j] + sacc[p, gq, j]
            for gq in T.unroll(groups):
                for j in T.vectorized(SUB):
                    if decay == "head":
                        att[gq * SUB + t, j] = T.Select(j <= t, sacc[0, gq, j] * eh[j], T.float32(0))
                    else:
                        att[gq * SUB + t, j] = T.Select(j <= t, sacc[0, gq, j], T.float32(0))

    return scores


def _decayed_queries(hq, hkv, dk, decay):
    """Macro: qs[gq*SUB + t] = q_t * P_t (P_t replaces a_t in `a`)."""
    groups = hq // hkv
    gated = decay is not None

    @T.macro
    def decayed_queries(q, b, h, t0, a, qs):
        if gated:
            for t in range(1, SUB):
                for i in T.vectorized(dk):
                    a[t, i] = a[t, i] * a[t - 1, i]
        for gq, t in T.grid(groups, SUB):
            for i in T.vectorized(dk):
                if gated:
                    qs[gq * SUB + t, i] = q[b, t0 + t, (h * groups + gq) * dk + i] * a[t, i]
                else:
                    qs[gq * SUB + t, i] = q[b, t0 + t, (h * groups + gq) * dk + i]

    return decayed_queries


def _outputs(hq, hkv, dk, dv, scale):
    """Macro: o rows of the sub-chunk = scale * (qs S0 + att V), ROWS x cv register tiles;
    a tile of queries t..t+3 needs keys 0..t+3 only (att is lower triangular)."""
    groups = hq // hkv
    cv = col_tile(dv, ROWS)
    sc = T.float32(scale)

    @T.macro
    def outputs(o, s, b, h, t0, qs, att, vb, acc):
        for rt, cb in T.grid(groups * SUB // ROWS, dv // cv):
            for r in T.unroll(ROWS):
                for j in T.vectorized(cv):
                    acc[r, j] = T.float32(0)
            for i in range(dk):
                for r in T.unroll(ROWS):
                    for j in T.vectorized(cv):
                        acc[r, j] = acc[r, j] + qs[rt * ROWS + r, i] * s[b, h, i, cb * cv + j]
            for jj in range(rt * ROWS % SUB + ROWS):
                for r in T.unroll(ROWS):
                    for j in T.vectorized(cv):
                        acc[r, j] = acc[r, j] + att[rt * ROWS + r, jj] * vb[jj, cb * cv + j]
            for r in T.unroll(ROWS):
                row = rt * ROWS + r  # query head gq = row // SUB, token t = row % SUB
                for j in T.vectorized(cv):
                    o[b, t0 + row % SUB, (h * groups + row // SUB) * dv + cb * cv + j] = acc[r, j] * sc

    return outputs


def _state(dk, dv, decay):
    """Macro: S <- diag(P_end) S + (k * R)^T V (linear: S + K^T V)."""
    gated = decay is not None
    srows = ROWS if dk % ROWS == 0 else 1
    cv = col_tile(dv, ROWS)

    @T.macro
    def state(s, b, h, kt, ks, vb, pend, acc):
        for it, cb in T.grid(dk // srows, dv // cv):
            for r in T.unroll(srows):
                for j in T.vectorized(cv):
                    if gated:
                        acc[r, j] = s[b, h, it * srows + r, cb * cv + j] * pend[it * srows + r]
                    else:
                        acc[r, j] = s[b, h, it * srows + r, cb * cv + j]
            for jj in range(SUB):
                for r in T.unroll(srows):
                    for j in T.vectorized(cv):
                        if gated:
                            acc[r, j] = acc[r, j] + ks[jj, it * srows + r] * vb[jj, cb * cv + j]
                        else:
                            acc[r, j] = acc[r, j] + kt[it * srows + r, jj] * vb[jj, cb * cv + j]
            for r in T.unroll(srows):
                for j in T.vectorized(cv):
                    s[b, h, it * srows + r, cb * cv + j] = acc[r, j]

    return state


def linear_attention_chunked_kernel(hq: int, hkv: int, dk: int, dv: int, scale: float,
                                    decay: str | None, past: bool):
    """PrimFunc(q, k, v, past_state, decay, beta) -> (output, present_state), the signature of
    linear_attention_kernel, for update rules linear (decay None) and gated (decay "head" or
    "key"); beta is an unused placeholder."""
    groups = hq // hkv
    rows = groups * SUB
    load, scores = _load(hkv, dk, dv, decay), _scores(hq, hkv, dk, dv, decay)
    decayed_queries, outputs = _decayed_queries(hq, hkv, dk, decay), _outputs(hq, hkv, dk, dv, scale)
    state, step = _state(dk, dv, decay), recurrent_step(hq, hkv, dk, dv, scale, decay, None)
    cv, cs, parts = col_tile(dv, ROWS), col_tile(dv, groups), _parts(groups, dk)

    @T.prim_func(private=True)
    def kernel(q_h: T.handle, k_h: T.handle, v_h: T.handle, s0_h: T.handle, g_h: T.handle,
               beta_h: T.handle, o_h: T.handle, s_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        B, L, q, k, v, s0, g, bt, o, s = linear_attention_buffers(
            (q_h, k_h, v_h, s0_h, g_h, beta_h, o_h, s_h), hq, hkv, dk, dv, decay, None, past)
        for bh in T.parallel(B * hkv):
            b = bh // hkv
            h = bh % hkv
            # per-task scratch (~60 KiB for the small model's heads): the sub-chunk's operands
            qs = T.alloc_buffer((rows, dk), "float32")
            kt = T.alloc_buffer((dk, SUB), "float32")
            ks = T.alloc_buffer((SUB, dk), "float32")
            vb = T.alloc_buffer((SUB, dv), "float32")
            a = T.alloc_buffer((SUB, dk), "float32")
            w = T.alloc_buffer((dk, SUB), "float32")
            att = T.alloc_buffer((rows, SUB), "float32")
            pend = T.alloc_buffer((dk,), "float32")
            eh = T.alloc_buffer((SUB,), "float32", scope="local")
            acc = T.alloc_buffer((ROWS, cv), "float32", scope="local")
            sacc = T.alloc_buffer((parts, groups, SUB), "float32", scope="local")
            racc = T.alloc_buffer((groups, cs), "float32", scope="local")
            for i in range(dk):
                for j in T.vectorized(dv):
                    if past:
                        s[b, h, i, j] = s0[b, h, i, j]
                    else:
                        s[b, h, i, j] = T.float32(0)
            for c in range(L // SUB):
                load(k, v, g, b, h, c * SUB, kt, vb, a, ks, pend)
                scores(q, k, v, g, o, b, h, c * SUB, kt, a, w, eh, sacc, att)
                decayed_queries(q, b, h, c * SUB, a, qs)
                outputs(o, s, b, h, c * SUB, qs, att, vb, acc)
                state(s, b, h, kt, ks, vb, pend, acc)
            for t in range(L // SUB * SUB, L):
                step(q, k, v, g, g, o, s, b, h, t, pend, vb, racc)

    return kernel
