"""SpikeMatMul as a GPU kernel (CUDA and MACA): Y = (counts * scale) @ W (+ bias), rows
[..., K] flattened to M, on the weight layouts the CPU kernel reads (passes.spike_matmul).

One thread block per tile of `rows` x `cols` outputs; `threads` threads, thread t owns column
t % cols of the tile and rows_per_thread consecutive rows from (t // cols) * rows_per_thread.
K is walked in chunks of `chunk` input channels (a divisor of the quantisation group), each in
two phases separated by barriers:
    load:    the block copies the chunk of its rows' counts (contiguous along K) and of its
             columns' weights (each panel's slice is contiguous in the packed layout) into
             shared memory, zero past M, N or K; adjacent threads read adjacent addresses
    compute: each thread adds count x weight over the chunk to its int32 (f32 weights: f32)
             accumulators; counts are read by every thread of a warp at once (a broadcast),
             weights by adjacent threads at adjacent columns
After each group of `group` channels the int32 sums are converted and added, times the group's
weight scales, to f32 sums (the reference's order: g ascending, f32); the epilogue multiplies
by the row scale and adds the bias, as ir.ops.spike.spike_matmul defines it. f32 weights are
one group with no scale (a float inner product).

Tile sizes come from the target's limits (GpuLimits): the 64 columns of a tile are whole warps
(two CUDA warps, one MACA wave; a wider warp widens the tile), the block is at most 256
threads, and rows (then the chunk) are the most that keep both shared tiles within the shared
memory a block may use (48 KiB static on CUDA, 64 KiB on MACA). On both: 64 x 64 tiles,
256 threads of 16 rows each, chunks of 128 channels; shared tiles of 24 KiB (i16 counts, int8
weights), 16 KiB (i8 counts), 48 KiB (i16 counts, f32 weights).

`bind_threads=False` emits the same phases with the thread loops as serial loops, one loop
over the threads per phase, per-thread registers as arrays indexed by thread, and the shared
tiles as ordinary buffers: a CPU (llvm) build of it computes what the GPU kernel computes, so
its index arithmetic and epilogue are tested without a GPU (tests/codegen/test_gpu_kernels_serial).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

from tvm import tirx
from tvm.script import tirx as T

from sbc.codegen.kernels.signatures import spike_matmul_buffers
from sbc.errors import UnsupportedError
from sbc.ir.ops.spike import PANEL

MAX_BLOCK_THREADS = 256  # enough warps to hide latency; leaves registers for 16 rows each
MAX_CHUNK = 128  # input channels staged per phase: the default quantisation group
MAX_ROWS_PER_THREAD = 16  # int32 + f32 accumulators per row stay in registers


@dataclass(frozen=True)
class GpuLimits:
    """What a kernel may use of one block: lanes per warp, threads, shared memory bytes."""
    warp_size: int
    max_threads: int
    shared_bytes: int

    @classmethod
    def of(cls, target) -> "GpuLimits":
        """A TVM cuda-kind target's limits (CUDA's default 48 KiB of static shared memory
        when the target does not say; MACA's tag says 64 KiB)."""
        attrs = target.attrs
        return cls(int(attrs.get("thread_warp_size", 32)), int(attrs.get("max_num_threads", 1024)),
                   int(attrs.get("max_shared_memory_per_block", 48 * 1024)))


# fits every GPU target sbc has (CUDA and MACA): the lowering's choice, before the target is
# known; schedule_gpu re-specialises the kernel for the actual target
PORTABLE = GpuLimits(warp_size=64, max_threads=1024, shared_bytes=48 * 1024)


@dataclass(frozen=True)
class Tiles:
    rows: int
    cols: int
    chunk: int
    threads: int

    @property
    def row_groups(self) -> int:
        return self.threads // self.cols

    @property
    def rows_per_thread(self) -> int:
        return self.rows // self.row_groups

    def shared_bytes(self, counts_bytes: int, weight_bytes: int) -> int:
        return self.chunk * (self.rows * counts_bytes + self.cols * weight_bytes)


def _chunk(group: int, float_weights: bool) -> int:
    """Channels per shared stage: float weights have no groups; int8 ones need a divisor of
    the group (sums restart at group boundaries) that is a multiple of 4 (weights are packed
    in quads)."""
    if float_weights:
        return MAX_CHUNK
    return max(c for c in range(4, min(group, MAX_CHUNK) + 1, 4) if group % c == 0)


def choose_tiles(limits: GpuLimits, counts_bytes: int, weight_bytes: int, group: int,
                 float_weights: bool) -> Tiles:
    cols = max(4 * PANEL, limits.warp_size)  # whole warps along the columns
    threads = min(MAX_BLOCK_THREADS, limits.max_threads) // cols * cols
    if threads == 0:
        raise UnsupportedError(f"the GPU SpikeMatMul kernel needs {cols} threads per block, "
                               f"the target allows {limits.max_threads}")
    chunk = _chunk(group, float_weights)
    row_groups = threads // cols
    while True:
        for rows_per_thread in (16, 8, 4, 2, 1):
            tiles = Tiles(row_groups * rows_per_thread, cols, chunk, threads)
            if tiles.shared_bytes(counts_bytes, weight_bytes) <= limits.shared_bytes:
                return tiles
        if chunk % 8 or float_weights and chunk <= 2:
            raise UnsupportedError(f"the GPU SpikeMatMul kernel's smallest tiles need more than "
                                   f"the target's {limits.shared_bytes} bytes of shared memory")
        chunk //= 2


