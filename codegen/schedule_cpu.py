"""sbc's CPU schedules: every fused PrimFunc -> a parallel, vectorised (and for matmuls, tiled)
PrimFunc marked `tirx.is_scheduled`.

TVM's default CPU pipeline schedules nothing (kernels run single-threaded, scalar, untiled).
Per PrimFunc: injective producers are inlined into their consumers; then each remaining block
gets the first rule that applies, in order:
  matmul      C[..., i, j] += A[..., i, k] * B[..., k, j] (S..SSR): register-tiled, k-blocked,
              innermost j vectorised, outer tiles in parallel
  spatial     all loops data-parallel: fused, split by the vector width, parallel + vectorise
  reduction   leading data-parallel loops fused and parallel; the reduction stays serial
A rule that raises leaves the block to the next one; the last resort is the unscheduled block,
so scheduling can make code slower but never breaks compilation.
"""

from __future__ import annotations

import logging

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func

log = logging.getLogger(__name__)

VECTOR = 16  # fp32 lanes per innermost chunk (2 AVX2 registers; LLVM splits as needed)
TILE_I, TILE_K = 4, 256  # register tile rows (x 16 or 8 vector columns), k-block


def schedule_cpu(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Schedule every PrimFunc of `mod` that is not scheduled yet."""
    out = mod
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or _is_scheduled(func):
            continue
        scheduled = schedule_func(func)
        out = out if scheduled is None else _replace(out, gv, scheduled)
    return out


def _replace(mod, gv, func):
    mod = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    mod[gv] = func.with_attr("tirx.is_scheduled", True)
    return mod


def _is_scheduled(func) -> bool:
    return func.attrs is not None and "tirx.is_scheduled" in func.attrs and bool(func.attrs["tirx.is_scheduled"])


def schedule_func(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    sch = s_tir.Schedule(func)
    if normalize_prim_func(sch) is None:
        return None
    _inline_injective(sch)
    blocks = normalize_prim_func(sch)
    if blocks is None:
        return None
    for info in blocks:
        for rule in (_matmul, _spatial, _reduction):
            snapshot = sch.copy()
            try:
                if rule(sch, info):
                    break
            except Exception as e:  # a rule that does not fit: try the next
                log.debug("rule %s failed on %s: %s", rule.__name__, info.name, e)
                sch = snapshot
    return sch.mod["main"]


def _inline_injective(sch) -> None:
    """Inline data-parallel producers into consumers, then epilogues into their producers."""
    for info in reversed(normalize_prim_func(sch) or []):
        if info.is_injective() and not _is_output(sch, info.block_rv):
            try:
                sch.compute_inline(info.block_rv)
            except Exception:  # not inlinable (e.g. reads itself): keep the block
                pass
    for info in normalize_prim_func(sch) or []:
        if info.is_injective():
            try:
                sch.reverse_compute_inline(info.block_rv)
            except Exception:
                pass


def _is_output(sch, block) -> bool:
    outputs = sch.get_output_blocks(sch.get_sblock("root"))
    return any(sch.get(block).same_as(sch.get(b)) for b in outputs)


def _static(extent) -> int | None:
    return int(extent) if isinstance(extent, (int, tirx.IntImm)) else None


def _matmul(sch, info) -> bool:
    """Register-tiled GEMM: a TILE_I x tile_j block of C lives in vector registers (a local
    cache) across the k loop; epilogues (bias, activation, residual) are applied when the tile
    is written back, so C goes to memory once."""
    kinds = info.dom_kind()
    if not (kinds.endswith("SSR") and set(kinds[:-3]) <= {"S"} and info.is_reduction()):
        return False
    block = sch.get(info.block_rv)
    if len(block.reads) != 2 or len(block.writes) != 1:
        return False
    n, kk = _static(info.iters[-2].dom), _static(info.iters[-1].dom)
    if n is not None and n % 8:
        return False
    tile_j = 8 if n is not None and n % 16 else 16  # a symbolic n gets a predicated last tile
    local = sch.cache_write(info.block_rv, 0, "local")
    for consumer in sch.get_consumers(local):
        try:
            sch.reverse_compute_inline(consumer)
        except Exception:  # not a pure epilogue: it stays a kernel of its own
            pass
    *batch, i, j, k = sch.get_loops(info.block_rv)
    io, ii = sch.split(i, [None, TILE_I])
    jo, ji = sch.split(j, [None, tile_j])
    # k-blocks only where they divide a static K; otherwise one k loop
    k_loops = sch.split(k, [None, TILE_K]) if kk and kk > TILE_K and kk % TILE_K == 0 else [k]
    # column tiles outside row tiles: one K x tile_j panel of B stays in cache for all rows
    sch.reorder(*batch, jo, io, *k_loops, ii, ji)
    sch.reverse_compute_at(local, io)
    outer = sch.fuse(*batch, jo, io) if batch else sch.fuse(jo, io)
    sch.parallel(outer)
    sch.unroll(ii)
    sch.vectorize(ji)
    sch.decompose_reduction(info.block_rv, k_loops[0])
    sch.vectorize(sch.get_loops(local)[-1])
    return True


def _spatial(sch, info) -> bool:
    """Data-parallel block. With a static innermost dim, only the outer loops are fused (index
    math per row, not per element: fusing a symbolic extent costs an int64 div/mod per
    element); otherwise everything is fused and split by the vector width."""
    if not info.is_injective():
        return False
    loops = sch.get_loops(info.block_rv)
    inner = _static(info.iters[-1].dom)
    if len(loops) > 1 and inner is not None and inner % 8 == 0:
        outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
        sch.parallel(outer)
        _, vec = sch.split(loops[-1], [None, VECTOR if inner % VECTOR == 0 else 8])
        sch.vectorize(vec)
        return True
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    outer, inner_loop = sch.split(fused, [None, VECTOR])
    sch.parallel(outer)
    sch.vectorize(inner_loop)
    return True


def _reduction(sch, info) -> bool:
    kinds = info.dom_kind()
    lead = len(kinds) - len(kinds.lstrip("S"))
    if lead == 0:
        return False
    loops = sch.get_loops(info.block_rv)
    outer = sch.fuse(*loops[:lead]) if lead > 1 else loops[0]
    sch.parallel(outer)
    return True
