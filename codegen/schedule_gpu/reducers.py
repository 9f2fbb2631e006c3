"""Whether TVM can split a kernel's reductions across threads.

dlight's Reduction / GeneralReduction rules split a row over threads (rfactor, then a
cross-thread all-reduce); TVM lowers that only if its ReducerRegistry knows the block's
combiner and identity: sums (identity 0), products (1), max / min with the lowest / highest
*finite* value. sbc's lowering reduces max / min with -inf / +inf (a row of all -inf reduces to
-inf, as NumPy and ONNX say), ReduceMax / ReduceMin with NaN-propagating Selects
(codegen.lower.common.fmax) and ArgMax / ArgMin with a pair; those failed the whole build
("No matched reducer", e.g. ReduceLogSumExp's `lse_max`). Such a kernel is left to the
Fallback rule, which reduces each row inside one thread. Softmax's max has te.max's identity
(the lowest finite value: the same softmax, codegen.lower.reduce), so a standalone softmax is
split like the norms: a block per row, its threads across the row.

(Registering the reducers with TVM from Python works for the build, but the registry keeps
the Python callbacks until C++ static destruction, which crashed the interpreter at exit.)
"""

from __future__ import annotations

import math

from tvm import s_tir, tirx

KNOWN_COMBINERS = ("Add", "Mul", "Max", "Min")


def reductions_splittable(func: tirx.PrimFunc) -> bool:
    """False if some reduction block of `func` has a combiner or identity TVM cannot lower
    across threads."""
    sch = s_tir.Schedule(func)
    try:
        roots = [sch.get_sblock("root")]
    except Exception:  # noqa: BLE001 - no root block: an extern kernel, nothing to split
        return True
    todo = list(roots)
    while todo:
        rv = todo.pop()
        block = sch.get(rv)
        if block.init is not None and not _known(block):
            return False
        todo.extend(sch.get_child_blocks(rv))
    return True


def _known(block) -> bool:
    init, body = block.init, block.body
    if not isinstance(init, tirx.BufferStore) or not isinstance(body, tirx.BufferStore):
        return False  # several outputs (ArgMax's index and value) or a structured update
    value = init.value
    if isinstance(value, tirx.FloatImm) and not math.isfinite(value.value):
        return False
    return type(body.value).__name__ in KNOWN_COMBINERS
