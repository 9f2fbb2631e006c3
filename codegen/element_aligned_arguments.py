"""Kernel arguments aligned to their element, not to 64 bytes:
`attr [A] "storage_alignment" = 64` -> `attr [A] "storage_alignment" = sizeof(A's element)`.

TVM declares every buffer 64-byte aligned, and MakePackedAPI tells LLVM that each tensor
argument's address is a multiple of that. NumPy aligns large arrays to 16 bytes only, so the
runtime had to copy every large input into an aligned buffer before each call (a [1, 4, 2048,
2048] probs matrix: 64 MB, ~10 ms). After this rewrite LLVM assumes only the element's
alignment and emits unaligned vector loads, which on x86-64 CPUs since Haswell / Zen cost the
same as aligned ones when the data happens to be aligned; a caller's array goes in as it is.
Buffers the kernels allocate themselves keep their 64 bytes.

The attributes sit on the chain of statements MakePackedAPI puts in front of each kernel body
(codegen.tir_spine). The pass runs after TVM's TIR lowering in the cpu target's pipeline
(codegen.targets.cpu); the artifact records it (`argument_alignment: "element"`) so that the
runtime knows it need not copy.
"""

from __future__ import annotations

import tvm
from tvm import tirx

from sbc.codegen.tir_spine import spine_pass

STORAGE_ALIGNMENT = "storage_alignment"


def element_aligned(stmt):
    """A storage_alignment attribute lowered to the size of its buffer's element."""
    if not isinstance(stmt, tirx.AttrStmt) or stmt.attr_key != STORAGE_ALIGNMENT:
        return stmt
    value = tirx.IntImm("int32", _element_bytes(stmt.node, int(stmt.value)))
    return tirx.AttrStmt(stmt.node, stmt.attr_key, value, stmt.body)


def _element_bytes(var, declared: int) -> int:
    try:
        dtype = tvm.runtime.DataType(str(var.dtype))
    except Exception:  # noqa: BLE001 - not a typed data pointer: keep what TVM declared
        return declared
    return min(declared, max(1, dtype.bits * dtype.lanes // 8))


element_aligned_arguments = spine_pass("sbc.ElementAlignedArguments", element_aligned)
