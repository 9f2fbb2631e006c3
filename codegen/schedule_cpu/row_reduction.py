"""PrimFunc rule for row-wise kernels (norms, softmax, the spike encoder): one parallel loop over
rows holds every block of the kernel."""

from __future__ import annotations

import logging

import tvm
import tvm_ffi
from tvm import tirx

from sbc.codegen.schedule_cpu.common import VECTOR, hoist_inits, injective, is_matmul, static

log = logging.getLogger(__name__)


class RowReduction:
    """Takes a PrimFunc made of reductions over the trailing axes with per-row and per-element
    blocks around them, no matmul, the last block injective, and every block touching only its
    own row of the buffers the kernel writes (so rows are independent: in parallel they cannot
    race). Rows run in parallel, every block under its row's iteration (the second pass over a
    row reads it from cache; one parallel region per kernel), the per-element blocks
    vectorised. The reductions stay serial: their summation order is the reference's.
    Returns None where the PrimFunc does not fit, or the schedule fails (then `sch` is left as
    it was, for the next rule)."""

    def apply(self, sch, blocks, target):
        if not _fits(sch, blocks):
            return None
        scheduled = sch.copy()  # `sch` stays as it is for the next rule, should this fail
        try:
            _schedule_rows(scheduled, blocks)
            return hoist_inits(scheduled)
        except Exception as e:
            log.debug("row reduction failed: %s", e)
            return None


def _fits(sch, blocks) -> bool:
    if len(blocks) < 2 or all(injective(b) for b in blocks) or not injective(blocks[-1]):
        return False
    if any(is_matmul(sch, b) for b in blocks):
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


def _schedule_rows(sch, blocks) -> None:
    lead = _row_dims(blocks)
    loops = sch.get_loops(blocks[0].block_rv)
    rows = sch.fuse(*loops[:lead]) if lead > 1 else loops[0]
    sch.parallel(rows)
    # the later blocks move under the first one's row loop, not the earlier ones under the
    # last one's: compute_at refuses blocks that write an output (the encoder's threshold)
    for info in blocks[1:]:
        sch.reverse_compute_at(info.block_rv, rows, preserve_unit_loops=True)
    for info in blocks:
        if injective(info) and _vectorizable(sch.get(info.block_rv)):
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
    extent = static(sch.get(loops[-1]).extent)
    if extent == 1:
        return
    if extent is not None and extent <= VECTOR:
        sch.vectorize(loops[-1])
        return
    width = VECTOR if extent is None or extent % VECTOR == 0 or extent > 64 else 8
    sch.vectorize(sch.split(loops[-1], [None, width])[-1])
