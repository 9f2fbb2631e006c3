"""The hand-written GPU kernels (LinearAttention, SlidingWindowAttention, SpikeMatMul): which
one serves a node, and their specialisation for the actual target.

The SpikeMatMul kernel's tiles depend on the target's limits (warp size, shared memory), which
the lowering does not know: it is lowered with limits every GPU target meets and rebuilt for
the actual target (SPECIALISE); so is the chunked LinearAttention kernel's (chunk staging,
SPECIALISE_CHUNKED).
"""

from __future__ import annotations

import functools
import json

import tvm
from tvm import tirx

from sbc.codegen.kernels.linear_attention_chunked_gpu import (SHORT, chunked_gpu_args,
                                                             chunked_supported,
                                                             linear_attention_chunked_gpu_kernel)
from sbc.codegen.kernels.linear_attention_gpu import linear_attention_gpu_kernel
from sbc.codegen.kernels.sliding_window_gpu import sliding_window_gpu_kernel
from sbc.codegen.kernels.spike_matmul_gpu import (GpuLimits, spike_matmul_gpu_args,
                                                  spike_matmul_gpu_func)
from sbc.codegen.lower.common import optional_input, require_f32
from sbc.codegen.lower.linear_attention import sliding_window_args
from sbc.ir.ops.linear_attention import linear_attention_dims

SPECIALISE = "sbc.spike_matmul_args"  # JSON of spike_matmul_gpu_func's arguments
SPECIALISE_CHUNKED = "sbc.linear_attention_chunked_args"  # and of the chunked LinearAttention's


def _chunked_for(maca: bool, limits: GpuLimits, **args) -> tirx.PrimFunc:
    # MACA's host program (codegen.maca) has no conditional steps, so there the kernel takes
    # the chunked path at every T (three launches for a decode step too)
    return linear_attention_chunked_gpu_kernel(**args, limits=limits, short=0 if maca else SHORT)


# attribute -> fn(maca, limits, **arguments) rebuilding the kernel it holds the arguments of
SPECIALISED = {SPECIALISE: lambda maca, limits, **args: spike_matmul_gpu_func(**args, limits=limits),
               SPECIALISE_CHUNKED: _chunked_for}


def specialise_for(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Every PrimFunc carrying a SPECIALISED attribute rebuilt with `target`'s limits; same
    signature and attributes, so the calls to it stay as they are."""
    limits = GpuLimits.of(target)
    maca = "maca" in [str(k) for k in target.keys]
    out = mod.clone()
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or func.attrs is None:
            continue
        for attr in SPECIALISED:
            if attr in func.attrs:
                new = _specialised(attr, str(func.attrs[attr]), maca, limits)
                for key, value in func.attrs.items():
                    new = new.with_attr(key, value)
                out.update_func(gv, new)
    return out


@functools.lru_cache(maxsize=64)  # each layer asks again, and parsing TVMScript takes ~1 s
def _specialised(attr: str, args_json: str, maca: bool, limits: GpuLimits) -> tirx.PrimFunc:
    return SPECIALISED[attr](maca, limits, **json.loads(args_json))


def _linear_attention(node):
    """Rules linear and gated: the chunk-parallel kernel (which runs the recurrent nest itself
    below 16 tokens, so decode stays one launch); delta rules, and heads too large for its
    register tiles: the recurrent kernel."""
    require_f32(node, "gpu")
    d = linear_attention_dims(node)
    past = optional_input(node, 3) is not None
    if d["beta"] is None and chunked_supported(d["dk"], d["dv"], d["decay"]):
        args = chunked_gpu_args(d["hq"], d["hkv"], d["dk"], d["dv"], d["scale"], d["decay"], past)
        return linear_attention_chunked_gpu_kernel(**args).with_attr(SPECIALISE_CHUNKED,
                                                                     json.dumps(args))
    return linear_attention_gpu_kernel(d["hq"], d["hkv"], d["dk"], d["dv"], d["scale"],
                                       d["decay"], d["beta"], past=past)


def _sliding_window(node):
    return sliding_window_gpu_kernel(*sliding_window_args(node, "gpu"))


def _spike_matmul(node):
    args = spike_matmul_gpu_args(node)
    return spike_matmul_gpu_func(**args).with_attr(SPECIALISE, json.dumps(args))


# op -> fn(node) -> thread-bound PrimFunc, replacing the CPU kernel lowering of that op
GPU_KERNELS = {"LinearAttention": _linear_attention, "SlidingWindowAttention": _sliding_window,
               "SpikeMatMul": _spike_matmul}
