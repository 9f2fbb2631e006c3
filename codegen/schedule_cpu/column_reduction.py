"""Block rule for reductions over a non-last axis (ReduceSum/ReduceMean over T of [B, T, C]):
the reduction loop goes outside a vectorised run of contiguous columns."""

from __future__ import annotations

import tvm_ffi
from tvm import tirx

from sbc.codegen.schedule_cpu.common import VECTOR, partition_tail, static

COLUMNS = 64  # columns per parallel task: 4 vectors, a whole cache line per row for each


class ColumnReduction:
    """Takes a reduction block S..S R..R whose input is read contiguously along the last
    data-parallel iterator, not along a reduced one (y[b, c] = sum_t x[b, t, c]). The
    Reduction rule would leave the reduction innermost: a scalar sum striding over rows of x.
    Here a run of COLUMNS (or VECTOR) columns is split off the last data-parallel loop and put
    inside the reduction loops and vectorised: each row of x adds one contiguous run of
    vectors into the accumulators; the leading data-parallel loops with the column runs are
    fused and run in parallel. The summation order of each output is the reference's."""

    def apply(self, sch, info, target) -> bool:
        kinds = info.dom_kind()
        lead = len(kinds) - len(kinds.lstrip("S"))
        if (lead == 0 or not info.is_reduction() or set(kinds[lead:]) != {"R"}
                or not contiguous_along_last_spatial(sch.get(info.block_rv), info)):
            return False
        spatial = [it.loop_rv for it in info.iters[:lead]]
        reduce = [it.loop_rv for it in info.iters[lead:]]
        columns = static(info.iters[lead - 1].dom)
        width = COLUMNS if columns is not None and columns % COLUMNS == 0 else VECTOR
        chunks, vec = sch.split(spatial[-1], [None, width])
        sch.reorder(*spatial[:-1], chunks, *reduce, vec)
        loops = sch.get_loops(info.block_rv)
        outer_loops = loops[:[sch.get(lp).same_as(sch.get(reduce[0])) for lp in loops].index(True)]
        outer = sch.fuse(*outer_loops) if len(outer_loops) > 1 else outer_loops[0]
        sch.parallel(outer)
        sch.vectorize(vec)
        if columns is None or columns % width:
            partition_tail(sch, chunks)
        return True


def contiguous_along_last_spatial(block, info=None) -> bool:
    """The reduced input (a read indexed by a reduced iterator) has the last data-parallel
    iterator, and no reduced one, as its last index: it is contiguous along the columns."""
    spatial = [iv.var for iv in block.iter_vars if iv.iter_type == tirx.IterVar.DataPar
               and static(iv.dom.extent) != 1]
    reduced = [iv.var for iv in block.iter_vars if iv.iter_type == tirx.IterVar.CommReduce]
    if not spatial or not reduced:
        return False
    for region in block.reads:  # the reduced input: indexed by a reduced iterator somewhere
        if not region.region:
            continue
        used = [[] for _ in region.region]
        for u, r in zip(used, region.region):
            tvm_ffi.structural_walk(r.min, (tirx.Var, u.append))
        if not any(v.same_as(r) for u in used for v in u for r in reduced):
            continue  # a per-row value (softmax's max), not the reduced input
        last = used[-1]
        if (any(v.same_as(spatial[-1]) for v in last)
                and not any(v.same_as(r) for v in last for r in reduced)):
            return True
    return False
