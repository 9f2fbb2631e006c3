"""LinearAttention as a recurrent GPU kernel (CUDA and MACA): one thread block per
(batch, KV head), one thread per value column, the state in registers.

Thread j of block (b, h) owns column j of that head's state S [dk, dv], dk floats in
registers, and walks the tokens in order (the recurrence is serial in T; the parallelism is
B * H_kv blocks x dv threads):
    the block loads k_t, exp(g_t) and the `groups` query rows of token t into shared memory
    S[:, j] <- exp(g_t) * S[:, j]                  (gated rules)
    v'_j = beta_t * (v_tj - S[:, j] . k_t)         (delta rules; else v'_j = v_tj)
    S[:, j] <- S[:, j] + k_t v'_j
    o_t[h*groups + gq, j] = scale * q_t[gq] . S[:, j]   for each query head of this KV head
Every update of column j reads only column j, so threads never exchange state: the only
synchronisation is the shared-memory token load. Loads and stores of v, o and the state are
coalesced (adjacent threads, adjacent columns). The state goes to present_state once, at the
end. Same PrimFunc signature as the CPU kernel (codegen.kernels.linear_attention), so one
lowering call serves both; absent optional inputs are 1-element placeholders never read.
Each phase between barriers is a macro over thread j, so `bind_threads=False` can emit them as
serial loops over the threads (tests/codegen/test_gpu_kernels_serial).
"""

from __future__ import annotations

from tvm.script import tirx as T

from sbc.codegen.kernels.signatures import linear_attention_buffers
from sbc.errors import UnsupportedError

MAX_THREADS = 1024  # CUDA's and MACA's threads per block: dv must fit in one block
MAX_STATE_REGS = 256  # dk floats per thread: beyond that the state spills to local memory


