"""SpikeMatMul on the CPU: Y = (counts * scale) @ W (+ bias), rows [..., K] flattened to M.

int8 weights (W [N/16, K/4, 16, 4], W_scale [G, N]): a register tile of R = 6 rows x 32
columns (two adjacent 16-column panels; one panel where N / 16 is odd) of int32 sums, built
with `vpdpbusd` on zmm (AVX-512 VNNI: per int32 lane the sum of 4 unsigned x signed byte
products, 64 multiply-adds per instruction, 4x an fp32 FMA): per quad of input channels, each
panel's 16 columns x 4 weights are one vector, used as they are stored, and each row's 4 counts
are one broadcast int32; 12 independent accumulator chains. The unsigned operand is the counts
plus 128 (a byte when -128 <= n <= 127, as spike counts almost always are); the group's sums
start at -128 x the weights' column sums (computed with the first row tile, from the weights it
loads anyway), which takes the offset back exactly. A row tile with a count outside a byte
(i16 counts only) is computed in two planes, n = 256 hi + lo with lo = n & 255 unsigned and
hi + 128 the offset byte: the tile's sums of the hi plane are shifted by 8 and the lo plane's
are added (two instructions per quad instead of one, still exact). A first parallel loop
writes every row tile's planes (one byte per count, two for a wide tile) and whether it is
wide. On ymm (AVX-VNNI, or AVX-512 VNNI without BW) the same runs 8 lanes wide. With AVX2
only, `vpmaddwd` multiplies 16-bit counts (i8 ones widened first; one int64 per quad)
by the sign-extended weights of 4 columns: lane j holds column j // 2's sum of k pair j % 2,
and the two pair sums of each column are added after each group (a 6 x 16 tile). After each
group of `group` channels the int32 tile is converted and added, times the group's weight
scales, to an f32 tile; the row scale and bias are applied once when the tile is stored. The
int32 tile is a constant-size stack buffer (see STACK_BYTES), so LLVM keeps it in registers.
Blocks of column tiles run in parallel; each task runs its block's tiles per row tile, so the
row tile's planes are fetched once per block (see WEIGHT_BLOCK_BYTES). Without AVX2 the
portable loops multiply counts and weights in plain int32, which LLVM vectorises as it can:
slower, same result. Every path gives the same bits (exact int32 sums,
one epilogue order).

Zero-tile skipping (node attribute kernel = "skip_zero_tiles"): a tile is the R rows x `group`
input channels that one int32 accumulation covers. A first parallel loop marks, per (row tile,
group), whether any count in it is nonzero; the main loops then skip the multiply-adds and the
scaled add of every all-zero tile. Bit-identical to the dense kernel: a zero tile's int32 sum
is 0 and adding +-0.0 to the f32 tile changes nothing (it starts at +0.0 and a sum of finite
floats never becomes -0.0). It pays only when many tiles are all zero (spike-sparsity measures
where).

f32 weights (W [N/16, K, 16]): counts as floats times W, the TE matmul that sbc's CPU schedule
tiles (schedule_cpu's matmul rule), then * scale + bias: exact integers times f32 weights.
"""

from __future__ import annotations

from functools import reduce

from tvm import te, tirx
from tvm.script import tirx as T

from sbc.codegen.kernels.signatures import spike_matmul_buffers
from sbc.codegen.schedule_cpu import schedule_func
from sbc.runtimes.machine import host_cpu_features

