"""sbc's CPU schedules: every fused PrimFunc -> a parallel, vectorised (and for matmuls, tiled)
PrimFunc marked `tirx.is_scheduled`.

TVM's default CPU pipeline schedules nothing (kernels run single-threaded, scalar, untiled), and
`s_tir.dlight.cpu` only knows GEMV and reductions. Per PrimFunc: injective producers are
inlined into their consumers and injective epilogues into their producers; then each remaining
block gets the first rule that applies, in order:

  matmul      C[..., i, j] += A[..., i, k] * B[..., k, j] (S..SSR; B may be transposed or
              pre-packed): B is read as contiguous column panels (re-laid out per call unless
              pre-packed), a 6 x 32 tile of C lives in vector registers across k, epilogues run
              when the tile is written back, column tiles run in parallel; a symbolic or ragged
              row count is padded to whole row tiles so the inner loop has no predicate
  spatial     all loops data-parallel: outer loops fused + parallel, innermost split by the
              vector width and vectorised
  reduction   leading data-parallel loops fused + parallel; the reduction stays serial
  fallback    the outermost data-parallel loop in parallel

A rule that raises is undone and the next one tried, so scheduling can leave a kernel slow but
never breaks compilation. Use `schedule_cpu(mod, target)` or the pass `ScheduleCPU(target)`.
"""

from __future__ import annotations

import logging

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.tirx import IndexMap

from sbc.ir.ops.nn import PANEL  # pre-packed B's panel width

log = logging.getLogger(__name__)

SCHEDULED = "tirx.is_scheduled"  # the attribute dlight and MetaSchedule check
VECTOR = 16  # fp32 lanes per innermost chunk (2 AVX2 registers; LLVM splits as needed)
# register tile: 6 x 32 fp32 = 12 zmm accumulators (of 32), 2 B vectors and 6 broadcasts of A
# per k step: enough independent FMAs to keep both FMA pipes busy. It must stay under
# STACK_BYTES (see _matmul); 12 x 32 would not fit.
TILE_I, TILE_J = 6, 32
STACK_BYTES = 1024  # TVM (LowerTVMBuiltin) puts "global" allocations below this on the stack


def schedule_cpu(mod: tvm.IRModule, target: tvm.target.Target | None = None) -> tvm.IRModule:
    """Schedule every PrimFunc of `mod` that is not scheduled yet; mark what it schedules."""
    updates = {}
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and not is_scheduled(func):
            scheduled = schedule_func(func)
            if scheduled is not None:
                updates[gv] = scheduled.with_attr(SCHEDULED, True)
    if not updates:
        return mod
    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    for gv, func in updates.items():
        out[gv] = func
    return out


@tvm.transform.module_pass(opt_level=0, name="sbc.ScheduleCPU")
class ScheduleCPU:
    """`schedule_cpu` as a module pass, for a `tvm.transform.Sequential`."""

    def __init__(self, target: tvm.target.Target | None = None):
        self.target = target

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return schedule_cpu(mod, self.target)


def is_scheduled(func: tirx.PrimFunc) -> bool:
    return func.attrs is not None and SCHEDULED in func.attrs and bool(func.attrs[SCHEDULED])


