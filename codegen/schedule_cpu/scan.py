"""Block rule for scans (CumSum's block, codegen.lower.reduce): independent columns in
parallel, each block instance stepping along the scanned axis in its own serial loop, a run
of contiguous columns vectorised."""

from __future__ import annotations

import tvm_ffi
from tvm import tirx

from sbc.codegen.schedule_cpu.common import VECTOR, partition_tail, static

COLUMNS = 128  # columns per parallel task: 8 vectors, 8 cache lines of each row (64 and 256 were
# slower at [1, T, 512], T = 512 and 2048, A/B in one process)


class Scan:
    """Takes a block whose iterators are all data-parallel (the columns) and whose body is a
    loop along one axis of the buffer it writes (the scan: entry p of a column needs entry
    p - 1 of the same column, so that loop stays inside the block, serial and in order).
    It comes before Spatial, which would take the block too (its iterators are all
    data-parallel) but run only the leading loops in parallel: one task for a [1, T, C] scan.

      columns after the axis (y[b, t, c] = y[b, t - 1, c] + x[b, t, c]): their loops fused
        and split into runs of COLUMNS (VECTOR where the count is not a multiple, the whole
        count where it fits in one vector), the runs fused with the leading loops into one
        parallel loop, the run vectorised: the loop inside the block then adds a contiguous
        row of x to the previous row of y a vector at a time. A run over a symbolic count
        has its last, partial vector split off (partition_tail).
      none after it (a scan along the last axis): the leading loops fused and parallel,
        each task scanning whole rows.

    Each entry is still summed in the reference's order: only independent columns move."""

    def apply(self, sch, info, target) -> bool:
        block = sch.get(info.block_rv)
        if not info.is_injective() or not _loop_inside(block):
            return False
        trailing = _trailing_iters(block)
        if trailing is None:
            return False
        loops = [it.loop_rv for it in info.iters]
        lead, trail = loops[:len(loops) - trailing], loops[len(loops) - trailing:]
        if trail:
            _columns_in_runs(sch, lead, sch.fuse(*trail) if len(trail) > 1 else trail[0])
        else:
            _parallel(sch, lead)
        return True


def _columns_in_runs(sch, lead, columns) -> None:
    """The trailing columns in vectorised runs, the runs and the leading loops in parallel."""
    count = static(sch.get(columns).extent)
    if count is not None and count <= VECTOR:
        sch.vectorize(columns)
        _parallel(sch, lead)
        return
    width = COLUMNS if count is not None and count % COLUMNS == 0 else VECTOR
    runs, run = sch.split(columns, [None, width])
    _parallel(sch, [*lead, runs])
    sch.vectorize(run)
    if count is None or count % width:
        partition_tail(sch, runs)


def _loop_inside(block) -> bool:
    loops = []
    tvm_ffi.structural_walk(block.body, (tirx.For, loops.append))
    return bool(loops)


def _trailing_iters(block) -> int | None:
    """How many of the block's iterators index the written buffer after the scanned axis
    (the one dim of the write region not a single iterator), or None where the write is not
    one such region: iterators in order, each a whole index."""
    if len(block.writes) != 1:
        return None
    iters = [iv.var for iv in block.iter_vars]
    dims = [r.min if static(r.extent) == 1 else None for r in block.writes[0].region]
    scanned = [d for d, index in enumerate(dims) if index is None]
    if len(scanned) != 1:
        return None
    # unit dims (NormalizePrimFunc drops their iterators) index at a constant
    used = [index for index in dims if index is not None and not isinstance(index, tirx.IntImm)]
    if len(used) != len(iters) or not all(isinstance(u, tirx.Var) and u.same_as(v)
                                          for u, v in zip(used, iters)):
        return None
    return sum(1 for index in dims[scanned[0] + 1:] if not isinstance(index, tirx.IntImm))


def _parallel(sch, loops) -> None:
    if loops:
        sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])
