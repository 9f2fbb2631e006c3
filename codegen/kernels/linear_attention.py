"""LinearAttention as a recurrent TIR kernel: O(T * dk * dv) per head, state kept in place.

One parallel task per (batch, KV head) walks the tokens in order and keeps that head's state
S [dk, dv] (16 KiB for 64 x 64 fp32, resident in L1) in the present_state output buffer:
    S <- exp(g_t) * S                      (gated rules; g per key dim or per head)
    v' = beta_t * (v_t - S^T k_t)          (delta rules; else v' = v_t)
    S <- S + k_t v'^T
    o_t[h] = scale * q_t[h]^T S            for each of the `groups` query heads of this KV head
One sweep over the rows of S both updates a row and feeds it to all `groups` query heads at
once (groups x dv accumulators in registers, so the FMA chains are independent), and exp(g_t)
is one vector polynomial per token (T.exp would be one libm call per lane); the rows of the
token PREFETCH steps ahead are prefetched, since at long T they come from DRAM. The kernel is
a full-sequence prefill, one chunk of a streamed prefill (past_state in, present_state out) and
a single-token decode step (T = 1). Absent optional inputs are declared as 1-element
placeholders that the kernel never reads.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from sbc.codegen.kernels.signatures import linear_attention_buffers


def fast_exp(x):
    """exp of a float32 (vector) expression: Cephes range reduction and a degree-6 polynomial
    (~1e-7 relative); clamped to [-87.3, 88.3], so it returns ~1e-38 where expf underflows."""
    f32 = lambda c: tirx.const(c, "float32")  # noqa: E731
    x = tirx.max(tirx.min(x, f32(88.3)), f32(-87.3))
    n = tirx.floor(x * f32(1.44269504088896341) + f32(0.5))
    r = x - n * f32(0.693359375) + n * f32(2.12194440e-4)  # x - n ln2, ln2 in two parts
    p = f32(1.9875691500e-4)
    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = p * r + f32(c)
    p = p * r * r + r + f32(1.0)
    return p * tirx.reinterpret("float32", tirx.shift_left(tirx.Cast("int32", n) + 127, 23))


def col_tile(dv: int, rows: int) -> int:
    """Columns of a rows x cols accumulator tile that fits 16 AVX-512 registers."""
    for c in (64, 48, 32, 16):
        if dv % c == 0 and rows * c <= 256:
            return c
    return dv


PREFETCH = 8  # tokens ahead: at long T the inputs come from DRAM (~1.6x at T = 16k)


def _prefetch(element, write: bool = False):
    """llvm.prefetch of the cache line holding `element` (a buffer load), to L1."""
    return T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(element), T.int32(int(write)),
                              T.int32(3), T.int32(1))


def prefetch_token(hq: int, hkv: int, dk: int, dv: int, decay: str | None):
    """T.macro(q, k, v, g, o, b, h, t): prefetch the rows of token t that the task of KV head
    h reads (q, k, v, g) and writes (o); t must be a valid token."""
    groups = hq // hkv
    lines = lambda n: (n + 15) // 16  # noqa: E731  (16 floats per 64-byte line)

    @T.macro
    def prefetch(q, k, v, g, o, b, h, t):
        for c in range(lines(groups * dk)):
            T.evaluate(_prefetch(q[b, t, h * groups * dk + c * 16]))
        for c in range(lines(groups * dv)):
            T.evaluate(_prefetch(o[b, t, h * groups * dv + c * 16], write=True))
        for c in range(lines(dk)):
            T.evaluate(_prefetch(k[b, t, h * dk + c * 16]))
            if decay == "key":
                T.evaluate(_prefetch(g[b, t, h * dk + c * 16]))
        for c in range(lines(dv)):
            T.evaluate(_prefetch(v[b, t, h * dv + c * 16]))

    return prefetch


def recurrent_step(hq: int, hkv: int, dk: int, dv: int, scale: float, decay: str | None,
                   beta: str | None):
    """T.macro(q, k, v, g, bt, o, s, b, h, t, ea, vt, acc): token t of (batch b, KV head h),
    state s updated in place, o[b, t] written. Scratch: ea [dk] (exp of the decay), vt [dv]
    (v' of the delta rules), acc [groups, col_tile(dv, groups)]."""
    groups = hq // hkv
    cs = col_tile(dv, groups)
    gated, delta = decay is not None, beta is not None
    sc = T.float32(scale)
    prefetch = prefetch_token(hq, hkv, dk, dv, decay)

    @T.macro
    def step(q, k, v, g, bt, o, s, b, h, t, ea, vt, acc):
        prefetch(q, k, v, g, o, b, h, T.min(t + PREFETCH, q.shape[1] - 1))
        if decay == "key":
            for i in T.vectorized(dk):
                ea[i] = fast_exp(g[b, t, h * dk + i])
        if decay == "head":
            for i in T.vectorized(dk):
                ea[i] = fast_exp(g[b, t, h])
        if delta:  # v' = beta (v - (exp(g) S)^T k), decaying S on the way
            for j in T.vectorized(dv):
                vt[j] = T.float32(0)
            for i in range(dk):
                for j in T.vectorized(dv):
                    if gated:
                        s[b, h, i, j] = s[b, h, i, j] * ea[i]
                    vt[j] = vt[j] + k[b, t, h * dk + i] * s[b, h, i, j]
            for j in T.vectorized(dv):
                if beta == "head":
                    vt[j] = bt[b, t, h] * (v[b, t, h * dv + j] - vt[j])
                else:
                    vt[j] = bt[b, t, 0] * (v[b, t, h * dv + j] - vt[j])
        for cb in range(dv // cs):
            c0 = cb * cs  # this column block of S, v and o
            for gq in T.unroll(groups):
                for j in T.vectorized(cs):
                    acc[gq, j] = T.float32(0)
            for i in range(dk):
                ki = k[b, t, h * dk + i]
                for j in T.vectorized(cs):
                    if delta:
                        s[b, h, i, c0 + j] = s[b, h, i, c0 + j] + ki * vt[c0 + j]
                    elif gated:
                        s[b, h, i, c0 + j] = s[b, h, i, c0 + j] * ea[i] + ki * v[b, t, h * dv + c0 + j]
                    else:
                        s[b, h, i, c0 + j] = s[b, h, i, c0 + j] + ki * v[b, t, h * dv + c0 + j]
                for gq in T.unroll(groups):
                    qi = q[b, t, (h * groups + gq) * dk + i]
                    for j in T.vectorized(cs):
                        acc[gq, j] = acc[gq, j] + qi * s[b, h, i, c0 + j]
            for gq in T.unroll(groups):
                for j in T.vectorized(cs):
                    o[b, t, (h * groups + gq) * dv + c0 + j] = acc[gq, j] * sc

    return step


def linear_attention_kernel(hq: int, hkv: int, dk: int, dv: int, scale: float, decay: str | None,
                            beta: str | None, past: bool):
    """PrimFunc(q, k, v, past_state, decay, beta) -> (output, present_state); decay in
    (None, "head", "key"), beta in (None, "head", "one") as in linear_attention_dims."""
    groups = hq // hkv
    step = recurrent_step(hq, hkv, dk, dv, scale, decay, beta)
    cs = col_tile(dv, groups)

    @T.prim_func(private=True)
    def kernel(q_h: T.handle, k_h: T.handle, v_h: T.handle, s0_h: T.handle, g_h: T.handle,
               beta_h: T.handle, o_h: T.handle, s_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        B, L, q, k, v, s0, g, bt, o, s = linear_attention_buffers(
            (q_h, k_h, v_h, s0_h, g_h, beta_h, o_h, s_h), hq, hkv, dk, dv, decay, beta, past)
        for bh in T.parallel(B * hkv):
            b = bh // hkv
            h = bh % hkv
            ea = T.alloc_buffer((dk,), "float32", scope="local")
            vt = T.alloc_buffer((dv,), "float32", scope="local")
            acc = T.alloc_buffer((groups, cs), "float32", scope="local")
            for i in range(dk):
                for j in T.vectorized(dv):
                    if past:
                        s[b, h, i, j] = s0[b, h, i, j]
                    else:
                        s[b, h, i, j] = T.float32(0)
            for t in range(L):
                step(q, k, v, g, bt, o, s, b, h, t, ea, vt, acc)

    return kernel