def schedule_func(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """The scheduled PrimFunc, or None where the function has no schedulable block structure."""
    try:
        sch = s_tir.Schedule(func)
        if normalize_prim_func(sch) is None:  # opaque or irregular: leave it to TVM
            return None
        _inline_injective(sch)
        blocks = normalize_prim_func(sch) or []
    except Exception as e:  # never let analysis break compilation
        log.debug("cannot analyse PrimFunc: %s", e)
        return None
    if _row_reduction_fits(sch, blocks):
        snapshot = sch.copy()
        try:
            _row_reduction(sch, blocks)
            return _hoist_inits(sch).mod["main"]
        except Exception as e:  # undo, schedule block by block
            log.debug("row reduction failed: %s", e)
            sch = snapshot
    for name in [b.name for b in blocks]:
        for rule in RULES:
            snapshot = sch.copy()
            try:
                info = _block_info(sch, name)
                if info is not None and rule(sch, info):
                    break
            except Exception as e:  # the rule does not fit this block: undo, try the next
                log.debug("rule %s failed on block %s: %s", rule.__name__, name, e)
                sch = snapshot
    return _hoist_inits(sch).mod["main"]


def _hoist_inits(sch):
    """Move each reduction's init out of its reduction loops. TIR runs a block's init at the
    first reduction step, so over an empty axis (a symbolic dim fed 0, a slice emptied it)
    there is none and the output would be left uninitialised; before the loops it always
    runs, and the reduction over nothing gives the identity, as ONNX says."""
    for realize in _reductions(sch.mod["main"]):
        block = sch.get_sblock(realize.block.name_hint)
        reduce_vars = {v.name for iv, value in zip(realize.block.iter_vars, realize.iter_values)
                       if iv.iter_type == tirx.IterVar.CommReduce for v in _vars(value)}
        loop = next((lp for lp in sch.get_loops(block) if sch.get(lp).loop_var.name in reduce_vars), None)
        if loop is not None:
            _try(sch.decompose_reduction, block, loop)
    return sch


def _reductions(func) -> list:
    """The SBlockRealizes of the blocks that still have an init."""
    found = []
    tvm_ffi.structural_walk(func.body, (s_tir.SBlockRealize, found.append))
    return [r for r in found if r.block.init is not None]


def _vars(expr) -> list:
    found = []
    tvm_ffi.structural_walk(expr, (tirx.Var, found.append))
    return found


def _block_info(sch, name):
    """The dlight block info for block `name` (infos go stale as the schedule changes)."""
    return next((b for b in normalize_prim_func(sch) or [] if b.name == name), None)


def _inline_injective(sch) -> None:
    """Inline data-parallel producers into consumers, then epilogues into their producers."""
    for info in reversed(normalize_prim_func(sch) or []):
        if _injective(info) and not _is_output(sch, info.block_rv):
            _try(sch.compute_inline, info.block_rv)
    for info in normalize_prim_func(sch) or []:
        if _injective(info) and not _reads_reduction(sch, info.block_rv):
            _try(sch.reverse_compute_inline, info.block_rv)


def _injective(info) -> bool:
    """Every iterator data-parallel and no reduction init. NormalizePrimFunc drops unit loops,
    so a reduction over length-1 axes (a mean over a dim of 1, a matmul with K = 1) has only
    "S" iterators but keeps its init and reads what it writes: not elementwise."""
    return info.is_injective() and not info.is_reduction()


def _reads_reduction(sch, block) -> bool:
    """A producer of `block` has a reduction init. TVM refuses to inline an epilogue into a
    reduction, except into one left with no reduction loop (see _injective): there it applies
    the epilogue to both the init and the update, exp(exp(0) + x) for Exp(ReduceMean(x))."""
    return any(sch.get(p).init is not None for p in sch.get_producers(block))


def _try(primitive, *args) -> bool:
    """Apply a schedule primitive that may legitimately not apply (e.g. a block reading itself)."""
    try:
        primitive(*args)
        return True
    except Exception:  # the schedule state is unchanged when a primitive refuses
        return False


def _is_output(sch, block) -> bool:
    outputs = sch.get_output_blocks(sch.get_sblock("root"))
    return any(sch.get(block).same_as(sch.get(b)) for b in outputs)


def _static(extent) -> int | None:
    return int(extent) if isinstance(extent, (int, tirx.IntImm)) else None


# ---------------------------------------------------------------------------------------------
# matmul


def _is_matmul(sch, info) -> bool:
    """C[..., i, j] += A[..., i, k] * B[..., k, j]-like: S..SSR over two operands."""
    kinds = info.dom_kind()
    block = sch.get(info.block_rv)
    return (kinds.endswith("SSR") and set(kinds[:-3]) <= {"S"} and info.is_reduction()
            and len(block.reads) == 2 and len(block.writes) == 1)


def _matmul(sch, info) -> bool:
    """Register-tiled GEMM. Loops: parallel (batch, column tile[, row tile]) > row tile > k >
    TILE_I rows (unrolled) > tile_j columns (unrolled vectors of PANEL lanes). The tile of C
    is a small buffer that LLVM keeps in vector registers across k; epilogues (bias,
    activation, residual) are applied when the tile is written back, so C goes to memory
    once. The tile is a "global" buffer, not a "local" one: TVM places global allocations
    under STACK_BYTES on the stack (an alloca), but gets local ones from its workspace pool;
    LLVM cannot tell a pool pointer from A or B when the kernel's arguments are not marked
    noalias (as with symbolic shapes), and then stores the whole tile on every k step."""
    if not _is_matmul(sch, info):
        return False
    block = info.block_rv
    packed = _b_operand(sch.get(block)) is None  # B already in panels (MatMulPacked)
    n = _static(info.iters[-2].dom)
    tile_j = _tile_cols(n, packed)
    padded = _pad_to_tiles(sch, block, _static(info.iters[-3].dom), n, tile_j)
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


def _tile_cols(n, packed: bool) -> int:
    """Columns per register tile: TILE_J, or one panel (PANEL) where a static N is not a
    multiple of TILE_J but of PANEL (and always for pre-packed B then: padding it would copy
    the whole weight on every call)."""
    if n is None or n % TILE_J == 0 or (n % PANEL and not packed):
        return TILE_J
    return PANEL


def _pad_to_tiles(sch, block, rows, n, tile_j) -> dict:
    """Pad C's rows to a multiple of TILE_I (and a static N to one of tile_j) with pad_einsum:
    A gets zero rows, C extra rows that the write-back drops. With a symbolic or ragged row
    count the last row tile would otherwise carry a predicate (T.where) inside the k loop,
    and a predicated tile buffer is not compacted to the tile (nor kept in registers): it is
    allocated at C's full size. pad_einsum needs plain B indices, so pre-packed B
    (Bp[j // P, k, j % P]) is first read through a plain [N, K] view (reindex) and read
    directly again afterwards.
    Returns the padded copies of the inputs, keyed by the buffer each one copies."""
    pad_rows = rows is None or rows % TILE_I != 0
    pad_cols = n is not None and n % tile_j != 0
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
    while any(_try(sch.reverse_compute_inline, c) for c in sch.get_consumers(writeback)):
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


# ---------------------------------------------------------------------------------------------
# data-parallel blocks and reductions


def _spatial(sch, info) -> bool:
    """Data-parallel block. With a static innermost dim, only the outer loops are fused (index
    math per row, not per element: fusing a symbolic extent costs an int64 div/mod per
    element); otherwise everything is fused and split by the vector width (TVM predicates the
    last chunk)."""
    if not _injective(info):
        return False
    loops = sch.get_loops(info.block_rv)
    inner = _static(info.iters[-1].dom)
    if len(loops) > 1 and inner is not None and inner >= 8:
        outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
        sch.parallel(outer)
        _, vec = sch.split(loops[-1], [None, VECTOR if inner % VECTOR == 0 or inner > 64 else 8])
        sch.vectorize(vec)
        return True
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    outer, inner_loop = sch.split(fused, [None, VECTOR])
    sch.parallel(outer)
    sch.vectorize(inner_loop)
    return True


def _reduction(sch, info) -> bool:
    """Row-wise reduction (softmax's max/sum, mean, norms, cumsum): rows in parallel."""
    kinds = info.dom_kind()
    lead = len(kinds) - len(kinds.lstrip("S"))
    if lead == 0 or not info.is_reduction():
        return False
    loops = sch.get_loops(info.block_rv)
    outer = sch.fuse(*loops[:lead]) if lead > 1 else loops[0]
    sch.parallel(outer)
    return True


def _row_reduction_fits(sch, blocks) -> bool:
    """A row-wise kernel: reductions over the trailing axes with per-row and per-element
    blocks around them (norms, softmax, the spike encoder), no matmul, the last block
    injective, and every block touching only its own row of the buffers the kernel writes
    (so rows are independent: in parallel they cannot race)."""
    if len(blocks) < 2 or all(_injective(b) for b in blocks) or not _injective(blocks[-1]):
        return False
    if any(_is_matmul(sch, b) for b in blocks):
        return False
    lead = _row_dims(blocks)
    written = {w.source for b in blocks for w in sch.get(b.block_rv).writes}
    return lead > 0 and all(_own_row(sch.get(b.block_rv), lead, written) for b in blocks)


def _row_dims(blocks) -> int:
    """The number of leading data-parallel iterators all blocks share (the row index)."""
    return min(len(b.dom_kind()) - len(b.dom_kind().lstrip("S")) for b in blocks)


def _own_row(block, lead: int, written) -> bool:
    """Every access of `block` to a buffer in `written` is at the row of its first `lead`
    iterators: those, in order, are the access's leading non-constant indices."""
    row = [iv.var for iv in block.iter_vars[:lead]]
    for region in list(block.reads) + list(block.writes):
        if region.source not in written:
            continue  # inputs may be read anywhere (a norm's weight, a whole row of x)
        index = [r.min for r in region.region if not isinstance(r.min, tirx.IntImm)]
        if len(index) < lead or any(not (isinstance(e, tirx.Var) and e.same_as(v))
                                     for e, v in zip(index, row)):
            return False
        if any(_static(r.extent) != 1 for r in region.region[:len(index)][:lead]):
            return False
    return True


def _row_reduction(sch, blocks) -> None:
    """Rows in parallel, every block under its row's iteration (the second pass over a row
    reads it from cache; one parallel region per kernel), the per-element blocks vectorised.
    The reductions stay serial: their summation order is the reference's."""
    lead = _row_dims(blocks)
    loops = sch.get_loops(blocks[0].block_rv)
    rows = sch.fuse(*loops[:lead]) if lead > 1 else loops[0]
    sch.parallel(rows)
    # the later blocks move under the first one's row loop, not the earlier ones under the
    # last one's: compute_at refuses blocks that write an output (the encoder's threshold)
    for info in blocks[1:]:
        sch.reverse_compute_at(info.block_rv, rows, preserve_unit_loops=True)
    for info in blocks:
        if _injective(info) and _vectorizable(sch.get(info.block_rv)):
            _vectorize_inner(sch, info.block_rv)
        # else the loop stays whole: TVM would vectorise it lane by lane (scalar calls and a
        # scatter store, 2x slower for the encoder's nearbyint); LLVM's loop vectoriser does
        # not


def _vectorizable(block) -> bool:
    """TVM can vectorise every call in the block (tirx.nearbyint, for one, it cannot)."""
    calls = []
    tvm_ffi.structural_walk(block.body, (tvm.ir.Call, calls.append))
    return all(c.op.get_attr("TVectorizable") for c in calls if isinstance(c.op, tvm.ir.Op))


def _vectorize_inner(sch, block) -> None:
    """Vectorise a block's innermost loop below the row loop (if it has one longer than 1)."""
    loops = sch.get_loops(block)[1:]
    if not loops:
        return
    extent = _static(sch.get(loops[-1]).extent)
    if extent == 1:
        return
    if extent is not None and extent <= VECTOR:
        sch.vectorize(loops[-1])
        return
    width = VECTOR if extent is None or extent % VECTOR == 0 or extent > 64 else 8
    sch.vectorize(sch.split(loops[-1], [None, width])[-1])


def _fallback(sch, info) -> bool:
    """Anything else (e.g. a scan): at least its outermost loop in parallel, if that is legal."""
    loops = sch.get_loops(info.block_rv)
    if not loops or info.dom_kind()[:1] != "S":
        return False
    sch.parallel(loops[0])
    return True


RULES = (_matmul, _spatial, _reduction, _fallback)
