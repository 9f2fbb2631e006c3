"""Rewrites that let row kernels vectorise (used by row_reduction; not a rule).

- rsqrt becomes 1 / sqrt: what TVM's LLVM codegen emits for it anyway, but TVM marks only
  sqrt vectorisable, so a norm's per-element block with rsqrt inlined stayed scalar.
- a max-reduction's -inf init becomes the lowest finite float, the identity TVM's rfactor
  knows for max (it refuses -inf). The result differs only where every element is -inf (the
  max is then -3.4e38; a softmax of such a row is NaN either way, as in the reference).

exp needs no rewrite: codegen/fast_math lowers it for llvm targets to vector arithmetic.
"""

from __future__ import annotations

import math

import tvm
import tvm_ffi
from tvm import s_tir, tirx

_RSQRT = tvm.ir.Op.get("tirx.rsqrt")
LOWEST = -3.4028234663852886e38  # the lowest finite float32


def vector_rewrites(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` with rsqrt as 1 / sqrt and float32 max inits of -inf as the lowest float."""
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

    return tvm_ffi.structural_map(func, [(tvm.ir.Call, call), (s_tir.SBlock, block)])
