"""PrimFunc rule for row-wise kernels (norms, softmax, the spike encoder): parallel loops over
rows hold every block of the kernel (one loop, or one per vectorised reduction)."""

from __future__ import annotations

import logging

import tvm

import tvm_ffi
from tvm import s_tir, tirx

from sbc.codegen.schedule_cpu.column_reduction import contiguous_along_last_spatial
from sbc.codegen.schedule_cpu.common import (COMPUTED_ONCE, VECTOR, hoist_inits, injective,
                                              is_matmul, partition_tail, prepare, static,
                                              try_primitive)
from sbc.codegen.schedule_cpu.vector_rewrites import vector_rewrites

log = logging.getLogger(__name__)


class RowReduction:
    """Takes a PrimFunc made of reductions over the trailing axes with per-row and per-element
    blocks around them, no matmul, the last block injective, and every block touching only its
    own row of the buffers the kernel writes (so rows are independent: in parallel they cannot
    race). Rows run in parallel, every block under its row's iteration (the second pass over a
    row reads it from cache; one parallel region per kernel), the per-element blocks
    vectorised.

    Kernels that do not round (softmax, norms; not the spike encoder, whose threshold must be
    summed in the reference's order, or a value on a rounding boundary could flip) get rsqrt
    as 1 / sqrt (vector_rewrites), so that their per-element blocks vectorise, and their
    reductions over one trailing axis vectorise too: each keeps VECTOR partial results per
    row (rfactor over lanes, combined at the end of the row, as MLAS does), under the row
    loop with the rest where rows are whole vectors and the kernel stores a row for its later
    blocks (softmax's exp), else in a parallel pass over the rows of its own (see
    _schedule_rows). A vectorised loop over a symbolic
    length is split by LoopPartition (pragma_loop_partition_hint) into whole vectors and a
    remainder: with the predicate inside, TVM would emit it lane by lane.
    Returns None where the PrimFunc does not fit, or the schedule fails (then `sch` is left as
    it was, for the next rule)."""

    def apply(self, sch, blocks, target):
        if not _fits(sch, blocks):
            return None
        if not any(_rounds(sch.get(b.block_rv)) for b in blocks):
            try:
                fast = prepare(vector_rewrites(sch.mod["main"]))
                if fast is not None and len(fast[1]) == len(blocks):
                    _schedule_rows(fast[0], fast[1], lanes=True)
                    return _rows_stored_in_the_output(hoist_inits(fast[0]))
            except Exception as e:
                log.debug("row reduction with vector rewrites failed: %s", e)
        scheduled = sch.copy()  # `sch` stays as it is for the next rule, should this fail
        try:
            _schedule_rows(scheduled, blocks)
            return _rows_stored_in_the_output(hoist_inits(scheduled))
        except Exception as e:
            log.debug("row reduction failed: %s", e)
            return None


def _fits(sch, blocks) -> bool:
    if len(blocks) < 2 or all(injective(b) for b in blocks) or not injective(blocks[-1]):
        return False
    if any(is_matmul(sch, b) for b in blocks):
        return False
    if any(not injective(b) and contiguous_along_last_spatial(sch.get(b.block_rv), b)
           for b in blocks):  # a sum over a non-last axis: ColumnReduction's
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
        if any(static(r.extent) != 1 for r in region.region[:len(index)][:lead]):
            return False
    return True