def linear_attention_gpu_kernel(hq: int, hkv: int, dk: int, dv: int, scale: float,
                                decay: str | None, beta: str | None, past: bool,
                                bind_threads: bool = True):
    """PrimFunc(q, k, v, past_state, decay, beta) -> (output, present_state), thread-bound;
    `bind_threads=False`: the same phases as serial loops over the threads, for a CPU build
    that checks the kernel's numerics without a GPU (see spike_matmul_gpu)."""
    nest = recurrent_gpu_nest(hq, hkv, dk, dv, scale, decay, beta, past, bind_threads)

    @T.prim_func(private=True)
    def kernel(q_h: T.handle, k_h: T.handle, v_h: T.handle, s0_h: T.handle, g_h: T.handle,
               beta_h: T.handle, o_h: T.handle, s_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        B, L, q, k, v, s0, g, bt, o, s = linear_attention_buffers(
            (q_h, k_h, v_h, s0_h, g_h, beta_h, o_h, s_h), hq, hkv, dk, dv, decay, beta, past)
        nest(q, k, v, s0, g, bt, o, s, B, L)
    return kernel


def recurrent_gpu_nest(hq: int, hkv: int, dk: int, dv: int, scale: float, decay: str | None,
                       beta: str | None, past: bool, bind_threads: bool = True):
    """T.macro(q, k, v, s0, g, bt, o, s, B, L): the kernel's loop nest over the buffers of its
    PrimFunc (also the short-T branch of linear_attention_chunked_gpu)."""
    if dv > MAX_THREADS or dk > MAX_STATE_REGS:
        raise UnsupportedError(f"the GPU LinearAttention kernel takes dv <= {MAX_THREADS} and "
                               f"dk <= {MAX_STATE_REGS}, got dk={dk}, dv={dv}")
    groups = hq // hkv
    gated, delta = decay is not None, beta is not None
    n_load = (groups + 2) * dk  # shared row: q of every group, then k, then exp(g)
    sc = T.float32(scale)

    def thread_loop(extent):
        return T.thread_binding(extent, thread="threadIdx.x") if bind_threads else T.serial(extent)

    def block_loop(extent):
        return T.thread_binding(extent, thread="blockIdx.x") if bind_threads else T.serial(extent)

    # Thread j's phases. `st`, `acc`, `vt` are its registers at offsets sb, ab, vb: 0 in the
    # GPU kernel, j * size in the serial form (where they are arrays over all threads).
    @T.macro
    def init_state(s0, st, sb, b, h, j):
        for i in T.unroll(dk):
            if past:
                st[sb + i] = s0[b, h, i, j]
            else:
                st[sb + i] = T.float32(0)

    @T.macro
    def load_token(q, k, g, row, b, h, t, j):
        # the token's rows, loaded cooperatively (dv threads stride over them)
        for c in range((n_load + dv - 1) // dv):
            if c * dv + j < groups * dk:
                row[c * dv + j] = q[b, t, h * groups * dk + c * dv + j]
            elif c * dv + j < (groups + 1) * dk:
                row[c * dv + j] = k[b, t, h * dk + c * dv + j - groups * dk]
            elif c * dv + j < n_load:
                if decay == "key":
                    row[c * dv + j] = T.exp(g[b, t, h * dk + c * dv + j - (groups + 1) * dk])
                elif decay == "head":
                    row[c * dv + j] = T.exp(g[b, t, h])
                else:
                    row[c * dv + j] = T.float32(1)

    @T.macro
    def step(v, bt, o, row, st, sb, acc, ab, vt, vb, b, h, t, j):
        if delta:
            vt[vb] = T.float32(0)
            for i in T.unroll(dk):
                if gated:
                    st[sb + i] = st[sb + i] * row[(groups + 1) * dk + i]
                vt[vb] = vt[vb] + row[groups * dk + i] * st[sb + i]
            if beta == "head":
                vt[vb] = bt[b, t, h] * (v[b, t, h * dv + j] - vt[vb])
            else:
                vt[vb] = bt[b, t, 0] * (v[b, t, h * dv + j] - vt[vb])
        else:
            vt[vb] = v[b, t, h * dv + j]
        for gq in T.unroll(groups):
            acc[ab + gq] = T.float32(0)
        for i in T.unroll(dk):
            if gated and not delta:
                st[sb + i] = st[sb + i] * row[(groups + 1) * dk + i] + row[groups * dk + i] * vt[vb]
            else:
                st[sb + i] = st[sb + i] + row[groups * dk + i] * vt[vb]
            for gq in T.unroll(groups):
                acc[ab + gq] = acc[ab + gq] + row[gq * dk + i] * st[sb + i]
        for gq in T.unroll(groups):
            o[b, t, (h * groups + gq) * dv + j] = acc[ab + gq] * sc

    @T.macro
    def store_state(s, st, sb, b, h, j):
        for i in T.unroll(dk):
            s[b, h, i, j] = st[sb + i]

    if bind_threads:
        @T.macro
        def nest(q, k, v, s0, g, bt, o, s, B, L):
            for bh in block_loop(B * hkv):
                row = T.alloc_buffer((n_load,), "float32", scope="shared")
                for j in thread_loop(dv):
                    st = T.alloc_buffer((dk,), "float32", scope="local")
                    acc = T.alloc_buffer((groups,), "float32", scope="local")
                    vt = T.alloc_buffer((1,), "float32", scope="local")
                    init_state(s0, st, 0, bh // hkv, bh % hkv, j)
                    for t in range(L):
                        load_token(q, k, g, row, bh // hkv, bh % hkv, t, j)
                        T.tvm_storage_sync("shared")
                        step(v, bt, o, row, st, 0, acc, 0, vt, 0, bh // hkv, bh % hkv, t, j)
                        T.tvm_storage_sync("shared")  # the row is reused by the next token
                    store_state(s, st, 0, bh // hkv, bh % hkv, j)
        return nest

    @T.macro
    def serial(q, k, v, s0, g, bt, o, s, B, L):
        for bh in block_loop(B * hkv):
            row = T.alloc_buffer((n_load,), "float32")
            st = T.alloc_buffer((dv * dk,), "float32")  # every thread's registers
            acc = T.alloc_buffer((dv * groups,), "float32")
            vt = T.alloc_buffer((dv,), "float32")
            for j in thread_loop(dv):
                init_state(s0, st, j * dk, bh // hkv, bh % hkv, j)
            for t in range(L):
                for j in thread_loop(dv):
                    load_token(q, k, g, row, bh // hkv, bh % hkv, t, j)
                for j in thread_loop(dv):  # after the barrier
                    step(v, bt, o, row, st, j * dk, acc, j * groups, vt, j, bh // hkv, bh % hkv, t, j)
            for j in thread_loop(dv):
                store_state(s, st, j * dk, bh // hkv, bh % hkv, j)
    return serial
