"""Block rule for matmuls: C[..., i, j] += A[..., i, k] * B[..., k, j] (S..SSR; B may be
transposed or pre-packed into column panels) becomes a register-tiled GEMM."""

from __future__ import annotations

from tvm import tirx
from tvm.tirx import IndexMap

from sbc.codegen.schedule_cpu.common import (VECTOR, is_matmul, static, try_primitive,
                                              vector_lanes)
from sbc.ir.ops.nn import PANEL  # pre-packed B's panel width

# register tile: 6 rows x 2 vectors = 12 accumulators, 2 B vectors and 6 broadcasts of A per
# k step: enough independent FMAs to keep both FMA pipes busy, within the 16 registers of AVX2
# (6 x 16 fp32) or the 32 of AVX-512 (6 x 32, TILE_J). It must stay under STACK_BYTES (see
# Matmul); 12 x 32 would not fit. 6 x 32 on AVX2 needs 24 accumulators: LLVM spilled them.
TILE_I, TILE_J = 6, 32
STACK_BYTES = 1024  # TVM (LowerTVMBuiltin) puts "global" allocations below this on the stack


class Matmul:
    """Takes a matmul block (see common.is_matmul). B is read as contiguous column panels
    (re-laid out per call unless pre-packed), a TILE_I x TILE_J tile of C lives in vector
    registers across k, epilogues run when the tile is written back, column tiles run in
    parallel; a symbolic or ragged row count is padded to whole row tiles so the inner loop has
    no predicate.

    Loops: parallel (batch, column tile[, row tile]) > row tile > k > TILE_I rows (unrolled) >
    tile_j columns (unrolled vectors of PANEL lanes). The tile of C is a small buffer that LLVM
    keeps in vector registers across k; epilogues (bias, activation, residual) are applied when
    the tile is written back, so C goes to memory once. The tile is a "global" buffer, not a
    "local" one: TVM places global allocations under STACK_BYTES on the stack (an alloca), but
    gets local ones from its workspace pool; LLVM cannot tell a pool pointer from A or B when
    the kernel's arguments are not marked noalias (as with symbolic shapes), and then stores
    the whole tile on every k step."""

    def apply(self, sch, info, target) -> bool:
        if not is_matmul(sch, info):
            return False
        block = info.block_rv
        packed = _b_operand(sch.get(block)) is None  # B already in panels (MatMulPacked)
        n = static(info.iters[-2].dom)
        tile_j = _tile_cols(n, packed, min(TILE_J, 2 * vector_lanes(target)))
        padded = _pad_to_tiles(sch, block, static(info.iters[-3].dom), n, tile_j)
        panel = None if packed else _b_operand(sch.get(block))
        writeback = _fold_epilogues(sch, sch.cache_write(block, 0, "global"))
        *batch, i, j, k = sch.get_loops(block)
        io, ii = sch.split(i, [None, TILE_I])
        # a tile row is tile_j / PANEL vectors of PANEL lanes: each is one contiguous panel row
        # (a wider vector would straddle two panels of pre-packed B and become a gather)
        jo, jp, ji = sch.split(j, [None, tile_j // PANEL, PANEL])
        sch.reorder(*batch, jo, io, k, ii, jp, ji)
        sch.reverse_compute_at(writeback, io)
        repack = panel is not None and n is not None and -(-n // tile_j) > 1
        if repack:  # plain B, several column tiles: parallel over them, pack each one's panel
            # (a K x tile_j slice of a row-major B maps to a handful of L1 sets: every access
            # would miss)
            outer = sch.fuse(*batch, jo) if batch else jo
            sch.parallel(outer)
            b_pad = padded.pop(_read(sch, _pack_panel(sch, block, panel, outer, tile_j)), None)
            if b_pad is not None:  # zero columns added to B: fill them while packing
                sch.compute_inline(b_pad)
        else:  # B pre-packed, one panel or symbolic N: share out (column, row) tiles, columns outer
            outer = sch.fuse(*batch, jo, io)  # so that one column panel serves many row tiles
            sch.parallel(outer)
        for pad in padded.values():  # A with zero rows: one copy before the matmul (copied per
            _parallel_copy(sch, pad)  # row tile, it is redone for every column tile: slow)
        sch.unroll(ii)
        sch.unroll(jp)
        sch.vectorize(ji)
        sch.decompose_reduction(block, k)
        sch.vectorize(sch.get_loops(writeback)[-1])
        return True


def _parallel_copy(sch, block) -> None:
    """Rows of a copy in parallel, each row vectorised (the row length is static: K)."""
    *rows, cols = sch.get_loops(block)
    sch.parallel(sch.fuse(*rows) if len(rows) > 1 else rows[0])
    sch.vectorize(sch.split(cols, [None, VECTOR])[-1])


def _tile_cols(n, packed: bool, widest: int) -> int:
    """Columns per register tile: `widest` (two of the target's vectors), or one panel (PANEL)
    where a static N is not a multiple of it but of PANEL (and always for pre-packed B then:
    padding it would copy the whole weight on every call)."""
    if n is None or n % widest == 0 or (n % PANEL and not packed):
        return widest
    return PANEL


def _pad_to_tiles(sch, block, rows, n, tile_j) -> dict:
    """Pad C's rows to a multiple of TILE_I (and N to one of tile_j) with pad_einsum: A gets
    zero rows, B zero columns, C extra rows and columns that the write-back drops. With a
    symbolic or ragged row count the last row tile would otherwise carry a predicate (T.where)
    inside the k loop, and a predicated tile buffer is not compacted to the tile (nor kept in
    registers): it is allocated at C's full size. pad_einsum needs plain B indices, so pre-packed B
    (Bp[j // P, k, j % P]) is first read through a plain [N, K] view (reindex) and read
    directly again afterwards.
    Returns the padded copies of the inputs, keyed by the buffer each one copies."""
    pad_rows = rows is None or rows % TILE_I != 0
    # a symbolic N too (activation x activation, q @ k^T): the last column tile would carry a
    # predicate, the tile buffer would not be compacted (C-sized) nor kept in registers
    pad_cols = n is None or n % tile_j != 0
    if not (pad_rows or pad_cols):
        return {}
    view = None
    if _b_operand(sch.get(block)) is None:
        view = sch.reindex(block, ("read", _packed_b_operand(sch.get(block))))
    lead = len(sch.get_loops(block)) - 3
    sch.pad_einsum(block, [1] * lead + [TILE_I if pad_rows else 1, tile_j if pad_cols else 1, 1])
    if view is not None:
        sch.compute_inline(view)
    return {_written(sch, p): p for p in sch.get_producers(block)
            if sch.get(p).name_hint.endswith("_pad")}


def _packed_b_operand(block) -> int:
    """Index of B among the block's reads: the operand not indexed by the row iterator i."""
    i = block.iter_vars[-3].var
    for idx, region in enumerate(block.reads):
        used = {v for r in region.region for v in tirx.analysis.undefined_vars(r.min, [])}
        if not any(v.same_as(i) for v in used):
            return idx
    raise ValueError("no B operand")


def _written(sch, block):
    return sch.get(block).writes[0].source


def _read(sch, block):
    return sch.get(block).reads[0].source


def _fold_epilogues(sch, writeback):
    """Make the block that writes the local tile back also apply every epilogue (and drop the
    padded rows). Returns that block."""
    consumers = sch.get_consumers(writeback)
    if len(consumers) == 1 and sch.get(writeback).writes[0].source.name.endswith("_pad"):
        # padded: the write-back fills C_pad and a copy drops the padding; write C directly
        sch.compute_inline(writeback)
        writeback = consumers[0]
    while any(try_primitive(sch.reverse_compute_inline, c) for c in sch.get_consumers(writeback)):
        pass  # an epilogue that is not inlinable (not pure elementwise) stays a kernel
    return writeback


def _b_operand(block) -> int | None:
    """Index (among the block's reads) of B, the operand indexed by j and k but not i, when it
    is a plain [..., K, N] or [..., N, K] buffer (not already pre-packed into panels)."""
    i, j, _ = [iv.var for iv in block.iter_vars][-3:]
    for idx, region in enumerate(block.reads):
        indices = [r.min for r in region.region]
        used = {v for e in indices for v in tirx.analysis.undefined_vars(e, [])}
        if any(v.same_as(i) for v in used) or not any(v.same_as(j) for v in used):
            continue
        last_two = indices[-2:]
        plain = len(indices) >= 2 and all(isinstance(e, tirx.Var) for e in last_two)
        return idx if plain else None
    return None


def _pack_panel(sch, block_rv, read_index, at_loop, width):
    """Copy B's K x `width` column panel to a contiguous buffer at the start of each panel's
    iteration (layout [..., N/width, K, width] for B stored as [..., K, N] or [..., N, K])."""
    pack = sch.cache_read(block_rv, read_index, "global")
    sch.compute_at(pack, at_loop)
    ndim = len(sch.get(pack).writes[0].region)
    transposed = _reads_transposed(sch.get(block_rv), read_index)

    def panels(*idx):
        *lead, r, c = idx
        kk, nn = (c, r) if transposed else (r, c)
        return (*lead, nn // width, kk, nn % width)

    sch.transform_layout(pack, ("write", 0),
                         IndexMap.from_func(panels, ndim=ndim, index_dtype="int64"))
    if not transposed:  # contiguous 16-float rows of the panel
        sch.vectorize(sch.get_loops(pack)[-1])
    return pack


def _reads_transposed(block, read_index) -> bool:
    """B read as B[..., j, k] (e.g. q @ k^T) rather than B[..., k, j]."""
    j = block.iter_vars[-2].var
    first = block.reads[read_index].region[-2].min
    return isinstance(first, tirx.Var) and first.same_as(j)