def _schedule_rows(sch, blocks, lanes: bool = False) -> None:
    lead = _row_dims(blocks)
    order = []  # (block, kind) in program order; kind: "map", "reduce" or "lanes" (rfactor)
    for info in blocks:
        if injective(info):
            order.append((info.block_rv, "map"))
        elif lanes and info.dom_kind().count("R") == 1 and info.dom_kind().endswith("R") and (
                _whole_vectors(info) or _can_lanes(sch, info.block_rv, lead)):
            # VECTOR partial results per row: rf[row, lane] += x[row, r * VECTOR + lane], then
            # the row's result is the sum (max, ...) of its lanes. rfactor refuses a block
            # under a loop that holds other blocks: it comes before compute_at.
            rf = _lanes(sch, info.block_rv)
            order += [(rf, "lanes" if _whole_vectors(info) else "ragged lanes"),
                      (info.block_rv, "reduce")]
        else:
            order.append((info.block_rv, "reduce"))
    rows = None
    one_pass = any(COMPUTED_ONCE in sch.get(b.block_rv).annotations for b in blocks)
    for block, kind in order:
        # the later blocks move under the row loop, not the earlier ones under a later block's:
        # compute_at refuses blocks that write an output (the encoder's threshold). An rfactor
        # block over ragged rows is never moved: compute_at and reverse_compute_at drop its
        # predicate (the lanes past the row's end would add the next row's elements), so it
        # starts a parallel pass over the rows of its own; so does a block that reads from two
        # such passes (reverse_compute_at wants all its producers under the loop). One over
        # rows of whole vectors moves there too in a kernel that stores a row for later
        # blocks (softmax's exp, COMPUTED_ONCE): passes of their own would need that row
        # stored for the whole tensor; elsewhere (norms) it keeps its pass, as measured before
        # (one pass was not measurably faster on the shared 2-core machine)
        if rows is None or kind == "ragged lanes" or (kind == "lanes" and not one_pass) or \
                not try_primitive(sch.reverse_compute_at, block, rows, True):
            rows = _row_loop(sch, block, lead, decompose=kind == "ragged lanes")
    for block, kind in order:
        if kind.endswith("lanes"):
            chunks, lane = _chunk_and_lane_loops(sch, block)
            sch.reorder(chunks, lane)  # moved under the row loop, the lane loop came first
            sch.vectorize(lane)
            partition_tail(sch, chunks)
        elif kind == "map" and _vectorizable(sch.get(block)):
            _vectorize_inner(sch, block)
        # else the loop stays whole: TVM would vectorise it lane by lane (scalar calls and a
        # scatter store, 2x slower for the encoder's nearbyint); LLVM's loop vectoriser does
        # not
    _compute_stored_rows_in_their_sums(sch, order)


def _compute_stored_rows_in_their_sums(sch, order) -> None:
    """A vectorised block that stores its row for later blocks (COMPUTED_ONCE: softmax's exp)
    and is read by a whole-vector lanes reduction (the sum): that reduction moves into the
    block's loop over vectors, each vector added to the partial sums as soon as it is computed:
    exp and sum in one pass over the row, as MLAS does, instead of one pass that stores exp
    and one that reads it back."""
    for i, (block, kind) in enumerate(order):
        if kind != "map" or COMPUTED_ONCE not in sch.get(block).annotations:
            continue
        written = sch.get(block).writes[0].source
        consumer = next((b for b, k in order[i + 1:] if k == "lanes" and any(
            r.source.same_as(written) for r in sch.get(b).reads)), None)
        if consumer is None or len(sch.get_loops(block)) < 2:
            continue
        if try_primitive(sch.reverse_compute_at, consumer, sch.get_loops(block)[-2], True):
            sch.vectorize(_chunk_and_lane_loops(sch, consumer)[1])


