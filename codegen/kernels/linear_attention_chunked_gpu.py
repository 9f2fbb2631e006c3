"""LinearAttention (rules linear and gated) as a chunk-parallel GPU kernel (CUDA and MACA).

The recurrent GPU kernel (linear_attention_gpu) runs B * H_kv blocks that each walk T in
order: at prefill with B = 1 and 4 KV heads that is 4 blocks on a GPU of 100+ SMs. This kernel
cuts T into chunks of C = 64 tokens and runs three launches from one PrimFunc (each top-level
thread-bound nest is its own device kernel):
 (1) state:  one block per (batch, KV head, chunk): the chunk's own end state
             U_c = sum_j (k_j * e^{b_end - b_j}) v_j^T and its total log decay b_end, with b
             the within-chunk cumulative log decay (per key dim; per head broadcast over dk);
             tokens are staged in batches walked from the chunk's end, so b_end - b_j is a
             running sum carried by the thread of key dim i;
 (2) carry:  one thread per state entry (i, j) of each (batch, KV head) walks the chunks:
             S_0 = past_state (or 0), S_{c+1} = e^{b_end,c} S_c + U_c, writing the incoming
             state S_c over U_c in the workspace and the last one to present_state;
 (3) output: one block per (batch, query head, chunk):
             o_t = scale * [ (q_t e^{b_t})^T S_c + sum_{j <= t} <q_t e^{b_t - b_j}, k_j> v_j ]
             dk is walked in slices staged in shared memory (q, k, b and S_c's rows); the C x C
             scores stay in registers, then go to shared memory for the product with v.
Stability: every exponent is a sum of log decays over a span that ends at or after it starts
(b_end - b_j, b_t - b_j with j <= t, b_t, b_end), so it is <= 0 for log decays g <= 0 and
nothing can overflow, however strong the decay: the intra-chunk weight is one exp per
(query, key, key dim) instead of e^{b_t} * e^{-b_j} (e^{-b_j} overflows at g ~ -2 over 64
tokens). That costs C * dk / 2 exps per query token; sub-chunk reference points would turn
most of them into products of bounded factors (left for a measured GPU run to justify).
Per-head decay has one exp per (query, key).

The workspace, per-chunk states [B, H_kv, ceil(T / C), dk, dv] and decays [.., dk], is a
global buffer allocated inside the PrimFunc with the symbolic T in its extent (TVM turns it
into a device workspace allocation by the host part of the PrimFunc).

Short T: the same PrimFunc serves a whole prefill, a streamed prefill chunk and a 1-token
decode step, and T is symbolic. Below SHORT = 16 tokens the PrimFunc branches (a TIR `if` on
T, evaluated by its host part) to the recurrent kernel's nest: one launch instead of three,
no workspace, and for decode the recurrent kernel's single token step is already the whole
work (dk * dv per head), where the chunked form would stage a mostly empty 64-token chunk.
On MACA the host program that drives the launches (codegen.maca) has no conditional steps
yet, so schedule_gpu builds this kernel there with short = 0: chunked at every T, also
correct at T = 1 (one chunk, rows past T masked), at three launches per decode step.

Sizes come from the target's limits (spike_matmul_gpu.GpuLimits, rebuilt per target by
schedule_gpu.specialise_for): 256 threads (whole warps/waves), C = 64, and the largest dk
slice and token batches whose staging fits the shared memory per block. At dk = dv = 128
(gated per key dim): CUDA (48 KiB) slices of 16 key dims, state batches of 32 tokens, value
batches of 16 (32 KiB in launch 1, 45 KiB in launch 3); MACA (64 KiB) slices of 32, state
batches of 64, value batches of 8 (64 KiB, 61 KiB). Registers: dk * dv / 256
state accumulators in (1), 64 * 64 / 256 scores + 64 * dv / 256 outputs in (3), at most
MAX_ACC each (dk * dv <= 16384 and dv <= 256 at 256 threads; larger heads stay recurrent).

`bind_threads=False` emits the same phases as serial loops over the threads (one loop per
phase between barriers, registers as arrays indexed by thread, shared memory as ordinary
buffers) for a CPU build that checks the numerics (tests/codegen/test_gpu_kernels_serial).
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.script import tirx as T

from sbc.codegen.kernels.linear_attention_gpu import recurrent_gpu_nest
from sbc.codegen.kernels.signatures import linear_attention_buffers
from sbc.codegen.kernels.spike_matmul_gpu import MAX_BLOCK_THREADS, PORTABLE, GpuLimits
from sbc.errors import UnsupportedError

CHUNK = 64  # tokens per chunk: C x C scores in registers of 256 threads (16 each)
SHORT = 16  # below this many tokens the recurrent nest runs (decode, short chunks)
MAX_ACC = 64  # accumulators per thread and kind: beyond that they spill to local memory
SIZES = (64, 32, 16, 8, 4, 2, 1)  # candidate dk slices and token batches


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class ChunkPlan:
    chunk: int
    threads: int
    key_slice: int  # key dims staged per step of the output phase
    state_batch: int  # tokens staged per step of the state phase
    value_batch: int  # tokens of v staged per step of the output phase

    def state_floats(self, dk: int, dv: int) -> int:
        """Shared floats of the state phase: decayed keys [batch, dk], values [batch, dv]."""
        return self.state_batch * (dk + dv)

    def output_buffers(self, dv: int, decay: str | None) -> dict[str, int]:
        """Floats of each shared buffer of the output phase: q, k (later e^b q) and b slices
        [C, slice + 1], S_c's slice [slice, dv], the scores [C, C + 1], v [batch, dv] and the
        per-head b [C]; a buffer a decay kind does not use has one float."""
        c, s = self.chunk, self.key_slice
        return {"q": c * (s + 1), "k": c * (s + 1), "b": c * (s + 1) if decay == "key" else 1,
                "S": s * dv, "A": c * (c + 1), "v": self.value_batch * dv,
                "bh": c if decay == "head" else 1}

    def output_floats(self, dv: int, decay: str | None) -> int:
        return sum(self.output_buffers(dv, decay).values())


def chunked_supported(dk: int, dv: int, decay: str | None, limits: GpuLimits = PORTABLE) -> bool:
    try:
        choose_plan(limits, dk, dv, decay)
        return True
    except UnsupportedError:
        return False


def choose_plan(limits: GpuLimits, dk: int, dv: int, decay: str | None) -> ChunkPlan:
    """Whole warps of threads (at most MAX_BLOCK_THREADS), then the largest state batch, dk
    slice and value batch (in that order of preference) whose shared buffers fit."""
    threads = min(MAX_BLOCK_THREADS, limits.max_threads) // limits.warp_size * limits.warp_size
    if threads == 0 or _cdiv(dk * dv, threads) > MAX_ACC or _cdiv(CHUNK * dv, threads) > MAX_ACC:
        raise UnsupportedError(f"the chunked GPU LinearAttention kernel keeps dk * dv / threads and "
                               f"{CHUNK} * dv / threads accumulators per thread (at most {MAX_ACC}); "
                               f"dk={dk}, dv={dv}, threads={threads}")
    budget = limits.shared_bytes // 4
    batches = [b for b in SIZES if b <= CHUNK]
    state_batch = next((b for b in batches if ChunkPlan(CHUNK, threads, 1, b, 1).state_floats(dk, dv)
                        <= budget), None)
    for key_slice in (s for s in SIZES if s <= max(dk, 1)):
        for value_batch in batches:
            plan = ChunkPlan(CHUNK, threads, key_slice, state_batch or 1, value_batch)
            if state_batch and plan.output_floats(dv, decay) <= budget:
                return plan
    raise UnsupportedError(f"the chunked GPU LinearAttention kernel's smallest staging needs more "
                           f"than the target's {limits.shared_bytes} bytes of shared memory")


def chunked_gpu_args(hq: int, hkv: int, dk: int, dv: int, scale: float, decay: str | None,
                     past: bool) -> dict:
    """The kernel's arguments as plain values (schedule_gpu keeps them on the PrimFunc to
    rebuild it for the target's limits)."""
    return {"hq": hq, "hkv": hkv, "dk": dk, "dv": dv, "scale": scale, "decay": decay, "past": past}


