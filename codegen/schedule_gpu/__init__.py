"""GPU schedules (CUDA and MACA): TVM's dlight GPU rules and sbc's own rules for the generic
kernels, sbc's thread-bound TIR for LinearAttention, SlidingWindowAttention and SpikeMatMul
(`kernels`), and a check that every kernel ended up bound to GPU threads.

The lowering (codegen.lower's TE rules) is the CPU's; only scheduling differs. Rules are tried
per PrimFunc in order, one rule per module as in dlight; the first that returns a schedule
binding the kernel to GPU threads wins (RULES):
  Matmul, GEMV, Reduction, GeneralReduction   dlight's, with the target's warp size and thread
                                              limits (64-lane waves on MACA); the reductions
                                              split rows across threads (all-reduce) where
                                              TVM knows the reducer (`reducers`)
  Fallback (`fallback`)                       dlight's Fallback: spatial loops over blocks and
                                              threads, reductions inside the thread; buffers
                                              private to one block become thread-local;
                                              CumSum's block per column (its scan a loop
                                              inside the block) gets a column per thread
  LoopNest (`loop_nest`)                      a kernel written as loops (the scatters):
                                              parallel (or independent) loops over a grid,
                                              anything else in one thread, never on the host
A rule that raises, or leaves code outside thread-bound loops (on the host), passes the kernel
on to the next (`Guarded`). A PrimFunc that no rule binds to threads would be compiled silently as a
HOST function of the CUDA build, reading device memory from the CPU: `require_thread_bound`
refuses that.
"""

from __future__ import annotations

import tvm
from tvm import tirx
from tvm.s_tir import dlight as dl

from sbc.codegen.root_block import named_roots
from sbc.codegen.schedule_gpu.fallback import Fallback
from sbc.codegen.schedule_gpu.kernels import (GPU_KERNELS, SPECIALISE, SPECIALISE_CHUNKED,
                                              specialise_for)
from sbc.codegen.schedule_gpu.loop_nest import LoopNest, top_statements
from sbc.codegen.schedule_gpu.reducers import reductions_splittable
from sbc.errors import CompileError

__all__ = ["GPU_KERNELS", "SPECIALISE", "SPECIALISE_CHUNKED", "RULES", "schedule_gpu",
           "specialise_for", "thread_bound", "launches_only", "require_thread_bound",
           "describe_kernel"]


class Guarded(dl.ScheduleRule):
    """A rule that does not apply to a kernel it fails to schedule (it raises), or schedules
    with code outside thread-bound loops (`launches_only`): the next rule tries. Reduction and
    GeneralReduction fail on loops over a clamped Slice's rows (`batch*min(seq, 1)`: their
    iterators are not affine); dlight's Fallback returns an extern kernel's opaque block
    untouched. A rule that splits reductions across threads does not apply where TVM could
    not lower the split (`reducers`)."""

    def __init__(self, rule: dl.ScheduleRule, splits_reductions: bool = False):
        self.rule = rule
        self.splits_reductions = splits_reductions

    def apply(self, func, target, tunable):
        if self.splits_reductions and not reductions_splittable(func):
            return None
        try:
            sch = self.rule.apply(func, target, tunable)
        except Exception:  # noqa: BLE001 - ScheduleError, or a TVM check failing inside the
            return None  # rule (a division by a 0 extent on the RotaryEmbedding cases)
        if sch is None or isinstance(sch, list) or not launches_only(sch.mod["main"]):
            return None
        return sch

    def __repr__(self):
        return type(self.rule).__name__


# (rule, whether it splits reductions across threads)
RULES = ((dl.gpu.Matmul(), False), (dl.gpu.GEMV(), True), (dl.gpu.Reduction(), True),
         (dl.gpu.GeneralReduction(), True), (Fallback(), False), (LoopNest(), False))


def schedule_gpu(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """The hand-written kernels specialised for `target`, then RULES on every PrimFunc not
    marked scheduled (the hand-written kernels are)."""
    mod = named_roots(specialise_for(mod, target))
    with target:
        return dl.ApplyDefaultSchedule(*(Guarded(r, splits) for r, splits in RULES))(mod)


def thread_bound(func: tirx.PrimFunc) -> bool:
    """Whether `func` launches on the device: some loop bound to a GPU thread axis. TVM 0.27's
    Python API has no TIR visitor, so this reads the printed function (a thread-bound loop
    prints as T.thread_binding, a lowered one as T.launch_thread)."""
    text = func.script()
    return "T.thread_binding(" in text or "T.launch_thread(" in text


def launches_only(func: tirx.PrimFunc) -> bool:
    """Whether every top-level statement of `func` (below the root block and te.extern's
    opaque block) is a thread-bound loop, i.e. a launch: a serial loop around a launch, or a
    block outside any, would run on the host (dlight's Fallback put a 1-D matmul's reduction
    loop around a one-block launch)."""
    return all(isinstance(s, tirx.For) and s.kind == tirx.ForKind.THREAD_BINDING
               for s in top_statements(func.body))


def describe_kernel(name: str, kernels: dict[str, list]) -> str:
    """"kernel 'name' (node 'a' (Op), ...)": the sbc nodes a kernel computes."""
    nodes = ", ".join(dict.fromkeys(n.where() for n in kernels.get(name, []))) or "unknown nodes"  # programs share nodes
    return f"kernel '{name}' ({nodes})"


def require_thread_bound(mod: tvm.IRModule, kernels: dict[str, list], kind: str) -> None:
    """CompileError naming the first PrimFunc (and its sbc nodes) left without threads."""
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and not thread_bound(func):
            raise CompileError(f"{describe_kernel(gv.name_hint, kernels)} has no GPU schedule: "
                               f"no loop is bound to GPU threads, so the {kind} build would run "
                               f"it on the host; refusing to build it")
