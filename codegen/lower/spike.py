"""Lowering of the spiking ops (sbc.ir.ops.spike): TE rules for SpikeEncode, SpikeExpand,
SpikeCollapse and DequantizeGroups, each following its op's NumPy reference, and the
hand-written kernel of SpikeMatMul (sbc.codegen.kernels.spike_matmul)."""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

from sbc.codegen.kernels.spike_matmul import spike_matmul_kernel
from sbc.codegen.lower.common import fmax, fmin, kernel_lowering, lowering
from sbc.ir.types import numpy_dtype


def _f(value: float, dtype: str):
    return tirx.const(value, dtype)


@lowering("SpikeEncode")
def _spike_encode(ctx, node, x):
    """V_th in the order the exported ops compute it (sum, / D, / k or * k, clamp), then
    counts = nearbyint(x / V_th) (half to even, as ONNX Round lowers), clipped, saturated."""
    dt = str(x.dtype)
    shape = list(x.shape)
    r = te.reduce_axis((0, shape[-1]), name="r")
    total = te.compute(shape[:-1] + [1], lambda *i: te.sum(tirx.abs(x[i[:-1] + (r,)]), axis=r),
                       name="spike_abs_sum")
    k, form = _f(node.attrs["k"], dt), node.attrs["k_form"]

    def threshold(*i):
        mean = total[i] / shape[-1].astype(dt)
        v = mean / k if form == "div" else mean * k
        return fmin(fmax(v, _f(node.attrs["lo"], dt)), _f(node.attrs["hi"], dt))
    v_th = te.compute(shape[:-1] + [1], threshold, name="spike_threshold")
    counts_dtype = ctx.out_dtype(0)
    info = np.iinfo(numpy_dtype(node.attrs["dtype"]))
    clip = node.attrs["clip"]
    low, high = (-clip, clip) if clip > 0 else (int(info.min), int(info.max))

    def counts(*i):
        n = tirx.nearbyint(x[i] / v_th[i[:-1] + (0,)])
        return tirx.max(tirx.min(n, _f(high, dt)), _f(low, dt)).astype(counts_dtype)
    return [te.compute(shape, counts, name="spike_counts"), v_th]


def _plane_weight(coding: str, t, steps: int):
    """weight_t of a train step as an int64 expression (see plane_weights)."""
    one = tirx.IntImm("int64", 1)
    if coding in ("binary", "ternary"):
        return one
    weight = tirx.shift_left(one, tirx.IntImm("int64", steps - 1) - t)
    if coding == "twos_complement":  # the sign plane weighs -2^(T-1)
        return tirx.Select(t == 0, -weight, weight)
    return weight


@lowering("SpikeExpand")
def _spike_expand(ctx, node, counts):
    coding, steps = node.attrs["coding"], node.attrs["steps"]

    def body(t, *i):
        n = counts[i].astype("int64")
        mag = tirx.abs(n)
        sign = tirx.Select(n < 0, tirx.IntImm("int64", -1), tirx.IntImm("int64", 1))
        shift = tirx.IntImm("int64", steps - 1) - t
        if coding in ("binary", "ternary"):
            s = tirx.Select(mag > t, sign, tirx.IntImm("int64", 0))
        elif coding == "twos_complement":
            s = tirx.bitwise_and(tirx.shift_right(n, shift), tirx.IntImm("int64", 1))
        else:
            s = sign * tirx.bitwise_and(tirx.shift_right(mag, shift), tirx.IntImm("int64", 1))
        return s.astype("int8")
    return te.compute(ctx.out_shape(), body, name="spike_expand")


@lowering("SpikeCollapse")
def _spike_collapse(ctx, node, train):
    coding, steps = node.attrs["coding"], int(train.shape[0])
    t = te.reduce_axis((0, train.shape[0]), name="t")
    total = te.compute(ctx.out_shape(), lambda *i: te.sum(
        _plane_weight(coding, t, steps) * train[(t,) + i].astype("int64"), axis=t),
        name="spike_collapse_sum")
    info = np.iinfo(numpy_dtype(node.attrs["dtype"]))
    low, high = tirx.IntImm("int64", int(info.min)), tirx.IntImm("int64", int(info.max))
    return te.compute(ctx.out_shape(), lambda *i: tirx.max(tirx.min(total[i], high), low)
                      .astype(ctx.out_dtype()), name="spike_collapse")


@lowering("DequantizeGroups")
def _dequantize_groups(ctx, node, q, scales):
    axis, group = node.attrs["axis"] % len(q.shape), node.attrs["group"]

    def body(*i):
        j = list(i)
        j[axis] = tirx.floordiv(i[axis], group)
        return q[i].astype("float32") * scales[tuple(j)]
    return te.compute(q.shape, body, name="dequantize_groups")


@kernel_lowering("SpikeMatMul")
def _spike_matmul(node):
    return spike_matmul_kernel(node)
