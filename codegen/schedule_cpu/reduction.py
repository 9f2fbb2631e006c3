"""Block rule for reductions with leading data-parallel loops: rows in parallel."""

from __future__ import annotations


class Reduction:
    """Takes a reduction block with at least one leading data-parallel loop (softmax's max/sum,
    mean, norms, cumsum, where the whole PrimFunc did not fit RowReduction): those loops fused
    and run in parallel; the reduction stays serial."""

    def apply(self, sch, info, target) -> bool:
        kinds = info.dom_kind()
        lead = len(kinds) - len(kinds.lstrip("S"))
        if lead == 0 or not info.is_reduction():
            return False
        loops = sch.get_loops(info.block_rv)
        outer = sch.fuse(*loops[:lead]) if lead > 1 else loops[0]
        sch.parallel(outer)
        return True
