"""SlidingWindowAttention as GPU kernels (CUDA and MACA): O(T * window * D), thread-bound.

Kernel 1, one thread block of THREADS threads per (batch, token, query head): the query at
absolute position p = position + t attends to keys max(0, p-window+1) .. p, those before
`position` read from the ring buffer (slot a mod window), the rest from this chunk.
    q is staged in shared memory; thread r scores keys lo + r, lo + r + THREADS, ... into a
    shared score row of `window` floats and keeps its running max; a tree reduction in
    shared memory gives the row max, exp and a second tree reduction the sum; then thread r
    computes output columns r, r + THREADS, ... as sum_a score_a * v_a / sum.
Kernel 2, one block per (batch, KV head, slot), threads over the head dim: the new ring
buffer slot holds the last key of this chunk that maps to it, else the old slot (or zero).
Every element is written exactly once, so the kernel needs no synchronisation. Same
signature as the CPU kernel (codegen.kernels.sliding_window). The phases between barriers are
macros over the thread, so `bind_threads=False` emits them as serial loops over the threads
(tests/codegen/test_gpu_kernels_serial).
"""

from __future__ import annotations

from tvm.script import tirx as T

from sbc.codegen.kernels.signatures import sliding_window_buffers
from sbc.errors import UnsupportedError

THREADS = 128  # per block of kernel 1: a power of two (the tree reductions halve it)
MAX_SHARED = 48 * 1024  # bytes of static shared memory a CUDA block may declare


def _log2(n: int) -> int:
    return n.bit_length() - 1


