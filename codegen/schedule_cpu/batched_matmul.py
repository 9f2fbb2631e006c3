"""Block rule for activation x activation matmuls (attention's q @ k^T and probs @ v, batched
Einsums): C[..., i, j] += A[..., i, k] * B[..., k, j] with B a plain operand (not pre-packed),
batched or of a symbolic size."""

from __future__ import annotations

from tvm.tirx import IndexMap

from sbc.codegen.schedule_cpu.common import is_matmul, static, vector_lanes
from sbc.codegen.schedule_cpu.matmul import _b_operand, _fold_epilogues, _reads_transposed

TILE_I = 6  # rows of the register tile: 6 x 2 vectors = 12 accumulators (of 16 AVX2 registers)
PACK_ABOVE = 64  # B wider than this (columns) is packed into column panels


class BatchedMatmul:
    """Takes a matmul block (common.is_matmul) whose B is a plain [..., K, N] or [..., N, K]
    buffer and that is batched or has a symbolic M, N or K (a 2-D matmul of static shape is a
    weight's: Matmul's).

    The register tile is TILE_I rows x 2 vectors of the target's width (6 x 16 with AVX2,
    6 x 32 with AVX-512: 12 accumulators either way; Matmul's 6 x 32 would spill on AVX2).
    Nothing is copied outside the kernel: a symbolic or ragged M or N is padded within it
    (pad_einsum, then the padded operands inlined back as guarded loads, so the tile buffer
    has no predicate and stays a 6 x 2-vector stack buffer), and the guards are taken out of
    every whole tile by LoopPartition (pragma_loop_partition_hint on the row and column tile
    loops): only the last row / column tile carries them. A wide B (N > PACK_ABOVE, q @ k^T)
    is packed into contiguous [N / w, K, w] column panels inside the kernel,
    so the k loop streams one panel (a column slice of a row-major B with a power-of-two row
    stride maps to a couple of L1 sets).

    Loops: B's panels in a parallel pass of their own, then batch (fused into the parallel
    loop, or serial above it where the last row tile needs its guards split off) > parallel
    row tiles > column tile > k > TILE_I rows (unrolled) > 2 vectors (unrolled); epilogues
    run when the tile is written back."""

    def apply(self, sch, info, target) -> bool:
        if not is_matmul(sch, info):
            return False
        block = info.block_rv
        b_index = _b_operand(sch.get(block))
        if b_index is None:
            return False
        m, n, kk = (static(it.dom) for it in info.iters[-3:])
        if len(info.iters) == 3 and n is not None and kk is not None:
            return False
        lanes = vector_lanes(target)
        width = 2 * lanes
        b_buffer = sch.get(block).reads[b_index].source
        transposed = _reads_transposed(sch.get(block), b_index)
        pack = n is None or n > PACK_ABOVE
        rows = _tile_rows(m)
        pad_rows, pad_cols = m is None or m % rows != 0, n is None or n % width != 0
        b_pad = None
        if pad_rows or pad_cols:
            lead = len(sch.get_loops(block)) - 3
            sch.pad_einsum(block, [1] * lead + [rows if pad_rows else 1, width if pad_cols else 1, 1])
            for p in sch.get_producers(block):
                if not sch.get(p).name_hint.endswith("_pad"):
                    continue
                if pack and sch.get(p).reads[0].source.same_as(b_buffer):
                    b_pad = p  # B's padded copy becomes its packed panels
                else:
                    sch.compute_inline(p)  # a guarded load in the k loop
        writeback = _fold_epilogues(sch, sch.cache_write(block, 0, "global"))
        if pack:
            panels = b_pad if b_pad is not None else sch.cache_read(block, _read_index(sch, block, b_buffer), "global")
        *batch, i, j, k = sch.get_loops(block)
        io, ii = sch.split(i, [None, rows])
        jo, jp, ji = sch.split(j, [None, 2, lanes])
        sch.reorder(*batch, io, jo, k, ii, jp, ji)
        sch.reverse_compute_at(writeback, jo)
        if pad_rows or not batch:
            sch.parallel(io)
            if pad_rows:
                sch.annotate(io, "pragma_loop_partition_hint", 1)
        else:
            sch.parallel(sch.fuse(*batch, io))
        if pad_cols:
            sch.annotate(jo, "pragma_loop_partition_hint", 1)
        sch.unroll(ii)
        sch.unroll(jp)
        sch.vectorize(ji)
        sch.decompose_reduction(block, k)
        sch.vectorize(sch.get_loops(writeback)[-1])
        if pack:
            _pack(sch, panels, width, transposed)
        return True


def _tile_rows(m) -> int:
    """TILE_I, or 4 where a static M is a multiple of 4 but not of TILE_I (T = 512): whole
    tiles need no guard (LoopPartition leaves a guard in a static parallel loop)."""
    return 4 if m is not None and m % TILE_I and m % 4 == 0 else TILE_I


def _read_index(sch, block, buffer) -> int:
    return next(n for n, r in enumerate(sch.get(block).reads) if r.source.same_as(buffer))


def _pack(sch, pack, width: int, transposed: bool) -> None:
    """Lay B's copy `pack` out as [..., N / width, K, width] column panels in one parallel
    pass before the matmul (B's rows in parallel, each row's contiguous runs vectorised)."""
    ndim = len(sch.get(pack).writes[0].region)

    def panels(*idx):
        *lead, r, c = idx
        kk, nn = (c, r) if transposed else (r, c)
        return (*lead, nn // width, kk, nn % width)

    sch.transform_layout(pack, ("write", 0), IndexMap.from_func(panels, ndim=ndim, index_dtype="int64"))
    *rows, cols = sch.get_loops(pack)
    sch.parallel(sch.fuse(*rows) if len(rows) > 1 else rows[0])
    if not transposed:  # B's rows: contiguous in B and in the panels, by runs of `width`
        _, inner = sch.split(cols, [None, width])
        sch.vectorize(inner)
