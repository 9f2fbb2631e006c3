"""One fix-up both schedule packages (codegen.schedule_cpu, codegen.schedule_gpu) apply to the
lowered module before their rules run."""

from __future__ import annotations

from tvm import s_tir


def named_roots(mod):
    """`mod` with each PrimFunc's root block named "root". create_prim_func names it "extern"
    in a kernel made by te.extern_primfunc (CumSum's scan, whose blocks a schedule can work
    on), and dlight's analysis (normalize_prim_func), which the CPU and GPU schedules start
    from, looks for "root": unnamed, the kernel went unscheduled (serial on the CPU, one
    GPU thread)."""
    out = mod
    for gv, func in mod.functions_items():
        body = getattr(func, "body", None)
        if isinstance(body, s_tir.SBlockRealize) and body.block.name_hint != "root":
            b = body.block
            root = s_tir.SBlock(b.iter_vars, b.reads, b.writes, "root", b.body, b.init,
                                b.alloc_buffers, b.match_buffers, b.annotations)
            out = out if out is not mod else mod.clone()
            out.update_func(gv, func.with_body(s_tir.SBlockRealize(body.iter_values,
                                                                   body.predicate, root)))
    return out
