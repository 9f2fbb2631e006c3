"""What the CPU schedule rules share: the attribute that marks a scheduled PrimFunc, the
preparation every PrimFunc gets before the rules run (injective blocks inlined), the block
predicates several rules ask, and small schedule helpers."""

from __future__ import annotations

import logging

import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func

log = logging.getLogger(__name__)

SCHEDULED = "tirx.is_scheduled"  # the attribute dlight and MetaSchedule check
# a block annotation from the lowering (softmax's exp): the block is stored and read by
# several blocks, not inlined into each (which would compute it once per reader)
COMPUTED_ONCE = "sbc.computed_once"
VECTOR = 16  # fp32 lanes per innermost chunk (2 AVX2 registers; LLVM splits as needed)


def is_scheduled(func: tirx.PrimFunc) -> bool:
    return func.attrs is not None and SCHEDULED in func.attrs and bool(func.attrs[SCHEDULED])


def prepare(func: tirx.PrimFunc):
    """A schedule of `func` with its injective blocks inlined, and the dlight infos of the blocks
    left; None where the function has no schedulable block structure."""
    try:
        sch = s_tir.Schedule(func)
        if normalize_prim_func(sch) is None:  # opaque or irregular: leave it to TVM
            return None
        _inline_injective(sch)
        blocks = normalize_prim_func(sch) or []
    except Exception as e:  # never let analysis break compilation
        log.debug("cannot analyse PrimFunc: %s", e)
        return None
    return sch, blocks


def hoist_inits(sch):
    """Move each reduction's init out of its reduction loops. TIR runs a block's init at the
    first reduction step, so over an empty axis (a symbolic dim fed 0, a slice emptied it)
    there is none and the output would be left uninitialised; before the loops it always
    runs, and the reduction over nothing gives the identity, as ONNX says."""
    for realize in _reductions(sch.mod["main"]):
        block = sch.get_sblock(realize.block.name_hint)
        # by identity: loops that compute_at made can share a name with the row loop, and
        # the init then went before the row loop, a parallel pass of its own
        reduce_vars = [v for iv, value in zip(realize.block.iter_vars, realize.iter_values)
                       if iv.iter_type == tirx.IterVar.CommReduce for v in _vars(value)]
        loop = next((lp for lp in sch.get_loops(block)
                     if any(sch.get(lp).loop_var.same_as(v) for v in reduce_vars)), None)
        if loop is not None:
            try_primitive(sch.decompose_reduction, block, loop)
    return sch


def _reductions(func) -> list:
    """The SBlockRealizes of the blocks that still have an init."""
    found = []
    tvm_ffi.structural_walk(func.body, (s_tir.SBlockRealize, found.append))
    return [r for r in found if r.block.init is not None]


def _vars(expr) -> list:
    found = []
    tvm_ffi.structural_walk(expr, (tirx.Var, found.append))
    return found


def block_info(sch, name):
    """The dlight block info for block `name` (infos go stale as the schedule changes)."""
    return next((b for b in normalize_prim_func(sch) or [] if b.name == name), None)


def _inline_injective(sch) -> None:
    """Inline data-parallel producers into consumers, then epilogues into their producers."""
    for info in reversed(normalize_prim_func(sch) or []):
        if injective(info) and not _is_output(sch, info.block_rv) and \
                COMPUTED_ONCE not in sch.get(info.block_rv).annotations:
            try_primitive(sch.compute_inline, info.block_rv)
    for info in normalize_prim_func(sch) or []:
        if injective(info) and not _reads_reduction(sch, info.block_rv):
            try_primitive(sch.reverse_compute_inline, info.block_rv)


def injective(info) -> bool:
    """Every iterator data-parallel and no reduction init. NormalizePrimFunc drops unit loops,
    so a reduction over length-1 axes (a mean over a dim of 1, a matmul with K = 1) has only
    "S" iterators but keeps its init and reads what it writes: not elementwise."""
    return info.is_injective() and not info.is_reduction()


def _reads_reduction(sch, block) -> bool:
    """A producer of `block` has a reduction init. TVM refuses to inline an epilogue into a
    reduction, except into one left with no reduction loop (see injective): there it applies
    the epilogue to both the init and the update, exp(exp(0) + x) for Exp(ReduceMean(x))."""
    return any(sch.get(p).init is not None for p in sch.get_producers(block))


def try_primitive(primitive, *args) -> bool:
    """Apply a schedule primitive that may legitimately not apply (e.g. a block reading itself)."""
    try:
        primitive(*args)
        return True
    except Exception:  # the schedule state is unchanged when a primitive refuses
        return False


def _is_output(sch, block) -> bool:
    outputs = sch.get_output_blocks(sch.get_sblock("root"))
    return any(sch.get(block).same_as(sch.get(b)) for b in outputs)


def static(extent) -> int | None:
    return int(extent) if isinstance(extent, (int, tirx.IntImm)) else None


def is_matmul(sch, info) -> bool:
    """C[..., i, j] += A[..., i, k] * B[..., k, j]-like: S..SSR over two operands, one indexed
    by i and k but not j, the other by j and k but not i. (Softmax's sum of exp(x - max) also
    reads two buffers in an S..SSR block, but its max is indexed by no k: not a matmul.)"""
    kinds = info.dom_kind()
    block = sch.get(info.block_rv)
    if not (kinds.endswith("SSR") and set(kinds[:-3]) <= {"S"} and info.is_reduction()
            and len(block.reads) == 2 and len(block.writes) == 1):
        return False
    # the iterators as NormalizePrimFunc sees them: unit ones dropped
    iters = [iv.var for iv in block.iter_vars if static(iv.dom.extent) != 1]
    if len(iters) < 3:
        return False
    i, j, k = iters[-3:]
    uses = []
    for region in block.reads:
        used = {v for r in region.region for v in _vars(r.min)}
        uses.append(tuple(any(v.same_as(x) for v in used) for x in (i, j, k)))
    return sorted(uses) == [(False, True, True), (True, False, True)]


def partition_tail(sch, loop) -> None:
    """Have TVM's LoopPartition split `loop`, over the whole vectors of a symbolic length (the
    last one predicated), into its unpredicated iterations and the last one. With the
    predicate inside, TVM vectorises the loop lane by lane (scalar loads and stores)."""
    if static(sch.get(loop).extent) is None:
        sch.annotate(loop, "pragma_loop_partition_hint", 1)


def vector_lanes(target) -> int:
    """fp32 lanes of the target's vector registers: 16 with AVX-512, else 8 (AVX2)."""
    try:
        from tvm.target import codegen
        if target is not None and codegen.llvm_cpu_has_features("avx512f", target):
            return 16
    except Exception:  # not an llvm target
        pass
    return 8
