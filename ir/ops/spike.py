"""Spiking ops (SpikingBrain's "W8ASpike"): the adaptive-threshold neuron, lossless spike
trains, and the matmul that consumes spike counts with integer arithmetic.

    SpikeEncode(X) -> (counts, scale)   V_th = clamp(mean|X| (last axis) / k, lo, hi) per row,
                                        counts = round_half_even(X / V_th), scale = V_th
    SpikeExpand(counts) -> train        counts -> [T, ...] spike train in a coding (exact)
    SpikeCollapse(train) -> counts      the inverse (exact); the coding is the train's type's
    SpikeMatMul(counts, scale, W, ...)  (counts * scale) @ W (+ bias) with integer products
    DequantizeGroups(Q, scales)         int8 weights with one scale per group of K channels

Counts carry the `count` spike encoding in their type, trains their coding (sbc.ir.types).
"""

from __future__ import annotations

import numpy as np

from sbc.ir.graph import aligned_empty
from sbc.ir.dims import Sym
from sbc.ir.ops.common import normalize_axis
from sbc.ir.ops.nn import PANEL
from sbc.ir.registry import Attr, OpError, op
from sbc.ir.types import SPIKE_DTYPES, SPIKE_ENCODINGS, TensorType, numpy_dtype

TRAIN_CODINGS = SPIKE_ENCODINGS[1:]  # every encoding but `count` is a train over T steps
SIGNED_CODINGS = ("ternary", "bitwise_bidirectional", "twos_complement")
THRESHOLD_FORMS = ("div", "mul")  # V_th = mean / k (Div by k) or mean * k (Mul by 1/k)


# -- SpikeEncode -----------------------------------------------------------------------------

@op("SpikeEncode", inputs=["X"], outputs=["counts", "scale"],
    attrs={"k": Attr("float", 3.0), "k_form": Attr("str", "div"), "lo": Attr("float", 1e-5),
           "hi": Attr("float", 1e4), "clip": Attr("int", 0), "dtype": Attr("dtype", "i16")})
def spike_encode(node):
    """The adaptive-threshold neuron in one step, per row of X's last axis:
    V_th = min(max(mean(|X|) / k, lo), hi) (k_form "mul": mean(|X|) * k), every step in X's
    float dtype exactly as the exported Abs, ReduceMean, Div (or Mul), Clip ops compute it;
    counts = round_half_even(X / V_th), clipped to [-clip, clip] when clip > 0, stored as
    `dtype` with the count encoding (saturating at the dtype's range: exact while |counts| fits,
    which |X / V_th| <= k * D guarantees unless V_th was clamped at hi); scale = V_th [..., 1]."""
    x = node.inputs[0]
    if not x.dtype.startswith("f") or x.type.rank < 1:
        raise OpError(f"{node.where()}: X must be a float tensor of rank >= 1, got {x.type}")
    if node.attrs["k_form"] not in THRESHOLD_FORMS:
        raise OpError(f"{node.where()}: k_form must be one of {THRESHOLD_FORMS}")
    if node.attrs["dtype"] not in SPIKE_DTYPES:
        raise OpError(f"{node.where()}: counts dtype must be one of {SPIKE_DTYPES}")
    counts = TensorType(node.attrs["dtype"], x.shape, "count")
    return [counts, TensorType(x.dtype, x.shape[:-1] + (1,))]


def threshold(x: np.ndarray, k: float, k_form: str, lo: float, hi: float) -> np.ndarray:
    """V_th per row, op by op as the exported graph computes it (same NumPy calls as the
    Abs, ReduceMean, Div/Mul and Clip references, in x's dtype), so it is bit-identical."""
    as_x = lambda c: np.asarray(c, dtype=x.dtype)  # noqa: E731  (a float64 scalar would widen)
    mean = np.asarray(np.mean(np.abs(x), axis=(x.ndim - 1,), keepdims=True)).astype(x.dtype)
    v = mean / as_x(k) if k_form == "div" else mean * as_x(k)
    return np.minimum(np.maximum(v.astype(x.dtype), as_x(lo)), as_x(hi))


def saturate(n: np.ndarray, dtype: str) -> np.ndarray:
    info = np.iinfo(numpy_dtype(dtype))
    return np.clip(n, info.min, info.max).astype(numpy_dtype(dtype))


@spike_encode.reference
def _(attrs, x):
    v_th = threshold(x, attrs["k"], attrs["k_form"], attrs["lo"], attrs["hi"])
    n = np.round((x / v_th).astype(x.dtype))  # np.round: half to even, like ONNX Round
    if attrs["clip"] > 0:
        n = np.clip(n, -attrs["clip"], attrs["clip"])
    return saturate(n, attrs["dtype"]), v_th


