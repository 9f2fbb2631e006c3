"""Rule LoopNest: a kernel written as a loop nest (te.extern's TIR: the scatters) launched on
the device, never left for the host.

dlight schedules blocks; an extern kernel is one opaque block holding plain loops, so no dlight
rule binds it and TVM would build it as a host function. Its loops say what may run at once:
  - a top-level PARALLEL loop, or a serial one annotated INDEPENDENT (iterations independent,
    as the lowering promises: the scatters' updates, codegen.lower.shape) becomes a grid:
    blockIdx.x over ceil(n / THREADS), threadIdx.x over THREADS, the iteration
    `bx * THREADS + tx` guarded by `< n`; loops of that kind nested directly inside it join
    the grid (n the product of their extents, each loop's index unravelled from the flat one);
  - any other top-level statement (a serial loop that may carry a dependence; a block-style
    kernel no other rule launched whole, such as a 1-D matmul's scalar reduction) runs in one
    thread of one block, in order.
Statements of one sequence become separate launches, so each sees the previous one's writes
(the scatters' copy finishes before their updates start).
"""

from __future__ import annotations

from tvm import ir, s_tir, tirx
from tvm.s_tir import dlight as dl

from sbc.codegen.lower.shape import INDEPENDENT

THREADS = 256  # a multiple of every warp (32 lanes on CUDA, 64 on MACA)
THREAD_INDEX = 1  # IterVar kind kThreadIndex


class LoopNest(dl.ScheduleRule):
    """Binds the top-level statements of an unscheduled loop-nest kernel to the GPU."""

    def apply(self, func, target, tunable):
        if not isinstance(func, tirx.PrimFunc):
            return None
        return s_tir.Schedule(func.with_body(_launch_body(func.body)))


def _launch_body(stmt):
    """Descend through opaque block wrappers (the root block, te.extern's block: no iteration
    variables) to the statements that become launches."""
    if isinstance(stmt, s_tir.SBlockRealize) and not stmt.block.iter_vars:
        b = stmt.block
        block = s_tir.SBlock(b.iter_vars, b.reads, b.writes, b.name_hint, _launch_body(b.body),
                             b.init, b.alloc_buffers, b.match_buffers, b.annotations)
        return s_tir.SBlockRealize(stmt.iter_values, stmt.predicate, block)
    if isinstance(stmt, tirx.SeqStmt):
        return tirx.SeqStmt([_launch(s) for s in stmt.seq])
    return _launch(stmt)


def top_statements(stmt):
    """The statements below opaque block wrappers and sequences: what runs one after another
    at the top of a kernel."""
    if isinstance(stmt, s_tir.SBlockRealize) and not stmt.block.iter_vars:
        yield from top_statements(stmt.block.body)
    elif isinstance(stmt, tirx.SeqStmt):
        for s in stmt.seq:
            yield from top_statements(s)
    else:
        yield stmt


def _launch(stmt):
    if _independent(stmt):
        return _grid(stmt)
    if isinstance(stmt, tirx.For) and stmt.kind == tirx.ForKind.THREAD_BINDING:
        return stmt  # already a launch
    return _single_thread(stmt)


def _loop(extent, tag: str, make_body):
    """for v in thread_binding(extent, thread=tag): make_body(v)"""
    dtype = _dtype(extent)
    var = tirx.Var(tag.replace(".", "_"), dtype)
    binding = tirx.IterVar(ir.Range.from_min_extent(tirx.const(0, dtype), extent), var,
                           THREAD_INDEX, tag)
    return tirx.For(var, tirx.const(0, dtype), extent, tirx.ForKind.THREAD_BINDING,
                    make_body(var), thread_binding=binding)


def _independent(stmt) -> bool:
    return isinstance(stmt, tirx.For) and (stmt.kind == tirx.ForKind.PARALLEL or
                                           INDEPENDENT in (stmt.annotations or {}))


def _grid(loop: tirx.For):
    """for i in parallel(min, min + n) [for j in parallel(...) ...] -> blocks x THREADS
    threads, each running the innermost body once at the flat iteration bx * THREADS + tx
    unravelled over the loops (each a loop of extent 1 starting at its index: TVM's Python
    API has no substitution, and the simplifier folds such a loop away)."""
    loops = [loop]
    while _independent(loops[-1].body):
        loops.append(loops[-1].body)
    dtype = _dtype(loop.extent)
    extents = [tirx.Cast(dtype, lp.extent) if _dtype(lp.extent) != dtype else lp.extent
               for lp in loops]
    n = extents[0]
    for e in extents[1:]:
        n = n * e
    threads = tirx.const(THREADS, dtype)

    def inner(bx):
        def body(tx):
            flat = bx * threads + tx
            stmt, rest = loops[-1].body, flat
            for lp, extent in zip(reversed(loops), reversed(extents)):
                at = tirx.floormod(rest, extent) if lp is not loops[0] else rest
                rest = tirx.floordiv(rest, extent)
                if _dtype(lp.loop_var) != dtype:
                    at = tirx.Cast(_dtype(lp.loop_var), at)
                stmt = tirx.For(lp.loop_var, lp.min + at, tirx.const(1, _dtype(lp.loop_var)),
                                tirx.ForKind.SERIAL, stmt)
            return tirx.IfThenElse(flat < n, stmt, None)
        return _loop(threads, "threadIdx.x", body)
    return _loop(tirx.floordiv(n + threads - tirx.const(1, dtype), threads), "blockIdx.x", inner)


def _single_thread(stmt):
    one = tirx.const(1, "int64")
    return _loop(one, "blockIdx.x", lambda _: _loop(one, "threadIdx.x", lambda _: stmt))


def _dtype(expr) -> str:
    """A PrimExpr's dtype (TVM 0.27 keeps it on the type; .dtype only on some nodes)."""
    ty = getattr(expr, "ty", None)
    return str(ty.dtype) if ty is not None and hasattr(ty, "dtype") else str(expr.dtype)
