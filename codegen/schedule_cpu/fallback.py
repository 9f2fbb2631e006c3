"""Block rule of last resort: the outermost loop in parallel."""

from __future__ import annotations


class Fallback:
    """Takes any other block whose outermost loop is data-parallel (e.g. a scan) and runs at
    least that loop in parallel, if that is legal (PerBlock undoes it where it is not)."""

    def apply(self, sch, info, target) -> bool:
        loops = sch.get_loops(info.block_rv)
        if not loops or info.dom_kind()[:1] != "S":
            return False
        sch.parallel(loops[0])
        return True
