"""Small work runs on the calling thread:
`for i in T.parallel(n): body` -> `if work(n) < SMALL: for i in range(n): body
                                   else: for i in T.parallel(n): body`.

Every parallel loop hands its iterations to TVM's thread pool, whose workers are woken on each
call: ~15 us on this 2-core machine (a [1, 4] Add with symbolic dims took 24.9 us per
Module.run, 9.6 us on one thread). A kernel compiled for symbolic dims cannot know at compile
time whether it will see a decode step's handful of rows or a prefill's thousands, so the
choice is made when it runs: `work` counts the statements the loop nest executes (each a vector
operation after VectorizeLoop), as an expression of the extents. Where it is a constant, only
the loop that wins is kept. Names the nest binds with let (CSE's `N // 16`) read as their
values; a nest whose inner extents depend on its own loop variables or on memory (an unknown
trip count) stays parallel.

It runs after TVM's TIR lowering in the cpu target's pipeline (codegen.targets.cpu), on the
outermost loops of each kernel (codegen.tir_spine).
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx

from sbc.codegen.tir_spine import spine_pass

SMALL = 4096  # statements: a few microseconds on one core, well under a wake-up of the pool


def serial_when_small(stmt):
    if not isinstance(stmt, tirx.For) or stmt.kind != tirx.ForKind.PARALLEL:
        return stmt
    analyzer = tvm.sym.Analyzer()
    work = _work(stmt, _loop_vars(stmt, analyzer), analyzer)
    if work is None:
        return stmt
    work = analyzer.simplify(work)
    serial = tirx.For(stmt.loop_var, stmt.min, stmt.extent, tirx.ForKind.SERIAL, stmt.body,
                      annotations=stmt.annotations, step=stmt.step)
    if isinstance(work, tirx.IntImm):
        return serial if work.value < SMALL else stmt
    return tirx.IfThenElse(work < tirx.IntImm("int64", SMALL), serial, stmt)


def _work(stmt, inside: list, analyzer):
    """The number of leaf statements `stmt` executes, or None where a trip count depends on
    a loop variable of the nest (`inside`) or on memory."""
    if isinstance(stmt, tirx.For):
        extent = analyzer.simplify(stmt.extent)  # let-bound names replaced by their values
        if _uses(extent, inside):
            return None
        body = _work(stmt.body, inside, analyzer)
        return None if body is None else tirx.Cast("int64", extent) * body
    if isinstance(stmt, tirx.SeqStmt):
        parts = [_work(s, inside, analyzer) for s in stmt.seq]
        return None if any(p is None for p in parts) else sum(parts[1:], parts[0])
    if isinstance(stmt, tirx.AttrStmt):
        return _work(stmt.body, inside, analyzer)
    if isinstance(stmt, tirx.IfThenElse):
        then = _work(stmt.then_case, inside, analyzer)
        other = _ONE if stmt.else_case is None else _work(stmt.else_case, inside, analyzer)
        return None if then is None or other is None else tirx.Max(then, other)
    if isinstance(stmt, tirx.While):
        return None
    return _ONE


_ONE = tirx.IntImm("int64", 1)


def _loop_vars(loop, analyzer) -> list:
    """The loop variables of the nest; its let bindings (CSE hoists `N // 16` into one) are
    bound in `analyzer`, so that an extent naming one reads as its value. A name bound twice
    counts as unknown, like a loop variable."""
    found = []

    def bind(s):
        try:
            analyzer.bind(s.var, s.value)
        except Exception:  # noqa: BLE001 - bound before to another value
            found.append(s.var)

    tvm_ffi.structural_walk(loop, [(tirx.For, lambda s: found.append(s.loop_var)),
                                   (tirx.Bind, bind)], order="pre")
    return found


def _uses(expr, variables: list) -> bool:
    """`expr` reads memory (a scalar the nest keeps in a buffer) or one of `variables`."""
    found, loads = [], []
    tvm_ffi.structural_walk(expr, [(tirx.Var, found.append),
                                   (tvm.ir.TensorLoad, loads.append)])
    return bool(loads) or any(v.same_as(d) for v in found for d in variables)


serial_when_small_pass = spine_pass("sbc.SerialWhenSmall", serial_when_small)