# -- spike trains ----------------------------------------------------------------------------

def spike_steps(counts: np.ndarray, coding: str) -> int:
    """T, the number of steps a lossless train of `counts` needs (SpikingBrain's rules):
    binary max n, ternary max |n|, bitwise bits of max n, bidirectional bits of max |n|,
    two's complement the bits that hold [min n, max n] including the sign plane."""
    n = np.asarray(counts, dtype=np.int64)
    top = int(n.max(initial=0))
    mag = int(np.abs(n).max(initial=0))
    if coding == "binary":
        return top
    if coding == "ternary":
        return mag
    if coding == "bitwise":
        return top.bit_length()
    if coding == "bitwise_bidirectional":
        return mag.bit_length()
    if coding == "twos_complement":
        low = int(n.min(initial=0))
        return max(top.bit_length(), (-low - 1).bit_length()) + 1
    raise ValueError(f"unknown spike coding {coding!r}")


def _check_coding(node, coding: str) -> None:
    if coding not in TRAIN_CODINGS:
        raise OpError(f"{node.where()}: coding must be one of {TRAIN_CODINGS}, got {coding!r}")


@op("SpikeExpand", inputs=["counts"], outputs=["train"],
    attrs={"coding": Attr("str"), "steps": Attr("int")})
def spike_expand(node):
    """counts [...] (count encoding) -> train [steps, ...] i8 in `coding`, exactly: collapsing
    it gives the counts back. `steps` is T (spike_steps); counts that need more steps than
    given, or negative counts in an unsigned coding, are an error at run time."""
    counts = node.inputs[0]
    coding = node.attrs["coding"]
    _check_coding(node, coding)
    if counts.type.encoding != "count":
        raise OpError(f"{node.where()}: input must be spike counts ({{spike=count}}), "
                      f"got {counts.type}")
    if node.attrs["steps"] < (1 if coding == "twos_complement" else 0):
        raise OpError(f"{node.where()}: steps must be >= 0 (>= 1 for two's complement)")
    return [TensorType("i8", (node.attrs["steps"],) + counts.shape, coding)]


def plane_weights(coding: str, steps: int) -> np.ndarray:
    """The weight of each step: n = sum_t weight_t * s_t (int64)."""
    if coding in ("binary", "ternary"):
        return np.ones(steps, dtype=np.int64)
    weights = np.left_shift(np.int64(1), np.arange(steps - 1, -1, -1, dtype=np.int64))
    if coding == "twos_complement":
        weights[0] = -weights[0]
    return weights


def expand(counts: np.ndarray, coding: str, steps: int) -> np.ndarray:
    n = np.asarray(counts, dtype=np.int64)
    if coding not in SIGNED_CODINGS and (n < 0).any():
        raise ValueError(f"{coding} spike trains hold only counts >= 0, got {int(n.min())}")
    if spike_steps(n, coding) > steps:
        raise ValueError(f"counts in [{int(n.min())}, {int(n.max())}] need "
                         f"{spike_steps(n, coding)} {coding} steps, only {steps} given")
    t = np.arange(steps, dtype=np.int64).reshape((steps,) + (1,) * n.ndim)
    if coding in ("binary", "ternary"):  # the first |n| steps fire
        train = np.sign(n) * (np.abs(n) > t)
    elif coding == "twos_complement":  # the T-bit pattern of n, MSB first
        train = (np.bitwise_and(n, (1 << steps) - 1) >> (steps - 1 - t)) & 1
    else:  # bitwise: bit planes of |n| MSB first, with n's sign when bidirectional
        train = np.sign(n) * ((np.abs(n) >> (steps - 1 - t)) & 1)
    return train.astype(np.int8)


@spike_expand.reference
def _(attrs, counts):
    return expand(counts, attrs["coding"], attrs["steps"])


@op("SpikeCollapse", inputs=["train"], outputs=["counts"],
    attrs={"coding": Attr("str"), "dtype": Attr("dtype", "i16")})
def spike_collapse(node):
    """train [T, ...] in `coding` (which must be the train's type's encoding) -> counts [...]
    (`dtype`, count encoding): n = sum_t weight_t * s_t with weight 1 (binary, ternary),
    2^(T-1-t) (bitwise codings) and -2^(T-1) for the first plane of two's complement."""
    train, coding = node.inputs[0], node.attrs["coding"]
    _check_coding(node, coding)
    if train.type.encoding != coding or train.type.rank < 1:
        raise OpError(f"{node.where()}: input must be a {coding} spike train [T, ...] "
                      f"({{spike={coding}}}), got {train.type}")
    if node.attrs["dtype"] not in SPIKE_DTYPES:
        raise OpError(f"{node.where()}: counts dtype must be one of {SPIKE_DTYPES}")
    return [TensorType(node.attrs["dtype"], train.shape[1:], "count")]