def _rows_stored_in_the_output(sch):
    """The schedule with an intermediate that the last block reads only at the element it
    writes of the output (softmax's exp, which the last block divides by the row's sum)
    stored in the output itself, as MLAS writes exp into the output and scales it in place.
    The intermediate's row no longer comes from TVM's workspace pool per row (8 KB at
    T = 2048), and a row takes two rows of L1, not three: [1, 4, 2048, 2048] 9.1 -> 7.0 ms.

    An intermediate padded past the output's extent with a constant (softmax over a symbolic
    length pads exp to whole vectors with 0) is stored there too: its writer stores only
    within the output, and its other readers read the constant past the output's end
    (LoopPartition takes both conditions out of all but the last vector).

    Safe because of how _schedule_rows places the blocks: the last block runs after every
    other block of its row (under the row loop, after them, or in a later pass over the
    rows) and rows are independent (_fits); it is checked here that the last block is the
    only one that writes the output and that it reads the intermediate only at the element
    it writes. So every read of the intermediate at an element comes before the last block
    overwrites it. Returns `sch` where nothing fits."""
    func = sch.mod["main"]
    root = func.body.block
    blocks = []
    tvm_ffi.structural_walk(func.body, (s_tir.SBlock, blocks.append), order="pre")
    last = blocks[-1]
    if len(last.writes) != 1:
        return sch
    out = last.writes[0]
    stored = [r.source for r in last.reads if any(a.same_as(r.source) for a in root.alloc_buffers)
              and r.source.ty.dtype == out.source.ty.dtype
              and all(tvm_ffi.structural_equal(o.region, out.region)
                      for o in last.reads if o.source.same_as(r.source))]
    writers = lambda buffer: [b for b in blocks  # noqa: E731
                              if any(w.source.same_as(buffer) for w in b.writes)]
    row, output = (stored or [None])[0], out.source
    row_writers = writers(row) if stored else []
    if len(row_writers) != 1 or len(writers(output)) != 1:
        return sch
    writer = row_writers[0]
    padding = _padding(row, output, writer)
    if padding is None:
        return sch
    inside = lambda indices: indices[padding[0]] < output.ty.shape[padding[0]]  # noqa: E731

    def guarded(load):  # a read past the output's extent gives the padding
        if not load.source.same_as(row):
            return load
        return tirx.if_then_else(inside(load.indices), load, padding[1])

    def block(b):
        body = b.body
        if padding and b.same_as(writer):  # if_then_else(inside, value, fill): value, inside
            body = tirx.IfThenElse(inside(body.indices),
                                   tirx.BufferStore(row, body.value.args[1], body.indices), None)
        elif padding and not b.same_as(last):
            body = tvm_ffi.structural_map(body, (tvm.ir.TensorLoad, guarded))
        return s_tir.SBlock(b.iter_vars, b.reads, b.writes, b.name_hint, body, b.init,
                            [a for a in b.alloc_buffers if not a.same_as(row)],
                            b.match_buffers, b.annotations)

    func = tvm_ffi.structural_map(func, (s_tir.SBlock, block), order="pre")
    return s_tir.Schedule(tvm_ffi.structural_map(
        func, (tirx.Var, lambda v: output if v.same_as(row) else v)))


def _padding(row, output, writer):
    """() where `row` has the output's shape; (dim, fill) where it is longer along one dim
    and `writer` stores `fill`, a constant, past the output's extent there
    (if_then_else(index < extent, value, fill)); None otherwise."""
    if len(row.ty.shape) != len(output.ty.shape):
        return None
    analyzer = tvm.sym.Analyzer()
    longer = [d for d, (r, o) in enumerate(zip(row.ty.shape, output.ty.shape))
              if not analyzer.can_prove_equal(r, o)]
    if not longer:
        return ()
    store = writer.body
    if len(longer) != 1 or not isinstance(store, tirx.BufferStore) or \
            not store.buffer.same_as(row):
        return None
    dim, value = longer[0], store.value
    if not (isinstance(value, tvm.ir.Call) and value.op.same_as(_IF_THEN_ELSE)
            and isinstance(value.args[2], (tirx.FloatImm, tirx.IntImm))):
        return None
    inside = store.indices[dim] < output.ty.shape[dim]
    return (dim, value.args[2]) if tvm_ffi.structural_equal(value.args[0], inside) else None


_IF_THEN_ELSE = tvm.ir.Op.get("prim.if_then_else")


def _chunk_and_lane_loops(sch, block):
    """The loops of an rfactor block over its chunks of the row (its reduction iterator) and
    over its lanes (the iterator indexing the last dim of its partial results)."""
    realize = _realize(sch, block)
    lane_var = realize.block.writes[0].region[-1].min
    chunks = lane = None
    for loop in sch.get_loops(block):
        var = sch.get(loop).loop_var
        for iv, value in zip(realize.block.iter_vars, realize.iter_values):
            if value.same_as(var):
                if iv.iter_type == tirx.IterVar.CommReduce:
                    chunks = loop
                elif iv.var.same_as(lane_var):
                    lane = loop
    return chunks, lane


