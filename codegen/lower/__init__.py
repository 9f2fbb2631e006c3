"""Lowering rules: sbc IR op -> TVM tensor expression (TE), one small function per op, in one
module per op family mirroring sbc.ir.ops (elementwise, nn, reduce, shape, spike,
linear_attention); `common` holds what they share. Importing this package registers every
rule, the hand-written kernels' included."""

from sbc.codegen.lower.common import (
    RULES, TVM_DTYPES, Ctx, Known, Rule, kernel_lowering, lowering,
)
from sbc.codegen.lower import (  # noqa: F401  (importing a family registers its rules)
    elementwise, linear_attention, nn, reduce, shape, spike,
)

__all__ = ["RULES", "TVM_DTYPES", "Ctx", "Known", "Rule", "kernel_lowering", "lowering"]
