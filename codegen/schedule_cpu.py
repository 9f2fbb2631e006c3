"""sbc's CPU schedules: every fused PrimFunc -> a parallel, vectorised (and for matmuls, tiled)
PrimFunc marked `tirx.is_scheduled`.

TVM's default CPU pipeline schedules nothing (kernels run single-threaded, scalar, untiled), and
`s_tir.dlight.cpu` only knows GEMV and reductions. Per PrimFunc: injective producers are
inlined into their consumers and injective epilogues into their producers; then each remaining
block gets the first rule that applies, in order:

  matmul      C[..., i, j] += A[..., i, k] * B[..., k, j] (S..SSR; B may be transposed or
              pre-packed): B is re-laid out into [N/16, K, 16] column panels, a 6 x 16 tile of
              C lives in vector registers across k, epilogues run when the tile is written back,
              column panels run in parallel; full row tiles are split from the partial last one
              so a symbolic row count costs no predicate in the inner loop
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
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.tirx import IndexMap

log = logging.getLogger(__name__)

SCHEDULED = "tirx.is_scheduled"  # the attribute dlight and MetaSchedule check
VECTOR = 16  # fp32 lanes per innermost chunk (2 AVX2 registers; LLVM splits as needed)
TILE_I, TILE_J = 6, 16  # register tile: 6 x 16 fp32 = 12 of the 16 AVX2 registers


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
    return sch.mod["main"]


def _block_info(sch, name):
    """The dlight block info for block `name` (infos go stale as the schedule changes)."""
    return next((b for b in normalize_prim_func(sch) or [] if b.name == name), None)


def _inline_injective(sch) -> None:
    """Inline data-parallel producers into consumers, then epilogues into their producers."""
    for info in reversed(normalize_prim_func(sch) or []):
        if info.is_injective() and not _is_output(sch, info.block_rv):
            _try(sch.compute_inline, info.block_rv)
    for info in normalize_prim_func(sch) or []:
        if info.is_injective():
            _try(sch.reverse_compute_inline, info.block_rv)


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


def _matmul(sch, info) -> bool:
    """Register-tiled GEMM. Loops: parallel (batch, column panel) > row tile > k > 6 rows
    (unrolled) > 16 columns (vectorised). The 6 x 16 tile of C is a local buffer that LLVM keeps
    in registers; B's panel is copied to a contiguous K x 16 buffer first (a K x 16 slice of a
    row-major B maps to a handful of L1 sets: every access would miss), and epilogues (bias,
    activation, residual) are applied when the tile is written back, so C goes to memory once.
    A row count that is symbolic or not a multiple of 6 is padded (a copy of A's row tile with
    zero rows): predicates inside the k loop would keep the tile out of registers. Pre-packed
    weights (MatMulPacked) defeat TVM's padding; there the build's loop partitioning splits the
    whole row tiles from the predicated last one instead."""
    kinds = info.dom_kind()
    if not (kinds.endswith("SSR") and set(kinds[:-3]) <= {"S"} and info.is_reduction()):
        return False
    block = info.block_rv
    if len(sch.get(block).reads) != 2 or len(sch.get(block).writes) != 1:
        return False
    rows, n = _static(info.iters[-3].dom), _static(info.iters[-2].dom)
    pad_rows = rows is None or rows % TILE_I != 0
    pad_cols = n is not None and n % TILE_J != 0
    if (pad_rows or pad_cols) and _b_operand(sch.get(block)) is not None:
        sch.pad_einsum(block, [1] * (len(kinds) - 3) + [TILE_I if pad_rows else 1,
                                                         TILE_J if pad_cols else 1, 1])
    padded_inputs = {_written(sch, p): p for p in sch.get_producers(block)
                     if sch.get(p).name_hint.endswith("_pad")}
    panel = _b_operand(sch.get(block))
    writeback = _fold_epilogues(sch, sch.cache_write(block, 0, "local"))
    *batch, i, j, k = sch.get_loops(block)
    io, ii = sch.split(i, [None, TILE_I])
    jo, ji = sch.split(j, [None, TILE_J])
    sch.reorder(*batch, jo, io, k, ii, ji)
    sch.reverse_compute_at(writeback, io)
    n_padded = n if n is None else -(-n // TILE_J) * TILE_J
    packs = panel is not None and n is not None and n_padded > TILE_J
    if packs:  # enough column panels to share out: parallel over them, pack each one
        outer = sch.fuse(*batch, jo) if batch else jo
        sch.parallel(outer)
        pack = _pack_panel(sch, block, panel, outer)
        b_pad = padded_inputs.pop(_read(sch, pack), None)
        if b_pad is not None:  # zero columns added to B: fill them while packing
            sch.compute_inline(b_pad)
    else:  # one panel, or a symbolic N: parallel over row tiles too
        outer = sch.fuse(*batch, jo, io)
        sch.parallel(outer)
    for pad in padded_inputs.values():  # A's row tile with zero rows, copied next to its use
        sch.compute_at(pad, io if packs else outer)
        sch.vectorize(sch.split(sch.get_loops(pad)[-1], [None, 8])[-1])
    sch.unroll(ii)
    sch.vectorize(ji)
    sch.decompose_reduction(block, k)
    sch.vectorize(sch.get_loops(writeback)[-1])
    return True


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


def _pack_panel(sch, block_rv, read_index, at_loop) -> None:
    """Copy B's K x 16 column panel to a contiguous buffer at the start of each panel's
    iteration (layout [..., N/16, K, 16] for B stored as [..., K, N] or [..., N, K])."""
    pack = sch.cache_read(block_rv, read_index, "global")
    sch.compute_at(pack, at_loop)
    ndim = len(sch.get(pack).writes[0].region)
    transposed = _reads_transposed(sch.get(block_rv), read_index)

    def panels(*idx):
        *lead, r, c = idx
        kk, nn = (c, r) if transposed else (r, c)
        return (*lead, nn // TILE_J, kk, nn % TILE_J)

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
    if not info.is_injective():
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


def _fallback(sch, info) -> bool:
    """Anything else (e.g. a scan): at least its outermost loop in parallel, if that is legal."""
    loops = sch.get_loops(info.block_rv)
    if not loops or info.dom_kind()[:1] != "S":
        return False
    sch.parallel(loops[0])
    return True


RULES = (_matmul, _spatial, _reduction, _fallback)
