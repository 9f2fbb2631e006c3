"""Block rule for transposes (y[..., c, t] = x[..., t, c]): cache-blocked tiles."""

from __future__ import annotations

import tvm_ffi
from tvm import s_tir, tirx

from sbc.codegen.schedule_cpu.common import VECTOR, injective, partition_tail, static

TILE = VECTOR  # a TILE x TILE tile: TILE rows of x give TILE cache lines, all of them used


class Transpose:
    """Takes a data-parallel block that copies one input whose innermost index is a different
    loop than the output's innermost (a transpose of the last axis; the Spatial rule would
    read x with a stride of a whole row per element, one cache line per 4 bytes). Both loops
    are split into tiles of TILE: the outer loops and the tile of the input's innermost loop
    run in parallel; inside a tile each output row is one vector (gathering from TILE rows of
    x that stay in L1 across the tile). A symbolic length has its last, partial tile split off
    by LoopPartition."""

    def apply(self, sch, info, target) -> bool:
        if not injective(info):
            return False
        block = sch.get(info.block_rv)
        pair = _transposed_pair(block)
        if pair is None:
            return False
        loops = sch.get_loops(info.block_rv)
        out_last, in_last = (_loop_index(sch, info.block_rv, loops, v) for v in pair)
        if out_last is None or in_last is None or out_last != len(loops) - 1:
            return False
        for index in (out_last, in_last):
            extent = static(sch.get(loops[index]).extent)
            if extent is not None and extent < TILE:
                return False
        c_loop, t_loop = loops[in_last], loops[out_last]
        co, ci = sch.split(c_loop, [None, TILE])
        to, ti = sch.split(t_loop, [None, TILE])
        others = [lp for i, lp in enumerate(loops) if i not in (in_last, out_last)]
        sch.reorder(*others, co, to, ci, ti)
        outer = sch.fuse(*others, co) if others else co
        sch.parallel(outer)
        sch.vectorize(ti)
        partition_tail(sch, to)
        return True


def _transposed_pair(block):
    """(output's innermost iterator, input's innermost iterator) where the block is a pure copy
    of one buffer indexed by plain iterators and those differ; else None."""
    if len(block.reads) != 1 or len(block.writes) != 1:
        return None
    read, write = block.reads[0].region, block.writes[0].region
    if not read or not write:
        return None
    r_last, w_last = read[-1].min, write[-1].min
    if not (isinstance(r_last, tirx.Var) and isinstance(w_last, tirx.Var)) or r_last.same_as(w_last):
        return None
    iters = [iv.var for iv in block.iter_vars]
    if not any(v.same_as(r_last) for v in iters) or not any(v.same_as(w_last) for v in iters):
        return None
    return w_last, r_last


def _loop_index(sch, block_rv, loops, var):
    """Index among `loops` of the loop that block iterator `var` is bound to alone, or None."""
    block = sch.get(block_rv)
    found = []
    tvm_ffi.structural_walk(sch.mod["main"].body, (s_tir.SBlockRealize, found.append))
    realize = next(r for r in found if r.block.same_as(block))
    for iv, value in zip(block.iter_vars, realize.iter_values):
        if iv.var.same_as(var) and isinstance(value, tirx.Var):
            return next((i for i, lp in enumerate(loops) if sch.get(lp).loop_var.same_as(value)), None)
    return None