def collapse(train: np.ndarray, coding: str) -> np.ndarray:
    """counts (int64) of a train: the weighted sum of its steps."""
    weights = plane_weights(coding, train.shape[0]).reshape((-1,) + (1,) * (train.ndim - 1))
    return (weights * train.astype(np.int64)).sum(axis=0)


@spike_collapse.reference
def _(attrs, train):
    return saturate(collapse(train, attrs["coding"]), attrs["dtype"])


# -- SpikeMatMul -----------------------------------------------------------------------------

INT_COUNT_DTYPES = ("i8", "i16")  # int32 accumulation of a 128-group stays exact for these
SPIKE_MATMUL_KERNELS = ("dense", "skip_zero_tiles")  # how the CPU computes it; same numbers


@op("SpikeMatMul", inputs=["counts", "scale", "W", "W_scale?", "bias?"], outputs=["Y"],
    attrs={"group": Attr("int", 128), "kernel": Attr("str", "dense")})
def spike_matmul(node):
    """Y = (counts * scale) @ W (+ bias), [..., K] x [K, N] -> [..., N] f32, with W in one of
    two pre-packed layouts (P = 16 columns per panel):
      f32 W [N/P, K, P] (W[k, n] at [n // P, k, n % P], MatMulPacked's layout):
          Y = (float(counts) @ W) * scale + bias
      i8 W [N/P, K/4, P, 4] (W[k, n] at [n // P, k // 4, n % P, k % 4]: K in quads, for
      byte dot products of 4) with W_scale f32 [ceil(K / group), N], one scale per group
      of `group` input channels:
          acc_g = sum_{k in group g} int32(counts_k) * int32(W_k)    (exact in int32)
          Y = (sum_g float(acc_g) * W_scale[g]) * scale + bias         (g in order, f32)
    counts are i8/i16 spike counts, scale [..., 1] (SpikeEncode's outputs), bias f32 [N].
    kernel: "dense", or "skip_zero_tiles" (int8 W only: the CPU kernel skips every all-zero
    tile of rows x `group` counts; chosen per layer by the spike-sparsity pass)."""
    counts, scale, w = node.inputs[:3]
    w_scale = node.inputs[3] if len(node.inputs) > 3 else None
    bias = node.inputs[4] if len(node.inputs) > 4 else None
    k = counts.shape[-1] if counts.type.rank else None
    if counts.type.encoding != "count" or counts.dtype not in INT_COUNT_DTYPES:
        raise OpError(f"{node.where()}: counts must be i8/i16 spike counts, got {counts.type}")
    if scale.dtype != "f32" or scale.shape != counts.shape[:-1] + (1,):
        raise OpError(f"{node.where()}: scale must be f32 {list(map(str, counts.shape[:-1]))}"
                      f" + [1], got {scale.type}")
    n = _check_weight(node, w, w_scale, k)
    if node.attrs["kernel"] not in SPIKE_MATMUL_KERNELS:
        raise OpError(f"{node.where()}: kernel must be one of {SPIKE_MATMUL_KERNELS}, "
                      f"got {node.attrs['kernel']!r}")
    if node.attrs["kernel"] == "skip_zero_tiles" and w.dtype != "i8":
        raise OpError(f"{node.where()}: kernel 'skip_zero_tiles' needs int8 weights, got {w.type}")
    if bias is not None and (bias.dtype != "f32" or bias.shape != (n,)):
        raise OpError(f"{node.where()}: bias must be f32 [{n}], got {bias.type}")
    return [TensorType("f32", counts.shape[:-1] + (n,))]


