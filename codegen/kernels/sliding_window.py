"""SlidingWindowAttention as a TIR kernel: O(T * window * D), never a T x T score matrix.

One parallel task per (batch, query head) walks its queries; the query at absolute position
p = position + t scores the keys at positions max(0, p-window+1) .. p, reading those before
`position` from the ring buffer (slot a mod window) and the rest from this chunk, and takes a
two-pass softmax over them (scores in a local buffer of `window` floats). A second loop writes
the ring buffers: past copied, then the last min(T, window) keys of this chunk put in their
slots. T = 1 with a past window is one decode step; no past and position 0 is a plain prefill.
"""

from __future__ import annotations

from tvm.script import tirx as T

from sbc.codegen.kernels.signatures import sliding_window_buffers

LANES = 8  # dot products accumulate in 8 partial sums so LLVM can use vector FMAs


def sliding_window_kernel(hq: int, hkv: int, d: int, dv: int, window: int, scale: float,
                          past: bool, position_shape: tuple | None):
    """PrimFunc(q, k, v, past_key, past_value, position) -> (output, present_key, present_value)."""
    groups = hq // hkv
    lanes = LANES if d % LANES == 0 else 1
    w = window
    has_position = position_shape is not None

    @T.prim_func(private=True)
    def kernel(q_h: T.handle, k_h: T.handle, v_h: T.handle, pk_h: T.handle, pv_h: T.handle,
               pos_h: T.handle, o_h: T.handle, nk_h: T.handle, nv_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        B, L, q, k, v, pk, pv, pos, o, nk, nv = sliding_window_buffers(
            (q_h, k_h, v_h, pk_h, pv_h, pos_h, o_h, nk_h, nv_h), hq, hkv, d, dv, window, past,
            position_shape)
        for bq in T.parallel(B * hq):
            b = bq // hq
            hh = bq % hq
            h = hh // groups
            score = T.alloc_buffer((w,), "float32", scope="local")
            part = T.alloc_buffer((lanes,), "float32", scope="local")
            acc = T.alloc_buffer((dv,), "float32", scope="local")
            stat = T.alloc_buffer((2,), "float32", scope="local")  # running max, sum
            for t in range(L):
                p0 = T.int64(0)
                if has_position:
                    p0 = pos[(0,) * len(position_shape)]
                p = p0 + t
                lo = T.max(p - w + 1, T.int64(0))
                stat[0] = T.float32(-3.0e38)
                # keys before this chunk: ring-buffer slots; then this chunk's own keys
                if past:
                    for a in range(lo, T.min(p0, p + 1)):
                        for r in T.vectorized(lanes):
                            part[r] = T.float32(0)
                        for io, r in T.grid(d // lanes, lanes):
                            part[r] = part[r] + q[b, t, hh * d + io * lanes + r] * pk[b, h, a % w, io * lanes + r]
                        score[a - lo] = T.float32(0)
                        for r in range(lanes):
                            score[a - lo] = score[a - lo] + part[r]
                        score[a - lo] = score[a - lo] * T.float32(scale)
                        stat[0] = T.max(stat[0], score[a - lo])
                for a in range(T.max(lo, p0), p + 1):
                    for r in T.vectorized(lanes):
                        part[r] = T.float32(0)
                    for io, r in T.grid(d // lanes, lanes):
                        part[r] = part[r] + q[b, t, hh * d + io * lanes + r] * k[b, a - p0, h * d + io * lanes + r]
                    score[a - lo] = T.float32(0)
                    for r in range(lanes):
                        score[a - lo] = score[a - lo] + part[r]
                    score[a - lo] = score[a - lo] * T.float32(scale)
                    stat[0] = T.max(stat[0], score[a - lo])
                stat[1] = T.float32(0)
                for j in T.vectorized(dv):
                    acc[j] = T.float32(0)
                if past:
                    for a in range(lo, T.min(p0, p + 1)):
                        score[a - lo] = T.exp(score[a - lo] - stat[0])
                        stat[1] = stat[1] + score[a - lo]
                        for j in T.vectorized(dv):
                            acc[j] = acc[j] + score[a - lo] * pv[b, h, a % w, j]
                for a in range(T.max(lo, p0), p + 1):
                    score[a - lo] = T.exp(score[a - lo] - stat[0])
                    stat[1] = stat[1] + score[a - lo]
                    for j in T.vectorized(dv):
                        acc[j] = acc[j] + score[a - lo] * v[b, a - p0, h * dv + j]
                for j in T.vectorized(dv):
                    o[b, t, hh * dv + j] = acc[j] / stat[1]
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