def linear_attention_chunked_gpu_kernel(hq: int, hkv: int, dk: int, dv: int, scale: float,
                                        decay: str | None, past: bool,
                                        limits: GpuLimits = PORTABLE, bind_threads: bool = True,
                                        short: int = SHORT):
    """PrimFunc(q, k, v, past_state, decay, beta) -> (output, present_state), the signature of
    the CPU kernel (beta is a never-read placeholder: delta rules stay recurrent); decay in
    (None, "head", "key"). T < `short` runs the recurrent nest (0: always chunked)."""
    plan = choose_plan(limits, dk, dv, decay)
    gated = decay is not None
    recurrent = recurrent_gpu_nest(hq, hkv, dk, dv, scale, decay, None, past, bind_threads)
    state_phase = _state_phase(plan, hkv, dk, dv, decay, bind_threads)
    carry_phase = _carry_phase(plan, hkv, dk, dv, gated, past, bind_threads)
    output_phase = _output_phase(plan, hq, hkv, dk, dv, scale, decay, bind_threads)
    C = plan.chunk

    @T.macro
    def chunks(q, k, v, s0, g, o, s, B, L):
        # per chunk: its own end state, then (after the carry) its incoming state
        states = T.alloc_buffer((B, hkv, (L + C - 1) // C, dk, dv), "float32")
        decays = T.alloc_buffer((B, hkv, (L + C - 1) // C, dk), "float32")
        state_phase(k, v, g, states, decays, B, L)
        carry_phase(s0, states, decays, s, B, L)
        output_phase(q, k, v, g, states, o, B, L)

    @T.prim_func(private=True)
    def kernel(q_h: T.handle, k_h: T.handle, v_h: T.handle, s0_h: T.handle, g_h: T.handle,
               beta_h: T.handle, o_h: T.handle, s_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        B, L, q, k, v, s0, g, bt, o, s = linear_attention_buffers(
            (q_h, k_h, v_h, s0_h, g_h, beta_h, o_h, s_h), hq, hkv, dk, dv, decay, None, past)
        if short == 0:
            chunks(q, k, v, s0, g, o, s, B, L)
        else:
            if L < short:
                recurrent(q, k, v, s0, g, bt, o, s, B, L)
            else:
                chunks(q, k, v, s0, g, o, s, B, L)
    return kernel


def _loops(bind_threads: bool):
    """thread_loop, block_loop and unroll: bound and unrolled loops on the GPU (registers
    indexed by an unrolled loop stay registers), serial loops in the CPU form (whose LLVM
    build unrolling would only slow down)."""
    def unroll(extent):
        return T.unroll(extent) if bind_threads else T.serial(extent)

    def thread_loop(extent):
        return T.thread_binding(extent, thread="threadIdx.x") if bind_threads else T.serial(extent)

    def block_loop(extent):
        return T.thread_binding(extent, thread="blockIdx.x") if bind_threads else T.serial(extent)

    return thread_loop, block_loop, unroll


def _decay(g, b, t, h, i, dk: int, decay: str | None):
    """The log decay of key dim i of KV head h at token t (per-head decay: the head's)."""
    return g[b, t, h * dk + i] if decay == "key" else g[b, t, h]


def _state_phase(plan: ChunkPlan, hkv: int, dk: int, dv: int, decay: str | None,
                 bind_threads: bool):
    """Launch (1): macro(k, v, g, states, decays, B, L) writing U_c and b_end of every chunk."""
    C, NT, TB = plan.chunk, plan.threads, plan.state_batch
    n_u, n_r = _cdiv(dk * dv, NT), _cdiv(dk, NT)  # state entries and key dims per thread
    gated = decay is not None
    vs = TB * dk  # offset of the values in the shared buffer
    thread_loop, block_loop, unroll = _loops(bind_threads)

    # Thread tid's phases; `u` (state entries tid + m * NT) and `rev` (key dims tid + m * NT,
    # b_end - b over the tokens walked so far) are its registers at offsets ub, rb.
    @T.macro
    def clear(u, ub, rev, rb):
        for m in unroll(n_u):
            u[ub + m] = T.float32(0)
        for m in unroll(n_r):
            rev[rb + m] = T.float32(0)

    @T.macro
    def stage(k, v, g, sm, rev, rb, b, h, t1, L, tid):
        # tokens t1 .. t1 + TB (zero past L: they add nothing). The thread of key dim i stages
        # k_j * e^{b_end - b_j} walking the batch backwards (b_end - b_j: the decays after j,
        # summed in a register; the loads are unrolled so they issue together); all threads
        # stage the values, adjacent threads along the row.
        for m in unroll(n_r):
            if m * NT + tid < dk:
                for jj in unroll(TB):
                    sm[(TB - 1 - jj) * dk + m * NT + tid] = T.if_then_else(
                        t1 + TB - 1 - jj < L,
                        k[b, T.min(t1 + TB - 1 - jj, L - 1), h * dk + m * NT + tid], T.float32(0)
                    ) * T.exp(rev[rb + m])
                    if gated:
                        rev[rb + m] = rev[rb + m] + T.if_then_else(
                            t1 + TB - 1 - jj < L,
                            _decay(g, b, T.min(t1 + TB - 1 - jj, L - 1), h, m * NT + tid, dk, decay),
                            T.float32(0))
        for m in range(_cdiv(TB * dv, NT)):
            if m * NT + tid < TB * dv:
                sm[vs + m * NT + tid] = T.if_then_else(
                    t1 + (m * NT + tid) // dv < L,
                    v[b, T.min(t1 + (m * NT + tid) // dv, L - 1), h * dv + (m * NT + tid) % dv],
                    T.float32(0))

    @T.macro
    def accumulate(sm, u, ub, tid):
        for j in range(TB):
            for m in unroll(n_u):
                if m * NT + tid < dk * dv:
                    u[ub + m] = u[ub + m] + sm[j * dk + (m * NT + tid) // dv] * sm[
                        vs + j * dv + (m * NT + tid) % dv]

    @T.macro
    def store(states, decays, u, ub, rev, rb, b, h, c, tid):
        for m in unroll(n_u):
            if m * NT + tid < dk * dv:
                states[b, h, c, (m * NT + tid) // dv, (m * NT + tid) % dv] = u[ub + m]
        if gated:
            for m in unroll(n_r):
                if m * NT + tid < dk:
                    decays[b, h, c, m * NT + tid] = rev[rb + m]

    if bind_threads:
        @T.macro
        def nest(k, v, g, states, decays, B, L):
            for blk in block_loop(B * hkv * ((L + C - 1) // C)):
                sm = T.alloc_buffer((plan.state_floats(dk, dv),), "float32", scope="shared")
                for tid in thread_loop(NT):
                    u = T.alloc_buffer((n_u,), "float32", scope="local")
                    rev = T.alloc_buffer((n_r,), "float32", scope="local")
                    clear(u, 0, rev, 0)
                    for bb in range(C // TB):
                        stage(k, v, g, sm, rev, 0, blk // (hkv * ((L + C - 1) // C)),
                              blk // ((L + C - 1) // C) % hkv,
                              blk % ((L + C - 1) // C) * C + (C // TB - 1 - bb) * TB, L, tid)
                        T.tvm_storage_sync("shared")
                        accumulate(sm, u, 0, tid)
                        T.tvm_storage_sync("shared")  # the batch is restaged next
                    store(states, decays, u, 0, rev, 0, blk // (hkv * ((L + C - 1) // C)),
                          blk // ((L + C - 1) // C) % hkv, blk % ((L + C - 1) // C), tid)
        return nest

    @T.macro
    def serial(k, v, g, states, decays, B, L):
        for blk in block_loop(B * hkv * ((L + C - 1) // C)):
            sm = T.alloc_buffer((plan.state_floats(dk, dv),), "float32")
            u = T.alloc_buffer((NT * n_u,), "float32")  # every thread's registers
            rev = T.alloc_buffer((NT * n_r,), "float32")
            for tid in thread_loop(NT):
                clear(u, tid * n_u, rev, tid * n_r)
            for bb in range(C // TB):
                for tid in thread_loop(NT):
                    stage(k, v, g, sm, rev, tid * n_r, blk // (hkv * ((L + C - 1) // C)),
                          blk // ((L + C - 1) // C) % hkv,
                          blk % ((L + C - 1) // C) * C + (C // TB - 1 - bb) * TB, L, tid)
                for tid in thread_loop(NT):
                    accumulate(sm, u, tid * n_u, tid)
            for tid in thread_loop(NT):
                store(states, decays, u, tid * n_u, rev, tid * n_r, blk // (hkv * ((L + C - 1) // C)),
                      blk // ((L + C - 1) // C) % hkv, blk % ((L + C - 1) // C), tid)
    return serial


def _carry_phase(plan: ChunkPlan, hkv: int, dk: int, dv: int, gated: bool, past: bool,
                 bind_threads: bool):
    """Launch (2): macro(s0, states, decays, s, B, L): each chunk's own end state becomes its
    incoming state (in place), the last carried state is present_state."""
    C, NT = plan.chunk, plan.threads
    blocks = _cdiv(dk * dv, NT)  # per (batch, KV head)
    thread_loop, block_loop, unroll = _loops(bind_threads)

    # `run` is the thread's 2 registers at rb: the carried state and the chunk's own
    @T.macro
    def carry(s0, states, decays, s, run, rb, b, h, e, NC):
        if e < dk * dv:
            if past:
                run[rb] = s0[b, h, e // dv, e % dv]
            else:
                run[rb] = T.float32(0)
            for c in range(NC):
                run[rb + 1] = states[b, h, c, e // dv, e % dv]
                states[b, h, c, e // dv, e % dv] = run[rb]
                if gated:
                    run[rb] = T.exp(decays[b, h, c, e // dv]) * run[rb] + run[rb + 1]
                else:
                    run[rb] = run[rb] + run[rb + 1]
            s[b, h, e // dv, e % dv] = run[rb]

    if bind_threads:
        @T.macro
        def nest(s0, states, decays, s, B, L):
            for blk in block_loop(B * hkv * blocks):
                for tid in thread_loop(NT):
                    run = T.alloc_buffer((2,), "float32", scope="local")
                    carry(s0, states, decays, s, run, 0, blk // (hkv * blocks), blk // blocks % hkv,
                          blk % blocks * NT + tid, (L + C - 1) // C)
        return nest

    @T.macro
    def serial(s0, states, decays, s, B, L):
        for blk in block_loop(B * hkv * blocks):
            run = T.alloc_buffer((2 * NT,), "float32")
            for tid in thread_loop(NT):
                carry(s0, states, decays, s, run, 2 * tid, blk // (hkv * blocks), blk // blocks % hkv,
                      blk % blocks * NT + tid, (L + C - 1) // C)
    return serial


def _output_phase(plan: ChunkPlan, hq: int, hkv: int, dk: int, dv: int, scale: float,
                  decay: str | None, bind_threads: bool):
    """Launch (3): macro(q, k, v, g, states, o, B, L) writing every output row. Each staged
    tensor has its own shared buffer: TVM's barrier planner cannot prove that two regions of
    one buffer are disjoint, and would ask for barriers inside the threads' conditions."""
    C, NT, DS, VB = plan.chunk, plan.threads, plan.key_slice, plan.value_batch
    groups = hq // hkv
    n_a, n_o = _cdiv(C * C, NT), _cdiv(C * dv, NT)  # scores and outputs per thread
    DS1, C1 = DS + 1, C + 1  # padded rows: threads reading a column hit distinct banks
    sizes = plan.output_buffers(dv, decay)
    sc = T.float32(scale)
    thread_loop, block_loop, unroll = _loops(bind_threads)

    # Thread tid owns the scores tid + m * NT (row t = e // C, key j = e % C) in `a` at ab and
    # the outputs tid + m * NT (row t = e // dv, column e % dv) in `acc` at ob.
    @T.macro
    def clear(a, ab, acc, ob):
        for m in unroll(n_a):
            a[ab + m] = T.float32(0)
        for m in unroll(n_o):
            acc[ob + m] = T.float32(0)

    @T.macro
    def head_decays(g, bh_s, run, rb, b, h, t0, L, tid):
        # b_t of the chunk's rows (per-head decay), summed in a register by thread 0
        if tid == 0:
            run[rb] = T.float32(0)
            for t in unroll(C):
                run[rb] = run[rb] + T.if_then_else(t0 + t < L, g[b, T.min(t0 + t, L - 1), h],
                                                   T.float32(0))
                bh_s[t] = run[rb]

    @T.macro
    def stage_slice(q, k, states, q_s, k_s, S_s, b, hh, h, c, t0, L, i0, tid):
        # q and k of the chunk's rows for key dims i0 .. i0 + DS (zero past L and dk), and
        # S_c's rows i0 .. i0 + DS
        for m in range(_cdiv(C * DS, NT)):
            if m * NT + tid < C * DS:
                q_s[(m * NT + tid) // DS * DS1 + (m * NT + tid) % DS] = T.if_then_else(
                    t0 + (m * NT + tid) // DS < L and i0 + (m * NT + tid) % DS < dk,
                    q[b, T.min(t0 + (m * NT + tid) // DS, L - 1),
                      hh * dk + T.min(i0 + (m * NT + tid) % DS, dk - 1)], T.float32(0))
                k_s[(m * NT + tid) // DS * DS1 + (m * NT + tid) % DS] = T.if_then_else(
                    t0 + (m * NT + tid) // DS < L and i0 + (m * NT + tid) % DS < dk,
                    k[b, T.min(t0 + (m * NT + tid) // DS, L - 1),
                      h * dk + T.min(i0 + (m * NT + tid) % DS, dk - 1)], T.float32(0))
        for m in range(_cdiv(DS * dv, NT)):
            if m * NT + tid < DS * dv:
                S_s[m * NT + tid] = T.if_then_else(
                    i0 + (m * NT + tid) // dv < dk,
                    states[b, h, c, T.min(i0 + (m * NT + tid) // dv, dk - 1), (m * NT + tid) % dv],
                    T.float32(0))

    @T.macro
    def key_decays(g, b_s, run, rb, b, h, t0, L, i0, tid):
        # b_t of the slice's key dims: the thread of key dim i sums down the chunk in a register
        for m in unroll(_cdiv(DS, NT)):
            if m * NT + tid < DS:
                run[rb] = T.float32(0)
                for t in unroll(C):
                    run[rb] = run[rb] + T.if_then_else(
                        t0 + t < L and i0 + m * NT + tid < dk,
                        g[b, T.min(t0 + t, L - 1), h * dk + T.min(i0 + m * NT + tid, dk - 1)],
                        T.float32(0))
                    b_s[t * DS1 + m * NT + tid] = run[rb]

    @T.macro
    def scores(q_s, k_s, b_s, a, ab, t0, L, tid):
        # a[t, j] += sum_i q_ti k_ji e^{b_ti - b_ji} for j <= t (exponent <= 0)
        for m in unroll(n_a):
            if (m * NT + tid < C * C and (m * NT + tid) % C <= (m * NT + tid) // C
                    and t0 + (m * NT + tid) // C < L):
                for i in range(DS):
                    if decay == "key":
                        a[ab + m] = a[ab + m] + q_s[(m * NT + tid) // C * DS1 + i] * k_s[
                            (m * NT + tid) % C * DS1 + i] * T.exp(
                            b_s[(m * NT + tid) // C * DS1 + i] - b_s[(m * NT + tid) % C * DS1 + i])
                    else:
                        a[ab + m] = a[ab + m] + q_s[(m * NT + tid) // C * DS1 + i] * k_s[
                            (m * NT + tid) % C * DS1 + i]

    @T.macro
    def decay_queries(q_s, b_s, bh_s, qe_s, tid):
        # q_t * e^{b_t} (exponent <= 0) for the incoming-state term, into k's buffer (k is
        # no longer read in this slice)
        for m in range(_cdiv(C * DS, NT)):
            if m * NT + tid < C * DS:
                if decay == "key":
                    qe_s[(m * NT + tid) // DS * DS1 + (m * NT + tid) % DS] = q_s[
                        (m * NT + tid) // DS * DS1 + (m * NT + tid) % DS] * T.exp(
                        b_s[(m * NT + tid) // DS * DS1 + (m * NT + tid) % DS])
                else:
                    qe_s[(m * NT + tid) // DS * DS1 + (m * NT + tid) % DS] = q_s[
                        (m * NT + tid) // DS * DS1 + (m * NT + tid) % DS] * T.exp(
                        bh_s[(m * NT + tid) // DS])

    @T.macro
    def incoming_state(qe_s, S_s, acc, ob, t0, L, tid):
        for m in unroll(n_o):
            if m * NT + tid < C * dv and t0 + (m * NT + tid) // dv < L:
                for i in range(DS):
                    acc[ob + m] = acc[ob + m] + qe_s[(m * NT + tid) // dv * DS1 + i] * S_s[
                        i * dv + (m * NT + tid) % dv]

    @T.macro
    def store_scores(A_s, bh_s, a, ab, tid):
        # causal: zero above the diagonal; per-head decay: e^{b_t - b_j} once per score
        for m in unroll(n_a):
            if m * NT + tid < C * C:
                if (m * NT + tid) % C <= (m * NT + tid) // C:
                    if decay == "head":
                        A_s[(m * NT + tid) // C * C1 + (m * NT + tid) % C] = a[ab + m] * T.exp(
                            bh_s[(m * NT + tid) // C] - bh_s[(m * NT + tid) % C])
                    else:
                        A_s[(m * NT + tid) // C * C1 + (m * NT + tid) % C] = a[ab + m]
                else:
                    A_s[(m * NT + tid) // C * C1 + (m * NT + tid) % C] = T.float32(0)

    @T.macro
    def stage_values(v, v_s, b, h, t1, L, tid):
        for m in range(_cdiv(VB * dv, NT)):
            if m * NT + tid < VB * dv:
                v_s[m * NT + tid] = T.if_then_else(
                    t1 + (m * NT + tid) // dv < L,
                    v[b, T.min(t1 + (m * NT + tid) // dv, L - 1), h * dv + (m * NT + tid) % dv],
                    T.float32(0))

    @T.macro
    def intra_chunk(A_s, v_s, acc, ob, j0, t0, L, tid):
        for m in unroll(n_o):
            if m * NT + tid < C * dv and t0 + (m * NT + tid) // dv < L:
                for jj in range(VB):
                    acc[ob + m] = acc[ob + m] + A_s[(m * NT + tid) // dv * C1 + j0 + jj] * v_s[
                        jj * dv + (m * NT + tid) % dv]

    @T.macro
    def write(o, acc, ob, b, hh, t0, L, tid):
        for m in unroll(n_o):
            if m * NT + tid < C * dv and t0 + (m * NT + tid) // dv < L:
                o[b, t0 + (m * NT + tid) // dv, hh * dv + (m * NT + tid) % dv] = acc[ob + m] * sc

    n_slices = _cdiv(dk, DS)
    shared = "shared" if bind_threads else "global"

    if bind_threads:
        @T.macro
        def nest(q, k, v, g, states, o, B, L):
            for blk in block_loop(B * hq * ((L + C - 1) // C)):
                q_s = T.alloc_buffer((sizes["q"],), "float32", scope=shared)
                k_s = T.alloc_buffer((sizes["k"],), "float32", scope=shared)
                b_s = T.alloc_buffer((sizes["b"],), "float32", scope=shared)
                S_s = T.alloc_buffer((sizes["S"],), "float32", scope=shared)
                A_s = T.alloc_buffer((sizes["A"],), "float32", scope=shared)
                v_s = T.alloc_buffer((sizes["v"],), "float32", scope=shared)
                bh_s = T.alloc_buffer((sizes["bh"],), "float32", scope=shared)
                for tid in thread_loop(NT):
                    a = T.alloc_buffer((n_a,), "float32", scope="local")
                    acc = T.alloc_buffer((n_o,), "float32", scope="local")
                    run = T.alloc_buffer((1,), "float32", scope="local")
                    b = blk // (hq * ((L + C - 1) // C))
                    hh = blk // ((L + C - 1) // C) % hq
                    c = blk % ((L + C - 1) // C)
                    clear(a, 0, acc, 0)
                    if decay == "head":
                        head_decays(g, bh_s, run, 0, b, hh // groups, c * C, L, tid)
                    for sl in range(n_slices):
                        stage_slice(q, k, states, q_s, k_s, S_s, b, hh, hh // groups, c, c * C, L,
                                    sl * DS, tid)
                        if decay == "key":
                            key_decays(g, b_s, run, 0, b, hh // groups, c * C, L, sl * DS, tid)
                        T.tvm_storage_sync("shared")
                        scores(q_s, k_s, b_s, a, 0, c * C, L, tid)
                        if decay is not None:
                            T.tvm_storage_sync("shared")  # e^b q goes into k's buffer
                            decay_queries(q_s, b_s, bh_s, k_s, tid)
                            T.tvm_storage_sync("shared")
                            incoming_state(k_s, S_s, acc, 0, c * C, L, tid)
                        else:
                            incoming_state(q_s, S_s, acc, 0, c * C, L, tid)
                        T.tvm_storage_sync("shared")  # the slice is restaged next
                    store_scores(A_s, bh_s, a, 0, tid)
                    for vb in range(C // VB):
                        stage_values(v, v_s, b, hh // groups, c * C + vb * VB, L, tid)
                        T.tvm_storage_sync("shared")
                        intra_chunk(A_s, v_s, acc, 0, vb * VB, c * C, L, tid)
                        T.tvm_storage_sync("shared")
                    write(o, acc, 0, b, hh, c * C, L, tid)
        return nest

    @T.macro
    def serial(q, k, v, g, states, o, B, L):
        for blk in block_loop(B * hq * ((L + C - 1) // C)):
            q_s = T.alloc_buffer((sizes["q"],), "float32", scope=shared)
            k_s = T.alloc_buffer((sizes["k"],), "float32", scope=shared)
            b_s = T.alloc_buffer((sizes["b"],), "float32", scope=shared)
            S_s = T.alloc_buffer((sizes["S"],), "float32", scope=shared)
            A_s = T.alloc_buffer((sizes["A"],), "float32", scope=shared)
            v_s = T.alloc_buffer((sizes["v"],), "float32", scope=shared)
            bh_s = T.alloc_buffer((sizes["bh"],), "float32", scope=shared)
            a = T.alloc_buffer((NT * n_a,), "float32")  # every thread's registers
            acc = T.alloc_buffer((NT * n_o,), "float32")
            run = T.alloc_buffer((NT,), "float32")
            b = blk // (hq * ((L + C - 1) // C))
            hh = blk // ((L + C - 1) // C) % hq
            c = blk % ((L + C - 1) // C)
            for tid in thread_loop(NT):
                clear(a, tid * n_a, acc, tid * n_o)
                if decay == "head":
                    head_decays(g, bh_s, run, tid, b, hh // groups, c * C, L, tid)
            for sl in range(n_slices):
                for tid in thread_loop(NT):
                    stage_slice(q, k, states, q_s, k_s, S_s, b, hh, hh // groups, c, c * C, L,
                                sl * DS, tid)
                    if decay == "key":
                        key_decays(g, b_s, run, tid, b, hh // groups, c * C, L, sl * DS, tid)
                for tid in thread_loop(NT):
                    scores(q_s, k_s, b_s, a, tid * n_a, c * C, L, tid)
                if decay is not None:
                    for tid in thread_loop(NT):
                        decay_queries(q_s, b_s, bh_s, k_s, tid)
                    for tid in thread_loop(NT):
                        incoming_state(k_s, S_s, acc, tid * n_o, c * C, L, tid)
                else:
                    for tid in thread_loop(NT):
                        incoming_state(q_s, S_s, acc, tid * n_o, c * C, L, tid)
            for tid in thread_loop(NT):
                store_scores(A_s, bh_s, a, tid * n_a, tid)
            for vb in range(C // VB):
                for tid in thread_loop(NT):
                    stage_values(v, v_s, b, hh // groups, c * C + vb * VB, L, tid)
                for tid in thread_loop(NT):
                    intra_chunk(A_s, v_s, acc, tid * n_o, vb * VB, c * C, L, tid)
            for tid in thread_loop(NT):
                write(o, acc, tid * n_o, b, hh, c * C, L, tid)
    return serial
