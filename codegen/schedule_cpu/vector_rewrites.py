"""Rewrites that let row kernels vectorise (used by row_reduction; not a rule).

- rsqrt becomes 1 / sqrt: what TVM's LLVM codegen emits for it anyway, but TVM marks only
  sqrt vectorisable, so a norm's per-element block with rsqrt inlined stayed scalar.
- a max-reduction's -inf init becomes the lowest finite float, the identity TVM's rfactor
  knows for max (it refuses -inf). The result differs only where every element is -inf (the
  max is then -3.4e38; a softmax of such a row is NaN either way, as in the reference).

- a float32 sum / max / min over a symbolic length (softmax over T) is padded to whole vectors:
  the loop runs to the next multiple of VECTOR and the padding adds the reduction's identity
  (if_then_else(r < n, x, identity): the load past the end never happens). Rows are then whole
  vectors for the rfactor lanes; LoopPartition takes the condition out of all but the last
  vector.

exp needs no rewrite: codegen/fast_math lowers it for llvm targets to vector arithmetic.
"""

from __future__ import annotations

import math

import tvm
import tvm_ffi
from tvm import s_tir, tirx

_RSQRT = tvm.ir.Op.get("tirx.rsqrt")
LOWEST = -3.4028234663852886e38  # the lowest finite float32


def vector_rewrites(func: tirx.PrimFunc, vector: int = 16) -> tirx.PrimFunc:
    """`func` with rsqrt as 1 / sqrt, float32 max inits of -inf as the lowest float and
    reductions over a symbolic length padded to whole vectors of `vector` lanes."""
    def call(c):
        if c.op.same_as(_RSQRT):
            return tirx.FloatImm(str(c.ty), 1.0) / tirx.sqrt(c.args[0])
        return c

    def block(b):
        init = b.init
        if (isinstance(init, tirx.BufferStore) and isinstance(init.value, tirx.FloatImm)
                and init.value.value == -math.inf and str(init.value.ty) == "float32"):
            init = tirx.BufferStore(init.buffer, tirx.FloatImm("float32", LOWEST), init.indices)
            return s_tir.SBlock(b.iter_vars, b.reads, b.writes, b.name_hint, b.body, init,
                                b.alloc_buffers, b.match_buffers, b.annotations)
        return b

    func = tvm_ffi.structural_map(func, [(tvm.ir.Call, call), (s_tir.SBlock, block)])
    return _pad_reductions(func, vector)


_COMBINERS = (tirx.Add, tirx.Max, tirx.Min)


def _pad_reductions(func, vector: int):
    """Pad each float32 reduction over one symbolic axis (Add, Max or Min of the output and a
    value, a constant init) to whole vectors: its loop and iterator run to the next multiple
    of `vector`, the value past the end is the init (the identity)."""
    realizes = []
    tvm_ffi.structural_walk(func.body, (s_tir.SBlockRealize, realizes.append))
    loops, blocks = {}, {}
    for realize in realizes:
        padded = _padded(realize, vector)
        if padded is not None:
            loop_var, block = padded
            loops[loop_var] = block.iter_vars[[iv.iter_type for iv in block.iter_vars].index(
                tirx.IterVar.CommReduce)].dom.extent
            blocks[realize.block] = block
    if not blocks:
        return func

    def loop(f):
        extent = next((e for v, e in loops.items() if v.same_as(f.loop_var)), None)
        if extent is None:
            return f
        return tirx.For(f.loop_var, f.min, extent, f.kind, f.body, f.thread_binding, f.annotations)

    def block(b):
        return next((new for old, new in blocks.items() if old.same_as(b)), b)

    return tvm_ffi.structural_map(func, [(tirx.For, loop), (s_tir.SBlock, block)])


def _padded(realize, vector: int):
    """(the loop var, the padded block) for a reduction `_pad_reductions` pads, else None."""
    b = realize.block
    reduce = [(iv, value) for iv, value in zip(b.iter_vars, realize.iter_values)
              if iv.iter_type == tirx.IterVar.CommReduce]
    if len(reduce) != 1 or not isinstance(reduce[0][1], tirx.Var):
        return None
    iv, loop_var = reduce[0]
    extent = iv.dom.extent
    if isinstance(extent, tirx.IntImm) or \
            tvm.sym.Analyzer().can_prove_equal(tirx.floormod(extent, vector), 0) or \
            not isinstance(b.init, tirx.BufferStore) or \
            not isinstance(b.init.value, tirx.FloatImm) or str(b.init.value.ty) != "float32":
        return None
    body = b.body
    if not isinstance(body, tirx.BufferStore) or not isinstance(body.value, _COMBINERS):
        return None
    acc = tirx.BufferLoad(body.buffer, body.indices)
    a, c = body.value.a, body.value.b
    if tvm_ffi.structural_equal(a, acc):
        value = c
    elif tvm_ffi.structural_equal(c, acc):
        value = a
    else:
        return None
    padded_extent = (extent + (vector - 1)) // vector * vector
    guarded = tirx.if_then_else(iv.var < iv.dom.min + extent, value, b.init.value)
    combined = type(body.value)(acc, guarded)
    new_iv = tirx.IterVar(tvm.ir.Range.from_min_extent(iv.dom.min, padded_extent), iv.var,
                          iv.iter_type, iv.thread_tag)
    iter_vars = [new_iv if v.same_as(iv) else v for v in b.iter_vars]
    return loop_var, s_tir.SBlock(iter_vars, b.reads, b.writes, b.name_hint,
                                  tirx.BufferStore(body.buffer, combined, body.indices), b.init,
                                  b.alloc_buffers, b.match_buffers, b.annotations)