def _check_weight(node, w, w_scale, k) -> int:
    """N, after checking W (and W_scale) against one of the two layouts."""
    group = node.attrs["group"]
    if w.dtype == "f32" and w.type.rank == 3 and w.shape[1] == k and w.shape[2] == PANEL:
        if w_scale is not None:
            raise OpError(f"{node.where()}: a float weight takes no W_scale")
        return w.shape[0] * PANEL
    if w.dtype == "i8" and w.type.rank == 4 and w.shape[2:] == (PANEL, 4) \
            and isinstance(k, int) and 4 * w.shape[1] == k:
        n = w.shape[0] * PANEL
        if group <= 0 or group % 4:
            raise OpError(f"{node.where()}: group must be a positive multiple of 4, got {group}")
        groups = -(-k // group)
        if w_scale is None or w_scale.dtype != "f32" or w_scale.shape != (groups, n):
            got = "none" if w_scale is None else w_scale.type
            raise OpError(f"{node.where()}: an int8 weight needs W_scale f32 [{groups}, {n}], "
                          f"got {got}")
        return n
    raise OpError(f"{node.where()}: W {w.type} is neither f32 [N/{PANEL}, {k}, {PANEL}] nor "
                  f"i8 [N/{PANEL}, K/4, {PANEL}, 4] for K = {k}")


def unpack_spike_weight(w: np.ndarray) -> np.ndarray:
    """SpikeMatMul's packed weight (either layout) -> [K, N]."""
    if w.ndim == 3:
        panels, k, p = w.shape
        return w.transpose(1, 0, 2).reshape(k, panels * p)
    panels, quads, p, four = w.shape
    return w.transpose(1, 3, 0, 2).reshape(quads * four, panels * p)


def pack_spike_weight(w: np.ndarray) -> np.ndarray:
    """[K, N] -> SpikeMatMul's layout: [N/P, K, P] for f32, [N/P, K/4, P, 4] for int8."""
    k, n = w.shape
    if w.dtype == np.float32:
        panels = w.reshape(k, n // PANEL, PANEL).transpose(1, 0, 2)
    else:
        panels = w.reshape(k // 4, 4, n // PANEL, PANEL).transpose(2, 0, 3, 1)
    out = aligned_empty(panels.shape, w.dtype)  # a param's layout: no copy when it becomes one
    out[...] = panels
    return out


@spike_matmul.reference
def _(attrs, counts, scale, w, w_scale=None, bias=None):
    dense = unpack_spike_weight(w)
    if w_scale is None:
        y = np.matmul(counts.astype(np.float32), dense).astype(np.float32)
    else:
        group = attrs["group"]
        y = np.zeros(counts.shape[:-1] + (dense.shape[1],), np.float32)
        for g, start in enumerate(range(0, dense.shape[0], group)):
            acc = np.matmul(counts[..., start:start + group].astype(np.int64),
                            dense[start:start + group].astype(np.int64)).astype(np.int32)
            y = (y + acc.astype(np.float32) * w_scale[g]).astype(np.float32)
    y = (y * scale).astype(np.float32)
    return y if bias is None else (y + bias).astype(np.float32)


# -- DequantizeGroups ------------------------------------------------------------------------

@op("DequantizeGroups", inputs=["Q", "scales"], outputs=["Y"],
    attrs={"axis": Attr("int"), "group": Attr("int", 128)}, foldable=False)
def dequantize_groups(node):
    """Y = float(Q) * scales[..., k // group, ...] along `axis` (scales has Q's shape with
    that axis cut to ceil(K / group)): symmetric int8 weights, one scale per group of input
    channels. Not foldable: folding it back into f32 weights would undo the quantisation."""
    q, scales = node.inputs
    axis = normalize_axis(node.attrs["axis"], q.type.rank)
    k, group = q.shape[axis], node.attrs["group"]
    if q.dtype != "i8" or scales.dtype != "f32" or group <= 0 or isinstance(k, Sym):
        raise OpError(f"{node.where()}: needs i8 Q of static K, f32 scales, group > 0; got "
                      f"{q.type}, {scales.type}, group {group}")
    want = q.shape[:axis] + (-(-k // group),) + q.shape[axis + 1:]
    if scales.shape != want:
        raise OpError(f"{node.where()}: scales must be [{', '.join(map(str, want))}], "
                      f"got {scales.type}")
    return [TensorType("f32", q.shape)]


def group_scales_to_channels(scales: np.ndarray, axis: int, group: int, k: int) -> np.ndarray:
    return np.repeat(scales, group, axis=axis).take(np.arange(k), axis=axis)


@dequantize_groups.reference
def _(attrs, q, scales):
    axis = attrs["axis"] % q.ndim
    per_channel = group_scales_to_channels(scales, axis, attrs["group"], q.shape[axis])
    return (q.astype(np.float32) * per_channel).astype(np.float32)


def quantize_groups(w: np.ndarray, axis: int, group: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with one scale per group along `axis`: scale = absmax / 127 (1 where a
    group is all zero), q = round_half_even(w / scale) in [-127, 127]."""
    k = w.shape[axis]
    moved = np.moveaxis(w, axis, 0)
    pad = (-k) % group
    padded = np.concatenate([moved, np.zeros((pad,) + moved.shape[1:], w.dtype)]) if pad else moved
    blocks = padded.reshape((-1, group) + moved.shape[1:])
    absmax = np.abs(blocks).max(axis=1)
    scales = np.where(absmax > 0, absmax / np.float32(127), np.float32(1)).astype(np.float32)
    per_channel = np.repeat(scales, group, axis=0)[:k]
    q = np.clip(np.round(moved / per_channel), -127, 127).astype(np.int8)
    return np.moveaxis(q, 0, axis), np.moveaxis(scales, 0, axis)
