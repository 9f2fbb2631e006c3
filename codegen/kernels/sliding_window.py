"""SlidingWindowAttention as a TIR kernel: O(T * window * D), never a T x T score matrix.

Queries are taken in blocks of QUERIES, one parallel task per (batch, query head, block). The
query at absolute position p = position + t sees the keys at positions max(0, p-window+1) .. p;
the block walks the keys its queries see in tiles of KEYS (flash attention's loop):

    tile  = keys a0 .. a0+KEYS-1, transposed into kt [D, KEYS] and vt [KEYS, Dv] once
            (from the ring buffer, slot a mod window, before `position`; from this chunk after)
    for each query of the block:
        s     = q kt * scale, vectorised over the tile's keys; keys it must not see -> -inf
        m'    = max(m, max s);  l = l e^(m - m') + sum e^(s - m');  o = o e^(m - m') + e^(s - m') vt

so every key is read once per block rather than once per query, the dot products run across
keys in vector lanes, and the softmax is one pass (running max and sum). A second loop writes
the ring buffers: past copied, then the last min(T, window) keys of this chunk put in their
slots. T = 1 with a past window is one decode step; no past and position 0 is a plain prefill.
"""

from __future__ import annotations

from tvm.script import tirx as T

from sbc.codegen.kernels.signatures import sliding_window_buffers

QUERIES = 8  # queries per block: each key tile is read once for all of them
KEYS = 16  # keys per tile: the vector width of the score loop
NEG = -3.0e38  # a score no key gets: the running max before any key


def sliding_window_kernel(hq: int, hkv: int, d: int, dv: int, window: int, scale: float,
                          past: bool, position_shape: tuple | None):
    """PrimFunc(q, k, v, past_key, past_value, position) -> (output, present_key, present_value)."""
    groups = hq // hkv
    w = window
    qb, kb = QUERIES, KEYS
    has_position = position_shape is not None

    @T.prim_func(private=True)
    def kernel(q_h: T.handle, k_h: T.handle, v_h: T.handle, pk_h: T.handle, pv_h: T.handle,
               pos_h: T.handle, o_h: T.handle, nk_h: T.handle, nv_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        B, L, q, k, v, pk, pv, pos, o, nk, nv = sliding_window_buffers(
            (q_h, k_h, v_h, pk_h, pv_h, pos_h, o_h, nk_h, nv_h), hq, hkv, d, dv, window, past,
            position_shape)
        blocks = (L + qb - 1) // qb
        for task in T.parallel(B * hq * blocks):
            b = task // (hq * blocks)
            hh = task // blocks % hq
            h = hh // groups
            t0 = task % blocks * qb
            kt = T.alloc_buffer((d, kb), "float32", scope="local")
            vt = T.alloc_buffer((kb, dv), "float32", scope="local")
            score = T.alloc_buffer((kb,), "float32", scope="local")
            acc = T.alloc_buffer((qb, dv), "float32", scope="local")
            stat = T.alloc_buffer((qb, 2), "float32", scope="local")  # running max, sum
            new = T.alloc_buffer((2,), "float32", scope="local")  # tile max, rescale factor
            p0 = T.int64(0)
            if has_position:
                p0 = pos[(0,) * len(position_shape)]
            rows = T.min(L - t0, T.int64(qb))
            first = T.max(p0 + t0 - w + 1, T.int64(0))  # the first key any query here sees
            last = p0 + t0 + rows - 1  # the last one: the last query's own
            for i in range(qb):
                stat[i, 0] = T.float32(NEG)
                stat[i, 1] = T.float32(0)
                for j in T.vectorized(dv):
                    acc[i, j] = T.float32(0)
            for tile in range((last - first + kb) // kb):
                a0 = first + tile * kb
                for r in range(kb):  # the tile's keys and values (zeros past the last key)
                    a = a0 + r
                    if a > last:
                        for c in range(d):
                            kt[c, r] = T.float32(0)
                        for j in T.vectorized(dv):
                            vt[r, j] = T.float32(0)
                    elif past and a < p0:
                        for c in range(d):
                            kt[c, r] = pk[b, h, a % w, c]
                        for j in T.vectorized(dv):
                            vt[r, j] = pv[b, h, a % w, j]
                    else:
                        for c in range(d):
                            kt[c, r] = k[b, a - p0, h * d + c]
                        for j in T.vectorized(dv):
                            vt[r, j] = v[b, a - p0, h * dv + j]
                for i in range(rows):
                    p = p0 + t0 + i
                    for r in T.vectorized(kb):
                        score[r] = T.float32(0)
                    for c in range(d):
                        for r in T.vectorized(kb):
                            score[r] = score[r] + q[b, t0 + i, hh * d + c] * kt[c, r]
                    for r in T.vectorized(kb):
                        score[r] = T.Select((a0 + r <= p) & (a0 + r > p - w),
                                            score[r] * T.float32(scale), T.float32(NEG))
                    new[0] = stat[i, 0]
                    for r in range(kb):
                        new[0] = T.max(new[0], score[r])
                    new[1] = T.exp(stat[i, 0] - new[0])
                    for r in T.vectorized(kb):  # keys not seen weigh 0 (not e^0 on an empty row)
                        score[r] = T.Select(score[r] > T.float32(NEG), T.exp(score[r] - new[0]),
                                            T.float32(0))
                    stat[i, 1] = stat[i, 1] * new[1]
                    for j in T.vectorized(dv):
                        acc[i, j] = acc[i, j] * new[1]
                    for r in range(kb):
                        stat[i, 1] = stat[i, 1] + score[r]
                        for j in T.vectorized(dv):
                            acc[i, j] = acc[i, j] + score[r] * vt[r, j]
                    stat[i, 0] = new[0]
            for i in range(rows):
                for j in T.vectorized(dv):
                    o[b, t0 + i, hh * dv + j] = acc[i, j] / stat[i, 1]
        for bh in T.parallel(B * hkv):
            b = bh // hkv
            h = bh % hkv
            for slot, i in T.grid(w, d):
                if past:
                    nk[b, h, slot, i] = pk[b, h, slot, i]
                else:
                    nk[b, h, slot, i] = T.float32(0)
            for slot, j in T.grid(w, dv):
                if past:
                    nv[b, h, slot, j] = pv[b, h, slot, j]
                else:
                    nv[b, h, slot, j] = T.float32(0)
            p0 = T.int64(0)
            if has_position:
                p0 = pos[(0,) * len(position_shape)]
            for t in range(T.max(L - w, T.int64(0)), L):
                for i in T.vectorized(d):
                    nk[b, h, (p0 + t) % w, i] = k[b, t, h * d + i]
                for j in T.vectorized(dv):
                    nv[b, h, (p0 + t) % w, j] = v[b, t, h * dv + j]

    return kernel
