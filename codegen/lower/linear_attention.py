"""Lowering of the fused attention ops (sbc.ir.ops.linear_attention): LinearAttention and
SlidingWindowAttention, each a hand-written CPU kernel (sbc.codegen.kernels) built from the
node's checked dims; the GPU build swaps in its own kernels (codegen.schedule_gpu)."""

from __future__ import annotations

from sbc.codegen.kernels.linear_attention import linear_attention_kernel
from sbc.codegen.kernels.sliding_window import sliding_window_kernel
from sbc.codegen.lower.common import kernel_lowering, optional_input, require_f32
from sbc.ir.ops.linear_attention import linear_attention_dims, sliding_window_dims


@kernel_lowering("LinearAttention")
def _linear_attention(node):
    # Every rule and every T lowers to the recurrent kernel. The chunked kernel
    # (linear_attention_chunked, rules linear/gated) was not faster on a 2-core znver5 at the
    # small model's heads (Hq 8, Hkv 2, dk = dv = 64): with GQA both forms do the q.S product
    # at dk*dv per query token, and the chunked one adds its intra-chunk scores on top
    # (bench/bench_linear_attention_cpu.py).
    require_f32(node, "cpu")
    d = linear_attention_dims(node)
    return linear_attention_kernel(d["hq"], d["hkv"], d["dk"], d["dv"], d["scale"], d["decay"],
                                   d["beta"], past=optional_input(node, 3) is not None)


@kernel_lowering("SlidingWindowAttention")
def _sliding_window_attention(node):
    return sliding_window_kernel(*sliding_window_args(node, "cpu"))


def sliding_window_args(node, kind: str) -> tuple:
    """The arguments of a SlidingWindowAttention kernel builder (the CPU's here, the GPU's
    in codegen.schedule_gpu): (hq, hkv, d, dv, window, scale, past, position shape or None)."""
    require_f32(node, kind)
    d = sliding_window_dims(node)
    position = optional_input(node, 5)
    return (d["hq"], d["hkv"], d["d"], d["dv"], d["window"], d["scale"], d["past"],
            None if position is None else tuple(position.shape))
