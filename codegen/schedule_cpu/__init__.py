"""sbc's CPU schedules: every fused PrimFunc -> a parallel, vectorised (and for matmuls, tiled)
PrimFunc marked `tirx.is_scheduled`.

TVM's default CPU pipeline schedules nothing (kernels run single-threaded, scalar, untiled), and
`s_tir.dlight.cpu` only knows GEMV and reductions. As in dlight, each schedule is a rule in its
own module, tried in order. Per PrimFunc: injective producers are inlined into their consumers
and injective epilogues into their producers (common.prepare); then the first PrimFunc rule of
RULES that returns a schedule wins:

  row_reduction  norms, softmax, the spike encoder: one parallel loop over rows holds them whole;
                 where nothing rounds, rsqrt becomes 1 / sqrt so the per-element blocks
                 vectorise, and reductions over whole vectors keep VECTOR partial results
                 (rfactor), each in a parallel pass of its own (softmax: under the row loop,
                 the sum's lanes inside the exp's loop: exp and sum in one pass over a row;
                 exp stored in the output and scaled there, as MLAS does); a sum / max
                 over a symbolic length is padded to whole vectors with its identity first
                 (vector_rewrites)
  per_block      every block gets the first block rule that applies, in order:
    batched_matmul  activation x activation matmuls (B a plain operand; batched, or a symbolic
                 M, N or K: q @ k^T, probs @ v): a tile of 6 rows x 2 vectors of the target's
                 width in registers, parallel row tiles, no copy outside the kernel (ragged M
                 / N padded inside it as guarded loads, LoopPartition taking the guards out of
                 whole tiles), a wide B packed into column panels per batch entry
    matmul       C[..., i, j] += A[..., i, k] * B[..., k, j] (S..SSR; B may be transposed or
                 pre-packed): B is read as contiguous column panels (re-laid out per call unless
                 pre-packed), a 6 x 32 tile of C lives in vector registers across k, epilogues
                 run when the tile is written back, column tiles run in parallel; a symbolic or
                 ragged row or column count is padded to whole tiles so the inner loop has no
                 predicate
    transpose    y[..., c, t] = x[..., t, c]: 16 x 16 tiles (each output row one vector
                 gathered from 16 rows of x that stay in L1), outer tiles in parallel
    scan         a block per column holding its scan as a loop (CumSum): runs of
                 contiguous columns in parallel and vectorised, each run stepping along the
                 axis in order
    spatial      all loops data-parallel: outer loops fused + parallel, innermost split by the
                 vector width and vectorised
    column_reduction  a reduction over a non-last axis (sum over T of [B, T, C]): runs of
                 columns in parallel, the reduction loop outside a vectorised run of columns
    reduction    leading data-parallel loops fused + parallel; the reduction stays serial
    fallback     the outermost data-parallel loop in parallel

A vector loop over a symbolic length carries a predicate on its last vector, which makes TVM
emit the whole loop lane by lane: the loop of vectors is annotated for LoopPartition
(common.partition_tail), which splits the last one off. The default build turns
LoopPartition on (codegen.build).

A PrimFunc rule is `apply(sch, blocks, target) -> Schedule | None`, a block rule
`apply(sch, block_info, target) -> bool` (False: not applied, next rule). A rule that raises is
undone and the next one tried, so scheduling can leave a kernel slow but never breaks
compilation. Use `schedule_cpu(mod, target)` or the pass `ScheduleCPU(target)`.
"""

from __future__ import annotations

import tvm
from tvm import tirx

from sbc.codegen.root_block import named_roots
from sbc.codegen.schedule_cpu.batched_matmul import BatchedMatmul
from sbc.codegen.schedule_cpu.column_reduction import ColumnReduction
from sbc.codegen.schedule_cpu.common import SCHEDULED, VECTOR, is_scheduled, prepare
from sbc.codegen.schedule_cpu.fallback import Fallback
from sbc.codegen.schedule_cpu.matmul import STACK_BYTES, TILE_I, TILE_J, Matmul
from sbc.codegen.schedule_cpu.per_block import PerBlock
from sbc.codegen.schedule_cpu.reduction import Reduction
from sbc.codegen.schedule_cpu.row_reduction import RowReduction
from sbc.codegen.schedule_cpu.scan import Scan
from sbc.codegen.schedule_cpu.spatial import Spatial
from sbc.codegen.schedule_cpu.transpose import Transpose

__all__ = ["RULES", "SCHEDULED", "STACK_BYTES", "TILE_I", "TILE_J", "VECTOR", "ScheduleCPU",
           "schedule_cpu", "schedule_func"]

# Tried in order on each PrimFunc. The block rules are not PrimFunc rules of their own because
# one PrimFunc can need several of them (a matmul block and a data-parallel block beside it).
RULES = (
    RowReduction(),
    # always applies: keep it last
    PerBlock(BatchedMatmul(), Matmul(), Transpose(), Scan(), Spatial(), ColumnReduction(), Reduction(), Fallback()),
)


def schedule_cpu(mod: tvm.IRModule, target: tvm.target.Target | None = None) -> tvm.IRModule:
    """Schedule every PrimFunc of `mod` that is not scheduled yet; mark what it schedules."""
    mod = named_roots(mod)
    updates = {}
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and not is_scheduled(func):
            scheduled = schedule_func(func, target)
            if scheduled is not None:
                updates[gv] = scheduled.with_attr(SCHEDULED, True)
    if not updates:
        return mod
    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    for gv, func in updates.items():
        out[gv] = func
    return out


@tvm.transform.module_pass(opt_level=0, name="sbc.ScheduleCPU")
class ScheduleCPU:
    """`schedule_cpu` as a module pass, for a `tvm.transform.Sequential`."""

    def __init__(self, target: tvm.target.Target | None = None):
        self.target = target

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return schedule_cpu(mod, self.target)


def schedule_func(func: tirx.PrimFunc, target: tvm.target.Target | None = None) -> tirx.PrimFunc | None:
    """The scheduled PrimFunc, or None where the function has no schedulable block structure."""
    prepared = prepare(func)
    if prepared is None:
        return None
    sch, blocks = prepared
    for rule in RULES:
        scheduled = rule.apply(sch, blocks, target)
        if scheduled is not None:
            return scheduled.mod["main"]
    return None