def spike_matmul_gpu_args(node) -> dict:
    """What the kernel depends on in a SpikeMatMul node, as plain values (schedule_gpu keeps
    them on the PrimFunc to rebuild it for the target's limits)."""
    counts, _, w = node.inputs[:3]
    return {"rank": counts.type.rank, "counts_dtype": counts.dtype, "weight_dtype": w.dtype,
            "k": int(counts.shape[-1]), "n": int(w.shape[0]) * PANEL, "group": node.attrs["group"],
            "has_bias": len(node.inputs) > 4 and node.inputs[4] is not None}


def spike_matmul_gpu_kernel(node, limits: GpuLimits = PORTABLE, bind_threads: bool = True):
    """PrimFunc(counts, scale, W, W_scale, bias, Y) for a SpikeMatMul node, the CPU kernel's
    signature (absent W_scale and bias are 1-element placeholders)."""
    return spike_matmul_gpu_func(**spike_matmul_gpu_args(node), limits=limits,
                                 bind_threads=bind_threads)


def spike_matmul_gpu_func(rank: int, counts_dtype: str, weight_dtype: str, k: int, n: int,
                          group: int, has_bias: bool, limits: GpuLimits = PORTABLE,
                          bind_threads: bool = True):
    float_weights = weight_dtype == "f32"
    dtype = {"i8": "int8", "i16": "int16"}[counts_dtype]
    tiles = choose_tiles(limits, 1 if dtype == "int8" else 2, 4 if float_weights else 1,
                         group, float_weights)
    rows, cols, chunk, threads = tiles.rows, tiles.cols, tiles.chunk, tiles.threads
    rpt = tiles.rows_per_thread
    lead = [tirx.Var(f"m{d}", "int64") for d in range(rank - 1)]
    m = reduce(lambda x, y: x * y, lead, tirx.IntImm("int64", 1))
    panels, tile_panels = n // PANEL, cols // PANEL
    groups = 1 if float_weights else -(-k // group)
    chunks_per_group = -(-k // chunk) if float_weights else group // chunk
    col_tiles = -(-n // cols)
    acc_dtype, wdt = ("float32", "float32") if float_weights else ("int32", "int8")
    shared = "shared" if bind_threads else "global"

    def thread_loop(extent):
        return T.thread_binding(extent, thread="threadIdx.x") if bind_threads else T.serial(extent)

    def block_loop(extent):
        return T.thread_binding(extent, thread="blockIdx.x") if bind_threads else T.serial(extent)

    @T.macro
    def load_chunk(A2, W, a_s, w_s, r0, jp0, k0, tid):
        # counts: rows x chunk, adjacent threads along K
        for e in range(-(-rows * chunk // threads)):
            if e * threads + tid < rows * chunk:
                r = (e * threads + tid) // chunk
                kk = (e * threads + tid) % chunk
                a_s[e * threads + tid] = T.if_then_else(
                    r0 + r < m and k0 + kk < k, A2[T.min(r0 + r, m - 1), T.min(k0 + kk, k - 1)],
                    T.Cast(dtype, 0))
        # weights: each panel's chunk is contiguous (float: [chunk, 16]; int8: [chunk/4, 16, 4])
        for e in range(-(-chunk * cols // threads)):
            if e * threads + tid < chunk * cols:
                jl = (e * threads + tid) // (chunk * PANEL)
                rem = (e * threads + tid) % (chunk * PANEL)
                if float_weights:
                    kk = rem // PANEL
                    c = rem % PANEL
                    w_s[kk * cols + jl * PANEL + c] = T.if_then_else(
                        jp0 + jl < panels and k0 + kk < k,
                        W[T.min(jp0 + jl, panels - 1), T.min(k0 + kk, k - 1), c], T.float32(0))
                else:
                    q = rem // (4 * PANEL)
                    c = rem % (4 * PANEL) // 4
                    quarter = rem % 4
                    w_s[(4 * q + quarter) * cols + jl * PANEL + c] = T.if_then_else(
                        jp0 + jl < panels and k0 + 4 * q < k,
                        W[T.min(jp0 + jl, panels - 1), T.min(k0 // 4 + q, k // 4 - 1), c, quarter],
                        T.int8(0))

    @T.macro
    def accumulate_chunk(a_s, w_s, acc, base, r0, tid):
        for kk in range(chunk):
            for r in T.unroll(rpt):
                if r0 + tid // cols * rpt + r < m:  # the rows past M of the last tile do nothing
                    acc[base + r] = acc[base + r] + T.Cast(
                        acc_dtype, a_s[(tid // cols * rpt + r) * chunk + kk]) * T.Cast(
                        acc_dtype, w_s[kk * cols + tid % cols])

    @T.macro
    def clear(buf, base):
        for r in T.unroll(rpt):
            buf[base + r] = T.Cast(buf.dtype, 0)

    @T.macro
    def fold_group(WS, acc, ftile, base, g, c0, tid):
        for r in T.unroll(rpt):
            if float_weights:
                ftile[base + r] = ftile[base + r] + acc[base + r]
            else:
                ftile[base + r] = ftile[base + r] + T.Cast("float32", acc[base + r]) * WS[
                    g, T.min(c0 + tid % cols, n - 1)]

    @T.macro
    def store(S1, B, Y2, ftile, base, r0, c0, tid):
        for r in T.unroll(rpt):
            if r0 + tid // cols * rpt + r < m and c0 + tid % cols < n:
                if has_bias:
                    Y2[r0 + tid // cols * rpt + r, c0 + tid % cols] = (
                        ftile[base + r] * S1[r0 + tid // cols * rpt + r] + B[c0 + tid % cols])
                else:
                    Y2[r0 + tid // cols * rpt + r, c0 + tid % cols] = (
                        ftile[base + r] * S1[r0 + tid // cols * rpt + r])

    if bind_threads:
        @T.prim_func(private=True)
        def kernel(a_h: T.handle, s_h: T.handle, w_h: T.handle, ws_h: T.handle, b_h: T.handle,
                   y_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            A, S, W, WS, B, Y = spike_matmul_buffers((a_h, s_h, w_h, ws_h, b_h, y_h), lead, dtype,
                                                    k, n, group, has_bias, float_weights)
            A2 = T.decl_buffer((m, k), dtype, data=A.data)
            S1 = T.decl_buffer((m,), "float32", data=S.data)
            Y2 = T.decl_buffer((m, n), "float32", data=Y.data)
            for blk in block_loop((m + rows - 1) // rows * col_tiles):
                a_s = T.alloc_buffer((rows * chunk,), dtype, scope=shared)
                w_s = T.alloc_buffer((chunk * cols,), wdt, scope=shared)
                for tid in thread_loop(threads):
                    acc = T.alloc_buffer((rpt,), acc_dtype, scope="local")
                    ftile = T.alloc_buffer((rpt,), "float32", scope="local")
                    clear(ftile, 0)
                    for g in range(groups):
                        clear(acc, 0)
                        for ci in range(chunks_per_group):
                            load_chunk(A2, W, a_s, w_s, blk // col_tiles * rows,
                                       blk % col_tiles * tile_panels, (g * chunks_per_group + ci) * chunk, tid)
                            T.tvm_storage_sync("shared")
                            accumulate_chunk(a_s, w_s, acc, 0, blk // col_tiles * rows, tid)
                            T.tvm_storage_sync("shared")  # the tiles are reloaded next chunk
                        fold_group(WS, acc, ftile, 0, g, blk % col_tiles * cols, tid)
                    store(S1, B, Y2, ftile, 0, blk // col_tiles * rows, blk % col_tiles * cols, tid)
        return kernel

    @T.prim_func(private=True)
    def serial(a_h: T.handle, s_h: T.handle, w_h: T.handle, ws_h: T.handle, b_h: T.handle,
               y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        A, S, W, WS, B, Y = spike_matmul_buffers((a_h, s_h, w_h, ws_h, b_h, y_h), lead, dtype,
                                                k, n, group, has_bias, float_weights)
        A2 = T.decl_buffer((m, k), dtype, data=A.data)
        S1 = T.decl_buffer((m,), "float32", data=S.data)
        Y2 = T.decl_buffer((m, n), "float32", data=Y.data)
        for blk in block_loop((m + rows - 1) // rows * col_tiles):
            a_s = T.alloc_buffer((rows * chunk,), dtype, scope=shared)
            w_s = T.alloc_buffer((chunk * cols,), wdt, scope=shared)
            acc = T.alloc_buffer((threads * rpt,), acc_dtype)  # every thread's registers
            ftile = T.alloc_buffer((threads * rpt,), "float32")
            for tid in thread_loop(threads):
                clear(ftile, tid * rpt)
            for g in range(groups):
                for tid in thread_loop(threads):
                    clear(acc, tid * rpt)
                for ci in range(chunks_per_group):
                    for tid in thread_loop(threads):
                        load_chunk(A2, W, a_s, w_s, blk // col_tiles * rows,
                                   blk % col_tiles * tile_panels,
                                   (g * chunks_per_group + ci) * chunk, tid)
                    for tid in thread_loop(threads):  # after the barrier
                        accumulate_chunk(a_s, w_s, acc, tid * rpt, blk // col_tiles * rows, tid)
                for tid in thread_loop(threads):
                    fold_group(WS, acc, ftile, tid * rpt, g, blk % col_tiles * cols, tid)
            for tid in thread_loop(threads):
                store(S1, B, Y2, ftile, tid * rpt, blk // col_tiles * rows, blk % col_tiles * cols, tid)
    return serial