ROWS = 6  # rows of the int32 register tile (passes.calibration.TILE keeps a copy)
PANEL = 16  # columns per weight panel (the layout [N/16, K/4, 16, 4])
# register tile with 512-bit vpdpbusd: 6 rows x 32 columns (two panels) = 12 zmm accumulators
# (of 32), 2 weight vectors and 6 broadcast count quads: 12 independent multiply-add chains,
# enough to cover the instruction's latency on both vector pipes
TILE_PANELS = 2
# TVM (LowerTVMBuiltin) puts a "global" allocation below 1024 bytes on the stack, where LLVM
# promotes a tile read at constant offsets to registers; a larger one (or a "local" one) comes
# from the workspace pool, which LLVM cannot tell from the arguments: it stores the whole tile
# on every step
STACK_BYTES = 1024
# A parallel task runs a block of column tiles for each row tile, so that a row tile's planes
# (6 x K bytes: 24 KiB at K = 4096), read from L3 or memory once, serve every tile of the
# block from L1/L2, while the block's weights stay in L2 (1 MiB per core on znver5). One
# column tile per task read all M x K counts again for every 32 columns: at 4096 x 4096 x
# 4096 the kernel then waited on memory (260 instead of ~370 GOP/s on one thread).
WEIGHT_BLOCK_BYTES = 512 * 1024
MAX_COL_TILES = 4  # keeps N / (32 x 4) tasks to share out (12 at N = 1536)


def integer_dot_instruction(features: list[str] | None = None) -> str:
    """'vnni512' (vpdpbusd on zmm), 'vnni' (vpdpbusd on ymm: AVX-VNNI or AVX-512 VNNI without
    BW), 'avx2' (vpmaddwd) or 'portable' for this CPU."""
    features = host_cpu_features()["features"] if features is None else features
    if "avx512vnni" in features and "avx512bw" in features:
        return "vnni512"
    if "avx512vnni" in features or "avxvnni" in features:
        return "vnni"
    return "avx2" if "avx2" in features else "portable"


def lanes(instruction: str) -> int:
    """int32 lanes of one multiply-add vector (and of each accumulator)."""
    return 16 if instruction == "vnni512" else 8


def _lead_vars(rank: int) -> list:
    return [tirx.Var(f"m{d}", "int64") for d in range(rank - 1)]


def spike_matmul_kernel(node, instruction: str | None = None):
    """PrimFunc(counts, scale, W, W_scale, bias, Y) for a SpikeMatMul node; absent W_scale and
    bias are 1-element placeholders."""
    counts, _, w = node.inputs[:3]
    has_bias = len(node.inputs) > 4 and node.inputs[4] is not None
    k = int(counts.shape[-1])
    n = int(w.shape[0]) * PANEL
    if w.dtype == "f32":
        return float_kernel(counts.type.rank, counts.dtype, k, n, has_bias)
    return int8_kernel(counts.type.rank, counts.dtype, k, n, node.attrs["group"], has_bias,
                       instruction or integer_dot_instruction(),
                       skip_zero_tiles=node.attrs["kernel"] == "skip_zero_tiles")


