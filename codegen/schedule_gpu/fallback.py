"""Rule Fallback: dlight's Fallback (each block's spatial loops fused and split over blockIdx /
threadIdx, its reduction loops kept inside the thread), then buffers that only one block
touches moved to thread-local memory.

A kernel that no reduction rule takes keeps its non-inlinable intermediates in global scope,
which a CUDA kernel cannot allocate ("Cannot allocate global memory when targeting CUDA"):
ArgMax / ArgMin reduce a pair (index, value) and only the index is an output, so the value
buffer stays (Fallback splits the reduction into an init and an update block in one loop
nest). A buffer that only blocks under the same thread-bound loops touch is private to each
thread (dlight indexes it by the fused spatial iterator the threads split): "local" scope, and
TVM compacts it to what one thread touches.
"""

from __future__ import annotations

from tvm import tirx
from tvm.s_tir import dlight as dl


class Fallback(dl.ScheduleRule):
    def apply(self, func, target, tunable):
        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = dl.gpu.Fallback().apply(func, target, tunable)
        if sch is None:
            return None
        _localise_private_buffers(sch)
        return sch


def _localise_private_buffers(sch) -> None:
    if not _has_root(sch):
        return
    root = sch.get(sch.get_sblock("root"))
    blocks = _all_blocks(sch)
    for buf in root.alloc_buffers:
        if buf.scope() != "global":
            continue
        users = [(rv, b) for rv, b in blocks if _touches(b, buf)]
        if not users or not _same_thread_nest(sch, [rv for rv, _ in users]):
            continue
        rv, block = next((rv, b) for rv, b in users
                         if any(w.source.same_as(buf) for w in b.writes))
        index = next(i for i, w in enumerate(block.writes) if w.source.same_as(buf))
        sch.set_scope(rv, index, "local")


def _same_thread_nest(sch, block_rvs) -> bool:
    """Whether the blocks all sit under the same (non-empty) thread-bound loops."""
    def bound(rv):
        return [lp.loop_var for lp in map(sch.get, sch.get_loops(rv)) if lp.thread_binding is not None]
    first = bound(block_rvs[0])
    return bool(first) and all(len(bound(rv)) == len(first) and
                               all(a.same_as(b) for a, b in zip(bound(rv), first))
                               for rv in block_rvs[1:])


def _has_root(sch) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:  # noqa: BLE001 - a function without a root block (an extern kernel)
        return False


def _all_blocks(sch):
    """[(block rv, SBlock)] of every block below the root, in order."""
    out, todo = [], list(sch.get_child_blocks(sch.get_sblock("root")))
    while todo:
        rv = todo.pop(0)
        out.append((rv, sch.get(rv)))
        todo.extend(sch.get_child_blocks(rv))
    return out


def _touches(block, buf) -> bool:
    return any(r.source.same_as(buf) for r in list(block.reads) + list(block.writes))
