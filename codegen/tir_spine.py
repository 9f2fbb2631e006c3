"""Rewriting the statements of a lowered PrimFunc that hold its kernel loops.

TVM 0.27 has no Python statement mutator. sbc's late TIR passes only touch the statements a
function's kernel loops hang from (argument attributes, the compute scope, the sequence of
loops), so they rebuild that spine and leave everything below it as it is.
"""

from __future__ import annotations

import tvm
from tvm import tirx


def map_spine(stmt, visit):
    """`stmt` with `visit` applied to it and to every statement on its spine (through
    sequences and attribute statements, depth first): visit(s) returns s or its replacement,
    whose own spine is then visited."""
    stmt = visit(stmt)
    if isinstance(stmt, tirx.SeqStmt):
        return tirx.SeqStmt([map_spine(s, visit) for s in stmt.seq])
    if isinstance(stmt, tirx.AttrStmt):
        return tirx.AttrStmt(stmt.node, stmt.attr_key, stmt.value, map_spine(stmt.body, visit))
    return stmt


def spine_pass(name: str, visit):
    """A module pass that applies map_spine(body, visit) to every PrimFunc."""

    @tvm.transform.module_pass(opt_level=0, name=name)
    def apply(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        functions = {gv: func.with_body(map_spine(func.body, visit))
                     if isinstance(func, tirx.PrimFunc) else func
                     for gv, func in mod.functions_items()}
        return tvm.IRModule(functions, attrs=mod.attrs)

    return apply
