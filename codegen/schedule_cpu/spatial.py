"""Block rule for data-parallel (injective) blocks: parallel outer loops, vectorised inner one."""

from __future__ import annotations

from sbc.codegen.schedule_cpu.common import VECTOR, injective, partition_tail, static


class Spatial:
    """Takes a block whose loops are all data-parallel. Where there is an outer loop and the
    innermost dim is symbolic or at least 8 long, only the outer loops are fused and run in
    parallel (index math per row, not per element: fusing a symbolic extent costs an int64
    div/mod per element) and the innermost is split by the vector width and vectorised; a
    symbolic innermost dim has its last, partial vector split off by LoopPartition, since a
    predicate inside the vector loop makes TVM emit it lane by lane (Where over [B, 4, T, T]
    ran 40x slower). Otherwise everything is fused and split by the vector width."""

    def apply(self, sch, info, target) -> bool:
        if not injective(info):
            return False
        loops = sch.get_loops(info.block_rv)
        inner = static(info.iters[-1].dom)
        if len(loops) > 1 and (inner is None or inner >= 8):
            outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
            sch.parallel(outer)
            width = VECTOR if inner is None or inner % VECTOR == 0 or inner > 64 else 8
            chunks, vec = sch.split(loops[-1], [None, width])
            sch.vectorize(vec)
            partition_tail(sch, chunks)
            return True
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        outer, inner_loop = sch.split(fused, [None, VECTOR])
        sch.parallel(outer)
        sch.vectorize(inner_loop)
        return True