def _pad(n: int) -> int:
    return -(-n // THREADS) * THREADS


def sliding_window_gpu_kernel(hq: int, hkv: int, d: int, dv: int, window: int, scale: float,
                              past: bool, position_shape: tuple | None, bind_threads: bool = True):
    """PrimFunc(q, k, v, past_key, past_value, position) -> (output, present_key, present_value);
    `bind_threads=False`: the same phases as serial loops over the threads (one loop per phase
    between barriers), for a CPU build that checks the numerics without a GPU."""
    wp, dp = _pad(window), _pad(d)  # shared rows padded to whole THREADS-wide chunks
    shared = 4 * (wp + dp + THREADS)
    if shared > MAX_SHARED:
        raise UnsupportedError(f"the GPU SlidingWindowAttention kernel keeps a score row of the "
                               f"window in shared memory: window {window} needs {shared} bytes, "
                               f"more than {MAX_SHARED}")
    groups = hq // hkv
    w = window
    has_position = position_shape is not None
    steps = _log2(THREADS)
    sc = T.float32(scale)

    def thread_loop(extent):
        return T.thread_binding(extent, thread="threadIdx.x") if bind_threads else T.serial(extent)

    def block_loop(extent):
        return T.thread_binding(extent, thread="blockIdx.x") if bind_threads else T.serial(extent)

    # Kernel 1's phases for thread r of the block of (batch b, token t, query head hh): the
    # query's absolute position p, its first key lo and key count n come in; `part` is the
    # thread's 2 registers at offset pb (0 on the GPU, 2 r in the serial form).
    @T.macro
    def load_query(q, qs, b, t, hh, r):
        # shared stores are unconditional (the rows are padded): TVM's sync planner
        # cannot place a barrier inside a condition
        for c in range(T.int64(dp // THREADS)):
            qs[c * THREADS + r] = T.if_then_else(
                c * THREADS + r < d, q[b, t, hh * d + T.min(c * THREADS + r, T.int64(d - 1))],
                T.float32(0))

    @T.macro
    def score_keys(k, pk, qs, score, red, part, pb, b, h, p0, lo, n, r):
        part[pb + 1] = T.float32(-3.0e38)
        for c in range(T.int64(wp // THREADS)):
            part[pb] = T.float32(0)
            if c * THREADS + r < n:
                for i in range(T.int64(d)):
                    if past:
                        part[pb] = part[pb] + qs[i] * T.if_then_else(
                            lo + c * THREADS + r < p0,
                            pk[b, h, T.floormod(lo + c * THREADS + r, w), i],
                            k[b, T.max(lo + c * THREADS + r - p0, T.int64(0)), h * d + i])
                    else:
                        part[pb] = part[pb] + qs[i] * k[b, lo + c * THREADS + r - p0, h * d + i]
            score[c * THREADS + r] = T.if_then_else(c * THREADS + r < n, part[pb] * sc,
                                                    T.float32(-3.0e38))
            part[pb + 1] = T.max(part[pb + 1], score[c * THREADS + r])
        red[r] = part[pb + 1]

    @T.macro
    def tree_step(red, s, r, combine):
        # step s of a tree reduction: THREADS / 2^(s+1) active threads
        if r < T.shift_right(T.int64(THREADS), s + 1):
            if combine == "max":
                red[r] = T.max(red[r], red[r + T.shift_right(T.int64(THREADS), s + 1)])
            else:
                red[r] = red[r] + red[r + T.shift_right(T.int64(THREADS), s + 1)]

    @T.macro
    def exp_scores(score, red, part, pb, n, r):
        part[pb] = T.float32(0)
        for c in range(T.int64(wp // THREADS)):
            score[c * THREADS + r] = T.if_then_else(
                c * THREADS + r < n, T.exp(score[c * THREADS + r] - part[pb + 1]), T.float32(0))
            part[pb] = part[pb] + score[c * THREADS + r]
        red[r] = part[pb]

    @T.macro
    def weighted_values(v, pv, o, score, red, part, pb, b, t, hh, h, p0, lo, n, r):
        for c in range(T.int64((dv + THREADS - 1) // THREADS)):
            if c * THREADS + r < dv:
                part[pb] = T.float32(0)
                for a in range(n):
                    if past:
                        part[pb] = part[pb] + score[a] * T.if_then_else(
                            lo + a < p0, pv[b, h, T.floormod(lo + a, w), c * THREADS + r],
                            v[b, T.max(lo + a - p0, T.int64(0)), h * dv + c * THREADS + r])
                    else:
                        part[pb] = part[pb] + score[a] * v[b, lo + a - p0, h * dv + c * THREADS + r]
                o[b, t, hh * dv + c * THREADS + r] = part[pb] / red[0]

    @T.macro
    def update_slot(k, v, pk, pv, nk, nv, b, h, slot, src, x):
        for c in range(T.int64((max(d, dv) + THREADS - 1) // THREADS)):
            if c * THREADS + x < d:
                if src >= 0:
                    nk[b, h, slot, c * THREADS + x] = k[b, src, h * d + c * THREADS + x]
                elif past:
                    nk[b, h, slot, c * THREADS + x] = pk[b, h, slot, c * THREADS + x]
                else:
                    nk[b, h, slot, c * THREADS + x] = T.float32(0)
            if c * THREADS + x < dv:
                if src >= 0:
                    nv[b, h, slot, c * THREADS + x] = v[b, src, h * dv + c * THREADS + x]
                elif past:
                    nv[b, h, slot, c * THREADS + x] = pv[b, h, slot, c * THREADS + x]
                else:
                    nv[b, h, slot, c * THREADS + x] = T.float32(0)

    if bind_threads:
        @T.prim_func(private=True)
        def kernel(q_h: T.handle, k_h: T.handle, v_h: T.handle, pk_h: T.handle, pv_h: T.handle,
                   pos_h: T.handle, o_h: T.handle, nk_h: T.handle, nv_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            B, L, q, k, v, pk, pv, pos, o, nk, nv = sliding_window_buffers(
                (q_h, k_h, v_h, pk_h, pv_h, pos_h, o_h, nk_h, nv_h), hq, hkv, d, dv, window, past,
                position_shape)
            for blk in block_loop(B * L * hq):
                qs = T.alloc_buffer((dp,), "float32", scope="shared")
                score = T.alloc_buffer((wp,), "float32", scope="shared")
                red = T.alloc_buffer((THREADS,), "float32", scope="shared")
                for r in thread_loop(T.int64(THREADS)):
                    b = blk // (L * hq)
                    t = blk // hq % L
                    hh = blk % hq
                    h = hh // groups
                    part = T.alloc_buffer((2,), "float32", scope="local")  # dot / running max
                    p0 = T.int64(0)
                    if has_position:
                        p0 = pos[(0,) * len(position_shape)]
                    lo = T.max(p0 + t - w + 1, T.int64(0))
                    n = p0 + t - lo + 1  # keys this query sees
                    load_query(q, qs, b, t, hh, r)
                    T.tvm_storage_sync("shared")
                    score_keys(k, pk, qs, score, red, part, 0, b, h, p0, lo, n, r)
                    T.tvm_storage_sync("shared")
                    for s in range(T.int64(steps)):
                        tree_step(red, s, r, "max")
                        T.tvm_storage_sync("shared")
                    part[1] = red[0]
                    T.tvm_storage_sync("shared")  # everyone has the max before red is reused
                    exp_scores(score, red, part, 0, n, r)
                    T.tvm_storage_sync("shared")
                    for s in range(T.int64(steps)):
                        tree_step(red, s, r, "sum")
                        T.tvm_storage_sync("shared")
                    weighted_values(v, pv, o, score, red, part, 0, b, t, hh, h, p0, lo, n, r)
            for slot_blk in block_loop(B * hkv * w):
                for x in thread_loop(T.int64(THREADS)):
                    p0 = T.int64(0)
                    if has_position:
                        p0 = pos[(0,) * len(position_shape)]
                    # the newest position <= last in this slot; from this chunk if it is in it
                    update_slot(k, v, pk, pv, nk, nv, slot_blk // (hkv * w), slot_blk // w % hkv,
                                slot_blk % w, p0 + L - 1 - T.floormod(p0 + L - 1 - slot_blk % w, w) - p0, x)
        return kernel

    @T.prim_func(private=True)
    def serial(q_h: T.handle, k_h: T.handle, v_h: T.handle, pk_h: T.handle, pv_h: T.handle,
               pos_h: T.handle, o_h: T.handle, nk_h: T.handle, nv_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        B, L, q, k, v, pk, pv, pos, o, nk, nv = sliding_window_buffers(
            (q_h, k_h, v_h, pk_h, pv_h, pos_h, o_h, nk_h, nv_h), hq, hkv, d, dv, window, past,
            position_shape)
        for blk in block_loop(B * L * hq):
            qs = T.alloc_buffer((dp,), "float32")
            score = T.alloc_buffer((wp,), "float32")
            red = T.alloc_buffer((THREADS,), "float32")
            part = T.alloc_buffer((2 * THREADS,), "float32")  # every thread's registers
            b = blk // (L * hq)
            t = blk // hq % L
            hh = blk % hq
            h = hh // groups
            p0 = T.int64(0)
            if has_position:
                p0 = pos[(0,) * len(position_shape)]
            lo = T.max(p0 + t - w + 1, T.int64(0))
            n = p0 + t - lo + 1
            for r in thread_loop(T.int64(THREADS)):
                load_query(q, qs, b, t, hh, r)
            for r in thread_loop(T.int64(THREADS)):
                score_keys(k, pk, qs, score, red, part, 2 * r, b, h, p0, lo, n, r)
            for s in range(T.int64(steps)):
                for r in thread_loop(T.int64(THREADS)):
                    tree_step(red, s, r, "max")
            for r in thread_loop(T.int64(THREADS)):
                part[2 * r + 1] = red[0]
            for r in thread_loop(T.int64(THREADS)):
                exp_scores(score, red, part, 2 * r, n, r)
            for s in range(T.int64(steps)):
                for r in thread_loop(T.int64(THREADS)):
                    tree_step(red, s, r, "sum")
            for r in thread_loop(T.int64(THREADS)):
                weighted_values(v, pv, o, score, red, part, 2 * r, b, t, hh, h, p0, lo, n, r)
        for slot_blk in block_loop(B * hkv * w):
            for x in thread_loop(T.int64(THREADS)):
                p0 = T.int64(0)
                if has_position:
                    p0 = pos[(0,) * len(position_shape)]
                update_slot(k, v, pk, pv, nk, nv, slot_blk // (hkv * w), slot_blk // w % hkv,
                            slot_blk % w, p0 + L - 1 - T.floormod(p0 + L - 1 - slot_blk % w, w) - p0, x)
    return serial