def _realize(sch, block):
    """The SBlockRealize of `block` (its iterator bindings)."""
    found, target = [], sch.get(block)
    tvm_ffi.structural_walk(sch.mod["main"].body, (s_tir.SBlockRealize, found.append))
    return next(r for r in found if r.block.same_as(target))


def _whole_vectors(info) -> bool:
    """The reduction's extent is a multiple of VECTOR (static, or padded by vector_rewrites)."""
    extent = info.iters[-1].dom
    if static(extent) is not None:
        return static(extent) % VECTOR == 0
    return tvm.sym.Analyzer().can_prove_equal(tirx.floormod(extent, VECTOR), 0)


def _lanes(sch, block):
    """rfactor `block`'s reduction (its innermost loop) over VECTOR lanes; the rfactor block."""
    _, lane = sch.split(sch.get_loops(block)[-1], [None, VECTOR])
    return sch.rfactor(lane, factor_axis=len(sch.get(block).writes[0].region))


def _row_loop(sch, block, lead: int, decompose: bool):
    """A parallel loop over the rows from `block`'s leading loops. An rfactor block over a
    row that is not a whole number of vectors (`decompose`) gets its init before its chunk
    loop here, while it is alone under the row loop (decompose_reduction wants that):
    LoopPartition would otherwise split off the first chunk (where the init runs) rather than
    the last, predicated one."""
    loops = sch.get_loops(block)
    rows = sch.fuse(*loops[:lead]) if lead > 1 else loops[0]
    sch.parallel(rows)
    if decompose:
        init = sch.decompose_reduction(block, sch.get_loops(block)[-2])
        sch.vectorize(sch.get_loops(init)[-1])
    return rows


def _can_lanes(sch, block, lead: int) -> bool:
    """_lanes and _row_loop work where the row is not a whole number of vectors."""
    try:
        trial = sch.copy()
        _row_loop(trial, _lanes(trial, block), lead, decompose=True)
        return True
    except Exception:
        return False


_ROUNDING = {"tirx.nearbyint", "tirx.round", "tirx.floor", "tirx.ceil", "tirx.trunc"}


def _rounds(block) -> bool:
    """The block rounds (the spike encoder): its reductions keep the reference's order."""
    calls = []
    tvm_ffi.structural_walk(block.body, (tvm.ir.Call, calls.append))
    return any(isinstance(c.op, tvm.ir.Op) and c.op.name in _ROUNDING for c in calls)


def _vectorizable(block) -> bool:
    """TVM can vectorise every call in the block (tirx.nearbyint, for one, it cannot)."""
    calls = []
    tvm_ffi.structural_walk(block.body, (tvm.ir.Call, calls.append))
    return all(c.op.get_attr("TVectorizable") or c.op.name in _VECTOR_BUILTINS
               for c in calls if isinstance(c.op, tvm.ir.Op))


_VECTOR_BUILTINS = {"tirx.reinterpret", "tirx.bitwise_and", "tirx.shift_left",
                    "prim.if_then_else"}  # loop partition takes its condition out of whole vectors


def _vectorize_inner(sch, block) -> None:
    """Vectorise a block's innermost loop below the row loop (if it has one longer than 1)."""
    loops = sch.get_loops(block)[1:]
    if not loops:
        return
    extent = static(sch.get(loops[-1]).extent)
    if extent == 1:
        return
    if extent is not None and extent <= VECTOR:
        sch.vectorize(loops[-1])
        return
    width = VECTOR if extent is None or extent % VECTOR == 0 or extent > 64 else 8
    outer, inner = sch.split(loops[-1], [None, width])
    sch.vectorize(inner)
    partition_tail(sch, outer)