def float_kernel(rank: int, counts_dtype: str, k: int, n: int, has_bias: bool):
    lead = _lead_vars(rank)
    dtype = {"i8": "int8", "i16": "int16"}[counts_dtype]
    a = te.placeholder(lead + [k], dtype, name="counts")
    scale = te.placeholder(lead + [1], "float32", name="scale")
    w = te.placeholder([n // PANEL, k, PANEL], "float32", name="W")
    w_scale = te.placeholder([1], "float32", name="W_scale")
    bias = te.placeholder([n] if has_bias else [1], "float32", name="bias")
    r = te.reduce_axis((0, k), name="k")
    mm = te.compute(lead + [n], lambda *i: te.sum(
        a[i[:-1] + (r,)].astype("float32") * w[i[-1] // PANEL, r, i[-1] % PANEL], axis=r),
        name="spike_matmul")

    def epilogue(*i):
        y = mm[i] * scale[i[:-1] + (0,)]
        return y + bias[i[-1]] if has_bias else y
    y = te.compute(lead + [n], epilogue, name="spike_matmul_out")
    # private, like the TVMScript kernels: the build names it (a "main" symbol would clash)
    func = te.create_prim_func([a, scale, w, w_scale, bias, y]).without_attr("global_symbol")
    return schedule_func(func) or func


def _dot_bytes(instruction: str, acc, unsigned, signed):
    """acc (int32 x lanes) + per lane the sum of 4 products of unsigned x signed bytes."""
    bits = 512 if instruction == "vnni512" else 256
    return T.call_llvm_pure_intrin(f"int32x{bits // 32}", f"llvm.x86.avx512.vpdpbusd.{bits}",
                                   acc, unsigned, signed)


def tile_panels(panels: int) -> int:
    """Weight panels per register tile: TILE_PANELS where they divide N's panels, else one."""
    return TILE_PANELS if panels % TILE_PANELS == 0 else 1


def col_tiles_per_block(k: int, cols: int) -> int:
    """Column tiles that one parallel task runs per row tile: as many as keep their weights
    (K x cols int8 each) within WEIGHT_BLOCK_BYTES, at most MAX_COL_TILES."""
    return max(1, min(MAX_COL_TILES, WEIGHT_BLOCK_BYTES // (k * cols)))


def int8_kernel(rank: int, counts_dtype: str, k: int, n: int, group: int, has_bias: bool,
                instruction: str, skip_zero_tiles: bool = False):
    """The int8-weight kernel (see the module docstring) for counts of `rank` dims."""
    lead = _lead_vars(rank)
    m = reduce(lambda x, y: x * y, lead, tirx.IntImm("int64", 1))
    quads, panels, groups = k // 4, n // PANEL, -(-k // group)
    tiles = (m + ROWS - 1) // ROWS
    quads_per_group = group // 4
    dtype = {"i8": "int8", "i16": "int16"}[counts_dtype]
    may_be_wide = counts_dtype == "i16"  # i8 counts always fit a byte plane
    byte_dot = instruction in ("vnni512", "vnni")  # vpdpbusd on byte planes
    word_dot = instruction == "avx2"  # vpmaddwd on 16-bit counts
    # avx2: one panel per tile, so that its tile of pair sums (2 per column) stays on the stack
    per_tile = 1 if word_dot else tile_panels(panels)
    cols = per_tile * PANEL  # columns of the register tile
    lane = lanes(instruction)
    per_panel = PANEL // lane  # accumulator vectors per row and panel
    quad_type = f"int8x{4 * lane}"  # one vector's quads of counts / weights
    plane = ROWS * k  # bytes of one plane of a row tile
    assert ROWS * cols * 4 * (2 if word_dot else 1) < STACK_BYTES, "the int32 tile must stay on the stack"
    col_tiles = panels // per_tile
    per_block = col_tiles_per_block(k, cols)
    blocks = -(-col_tiles // per_block)

    @T.prim_func(private=True)
    def kernel(a_h: T.handle, s_h: T.handle, w_h: T.handle, ws_h: T.handle, b_h: T.handle,
               y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        A, S, W, WS, B, Y = spike_matmul_buffers((a_h, s_h, w_h, ws_h, b_h, y_h), lead, dtype,
                                                k, n, group, has_bias, False)
        A2 = T.decl_buffer((m, k), dtype, data=A.data)
        S1 = T.decl_buffer((m,), "float32", data=S.data)
        W1 = T.decl_buffer((panels, quads, 4 * PANEL), "int8", data=W.data)
        Y2 = T.decl_buffer((m, n), "float32", data=Y.data)
        if skip_zero_tiles:  # once for all panels: is any count of the tile nonzero?
            live = T.alloc_buffer((tiles * groups,), "int32")
            for it in T.parallel(tiles):
                for g in range(groups):
                    live[it * groups + g] = 0
                    for r, kk in T.grid(ROWS, T.min(group, k - g * group)):
                        row = T.min(it * ROWS + r, m - 1)
                        live[it * groups + g] = T.bitwise_or(
                            live[it * groups + g], T.Cast("int32", A2[row, g * group + kk] != 0))
        if word_dot:  # the counts as 16-bit values, read 4 (one int64) at a time
            if may_be_wide:  # i16: in place
                words64 = T.decl_buffer((m, quads), "int64", data=A.data)
            else:  # i8: widened once
                words = T.alloc_buffer((m * k,), "int16")
                words64 = T.decl_buffer((m, quads), "int64", data=words.data)
                for i in T.parallel(m):
                    for kk in range(k):
                        words[i * k + kk] = T.Cast("int16", A2[i, kk])
        if byte_dot:
            # per row tile, the counts as unsigned byte planes (n + 128, or a wide tile's
            # hi + 128 and lo; see the module docstring) and whether it is wide
            planes = T.alloc_buffer((tiles * 2 * plane,), "uint8")
            planes32 = T.decl_buffer((tiles * 2 * plane // 4,), "int32", data=planes.data)
            wide = T.alloc_buffer((tiles,), "int32")
            for it in T.parallel(tiles):
                wide[it] = 0
                if may_be_wide:
                    for r, kk in T.grid(ROWS, k):  # any count outside [-128, 127]?
                        wide[it] = T.bitwise_or(wide[it], T.bitwise_and(
                            T.Cast("int32", A2[T.min(it * ROWS + r, m - 1), kk]) + 128, -256))
                    wide[it] = T.Cast("int32", wide[it] != 0)
                if wide[it] == 0:
                    for r, kk in T.grid(ROWS, k):
                        planes[it * 2 * plane + r * k + kk] = T.Cast(
                            "uint8", T.Cast("int32", A2[T.min(it * ROWS + r, m - 1), kk]) + 128)
                else:
                    for r, kk in T.grid(ROWS, k):
                        count = T.Cast("int32", A2[T.min(it * ROWS + r, m - 1), kk])
                        planes[it * 2 * plane + r * k + kk] = T.Cast(
                            "uint8", T.shift_right(count, 8) + 128)
                        planes[it * 2 * plane + plane + r * k + kk] = T.Cast(
                            "uint8", T.bitwise_and(count, 255))
        for jb in T.parallel(blocks):
            # "global": on the stack (see STACK_BYTES), so the int32 tile lives in registers
            acc = T.alloc_buffer((ROWS * cols,), "int32", scope="global")
            pair_sums = T.alloc_buffer((2 * ROWS * cols if word_dot else 1,), "int32", scope="global")
            pair_spill = T.alloc_buffer((2 * ROWS * cols if word_dot else 1,), "int32", scope="global")
            ftile = T.alloc_buffer((ROWS * cols,), "float32", scope="global")
            # -128 x the column sums of W per group: the offset of the +128 planes, taken back
            # by starting the group's int32 sums there; computed with the first row tile,
            # from the weights it brings into L1 anyway
            offset = T.alloc_buffer((groups * per_block * cols,), "int32")
            for it in range(tiles):
                i0 = it * ROWS
                for jt in range(jb * per_block, T.min((jb + 1) * per_block, col_tiles)):
                    j0 = jt * cols
                    for r, c in T.grid(ROWS, cols):
                        ftile[r * cols + c] = T.float32(0)
                    for g in range(groups):
                        if byte_dot and it == 0:
                            for t in T.unroll(per_tile):
                                for v in T.unroll(per_panel):
                                    colsum = T.alloc_buffer((lane,), "int32", scope="global")
                                    colsum[T.ramp(0, 1, lane)] = T.Broadcast(0, lane)
                                    for q in range(g * quads_per_group,
                                                   T.min((g + 1) * quads_per_group, quads)):
                                        colsum[T.ramp(0, 1, lane)] = _dot_bytes(
                                            instruction, colsum[T.ramp(0, 1, lane)],
                                            T.reinterpret(quad_type, T.Broadcast(0x01010101, lane)),
                                            W1[jt * per_tile + t, q, T.ramp(v * 4 * lane, 1, 4 * lane)])
                                    for c in T.vectorized(lane):
                                        offset[(g * per_block + jt - jb * per_block) * cols + t * PANEL + v * lane + c] = colsum[c] * -128
                        if not skip_zero_tiles or live[it * groups + g] != 0:
                            if byte_dot:
                                for r in T.unroll(ROWS):
                                    for c in T.vectorized(cols):
                                        acc[r * cols + c] = offset[(g * per_block + jt - jb * per_block) * cols + c]
                                # a wide tile: sum (hi + 128) w, then x 256, then + sum lo w
                                for half in range(1 + wide[it]):
                                    if half == 1:
                                        for r in T.unroll(ROWS):
                                            for c in T.vectorized(cols):
                                                acc[r * cols + c] = T.shift_left(acc[r * cols + c], 8)
                                    for q in range(g * quads_per_group,
                                                   T.min((g + 1) * quads_per_group, quads)):
                                        for t in T.unroll(per_tile):
                                            for v in T.unroll(per_panel):
                                                wv = W1[jt * per_tile + t, q, T.ramp(v * 4 * lane, 1, 4 * lane)]
                                                for r in T.unroll(ROWS):
                                                    at = r * cols + t * PANEL + v * lane
                                                    acc[T.ramp(at, 1, lane)] = _dot_bytes(
                                                        instruction, acc[T.ramp(at, 1, lane)],
                                                        T.reinterpret(quad_type, T.Broadcast(
                                                            planes32[(it * 2 + half) * plane // 4 + r * quads + q], lane)),
                                                        wv)
                            elif word_dot:
                                # lane j of a vpmaddwd: column j // 2 of the 4 in the weight
                                # vector, its k pair j % 2; the pairs' sums add up at the end
                                for r in T.unroll(2 * ROWS * cols // 8):
                                    pair_sums[T.ramp(8 * r, 1, 8)] = T.Broadcast(0, 8)
                                for q in range(g * quads_per_group,
                                               T.min((g + 1) * quads_per_group, quads)):
                                    for v in T.unroll(PANEL // 4):
                                        wv = T.Cast("int16x16", W1[jt, q, T.ramp(v * 16, 1, 16)])
                                        for r in T.unroll(ROWS):
                                            at = 2 * r * cols + 8 * v
                                            pair_sums[T.ramp(at, 1, 8)] = pair_sums[T.ramp(at, 1, 8)] + T.call_llvm_pure_intrin(
                                                "int32x8", "llvm.x86.avx2.pmadd.wd", T.reinterpret("int16x16", T.Broadcast(
                                                    words64[T.min(i0 + r, m - 1), q], 4)), wv)
                                # through memory: a strided read of pair_sums itself would
                                # keep LLVM from holding it in registers
                                for r in T.unroll(2 * ROWS * cols // 8):
                                    pair_spill[T.ramp(8 * r, 1, 8)] = pair_sums[T.ramp(8 * r, 1, 8)]
                                for c in T.vectorized(ROWS * cols):
                                    acc[c] = pair_spill[2 * c] + pair_spill[2 * c + 1]
                            else:
                                for r in T.unroll(ROWS):
                                    for c in T.vectorized(cols):
                                        acc[r * cols + c] = 0
                                # (no let inside the vectorised loop: TVM mis-vectorises it)
                                for q in range(g * quads_per_group,
                                               T.min((g + 1) * quads_per_group, quads)):
                                    for r, t in T.grid(ROWS, per_tile):
                                        # one sum of the quad (4 separate updates of acc
                                        # vectorise 2x slower)
                                        for c in T.vectorized(PANEL):
                                            acc[r * cols + t * PANEL + c] = acc[r * cols + t * PANEL + c] + (
                                                T.Cast("int32", A2[T.min(i0 + r, m - 1), 4 * q]) * T.Cast("int32", W[jt * per_tile + t, q, c, 0])
                                                + T.Cast("int32", A2[T.min(i0 + r, m - 1), 4 * q + 1]) * T.Cast("int32", W[jt * per_tile + t, q, c, 1])
                                                + T.Cast("int32", A2[T.min(i0 + r, m - 1), 4 * q + 2]) * T.Cast("int32", W[jt * per_tile + t, q, c, 2])
                                                + T.Cast("int32", A2[T.min(i0 + r, m - 1), 4 * q + 3]) * T.Cast("int32", W[jt * per_tile + t, q, c, 3]))
                            for r in T.unroll(ROWS):
                                for c in T.vectorized(cols):
                                    ftile[r * cols + c] = ftile[r * cols + c] + T.Cast(
                                        "float32", acc[r * cols + c]) * WS[g, j0 + c]
                    for r in range(ROWS):
                        if i0 + r < m:
                            for c in T.vectorized(cols):
                                if has_bias:
                                    Y2[i0 + r, j0 + c] = ftile[r * cols + c] * S1[i0 + r] + B[j0 + c]
                                else:
                                    Y2[i0 + r, j0 + c] = ftile[r * cols + c] * S1[i0 + r]

    return kernel
