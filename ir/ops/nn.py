"""Linear algebra and normalisation ops with ONNX semantics: MatMul, Gemm, Einsum,
LayerNormalization (opset 17), RMSNormalization (opset 23), and sbc's MatMulPacked.
(Attention and RotaryEmbedding: attention.py.)"""

from __future__ import annotations

import numpy as np

from sbc.ir.assumptions import require
from sbc.ir.graph import aligned_empty
from sbc.ir.ops.common import broadcast_shapes, normalize_axis
from sbc.ir.registry import Attr, OpError, op
from sbc.ir.types import TensorType, numpy_dtype


def _broadcasts_to(shape, target) -> bool:
    """Whether `shape` broadcasts to exactly `target` (unidirectional broadcasting)."""
    try:
        return broadcast_shapes(shape, target) == tuple(target)
    except OpError:
        return False


@op("MatMul", inputs=["A", "B"])
def matmul(node):
    """numpy.matmul: [..., M, K] x [..., K, N] -> [broadcast(...), M, N]; a 1-D A is a row
    [K] (its M dim dropped), a 1-D B a column [K] (its N dim dropped)."""
    a, b = node.inputs
    sa, sb = a.shape, b.shape
    if not sa or not sb:
        raise OpError("MatMul: inputs must have rank >= 1")
    if a.dtype != b.dtype or a.dtype == "bool":
        raise OpError(f"MatMul: inputs must be numbers of one dtype, got {a.type} x {b.type}")
    ka = sa[-1]
    kb = sb[0] if len(sb) == 1 else sb[-2]
    if not require(ka, "==", kb, "MatMul inner dims"):
        raise OpError(f"MatMul: inner dims differ: {a.type} x {b.type}")
    batch = broadcast_shapes(sa[:-2], sb[:-2]) if len(sa) > 1 and len(sb) > 1 else ()
    rows = sa[-2:-1] if len(sa) > 1 else ()
    cols = sb[-1:] if len(sb) > 1 else ()
    if len(sa) == 1 and len(sb) > 1:
        batch = sb[:-2]
    if len(sb) == 1 and len(sa) > 1:
        batch = sa[:-2]
    return [TensorType(a.dtype, tuple(batch) + tuple(rows) + tuple(cols))]


matmul.reference(lambda attrs, a, b: np.matmul(a, b).astype(a.dtype))


@op("Gemm", inputs=["A", "B", "C?"], attrs={"alpha": Attr("float", 1.0), "beta": Attr("float", 1.0),
                                            "transA": Attr("int", 0), "transB": Attr("int", 0)})
def gemm(node):
    """alpha * A' B' + beta * C with A' = A or A^T (transA), B' likewise: [M, K] x [K, N];
    C (optional) broadcasts to [M, N]."""
    a, b = node.inputs[:2]
    if a.type.rank != 2 or b.type.rank != 2:
        raise OpError(f"Gemm: A and B must be 2-D, got {a.type}, {b.type}")
    m, ka = (a.shape[1], a.shape[0]) if node.attrs["transA"] else a.shape
    kb, n = (b.shape[1], b.shape[0]) if node.attrs["transB"] else b.shape
    if not require(ka, "==", kb, "Gemm inner dims"):
        raise OpError(f"Gemm: inner dims differ: {a.type} x {b.type} (transA="
                      f"{node.attrs['transA']}, transB={node.attrs['transB']})")
    c = node.inputs[2] if len(node.inputs) > 2 else None
    if c is not None and not _broadcasts_to(c.shape, (m, n)):
        raise OpError(f"Gemm: C {c.type} does not broadcast to [{m}, {n}]")
    return [TensorType(a.dtype, (m, n))]


@gemm.reference
def _(attrs, a, b, c=None):
    a = a.T if attrs["transA"] else a
    b = b.T if attrs["transB"] else b
    y = attrs["alpha"] * (a @ b)  # a Python float scalar keeps float32 math in float32
    if c is not None:
        y = y + attrs["beta"] * c
    return y.astype(a.dtype)


STASH_TYPES = {1: "f32", 10: "f16", 11: "f64"}  # ONNX TensorProto code -> sbc dtype


def _norm_outputs(node):
    """(X, axis, shape of the per-row statistics, stash dtype) of a normalization node; the
    scale (and bias) must broadcast to the normalized dims X[axis:]."""
    x = node.inputs[0]
    if not x.dtype.startswith("f"):
        raise OpError(f"{node.where()}: X must be a float tensor, got {x.type}")
    axis = normalize_axis(node.attrs["axis"], x.type.rank)
    for p in node.inputs[1:]:
        if p is not None and (p.dtype != x.dtype or not _broadcasts_to(p.shape, x.shape[axis:])):
            raise OpError(f"{node.where()}: scale/bias {p.type} must be {x.dtype} broadcasting "
                          f"to the normalized dims {list(map(str, x.shape[axis:]))}")
    if node.attrs["stash_type"] not in STASH_TYPES:
        raise OpError(f"{node.where()}: stash_type {node.attrs['stash_type']} is not "
                      f"supported (1, 10, 11 are)")
    stat_shape = tuple(d if i < axis else 1 for i, d in enumerate(x.shape))
    return x, axis, stat_shape, STASH_TYPES[node.attrs["stash_type"]]


@op("LayerNormalization", inputs=["X", "Scale", "B?"], outputs=["Y", "Mean?", "InvStdDev?"],
    attrs={"axis": Attr("int", -1), "epsilon": Attr("float", 1e-5), "stash_type": Attr("int", 1),
           "num_outputs": Attr("int", 1)})
def layer_norm(node):
    """Y = (X - mean) / sqrt(var + epsilon) * Scale + B over the dims from `axis` on, computed
    in stash_type. Outputs Mean and InvStdDev (stash_type, [X.shape[:axis], 1, ...]) exist when
    num_outputs (1 to 3, an sbc attribute the frontend sets from the ONNX node) says so."""
    x, axis, stat, stash = _norm_outputs(node)
    if not 1 <= node.attrs["num_outputs"] <= 3:
        raise OpError(f"{node.where()}: num_outputs must be 1 to 3")
    return [x.type] + [TensorType(stash, stat)] * (node.attrs["num_outputs"] - 1)


@layer_norm.reference
def _(attrs, x, scale, bias=None):
    axes = tuple(range(attrs["axis"] % x.ndim, x.ndim))
    xf = x.astype(numpy_dtype(STASH_TYPES[attrs["stash_type"]]))
    mean = xf.mean(axis=axes, keepdims=True)
    inv = 1 / np.sqrt(((xf - mean) ** 2).mean(axis=axes, keepdims=True) + attrs["epsilon"])
    y = (xf - mean) * inv * scale
    if bias is not None:
        y = y + bias
    return (y.astype(x.dtype), mean, inv)[:attrs["num_outputs"]]


@op("RMSNormalization", inputs=["X", "scale"], outputs=["Y"],
    attrs={"axis": Attr("int", -1), "epsilon": Attr("float", 1e-5), "stash_type": Attr("int", 1)})
def rms_norm(node):
    """Y = X / sqrt(mean(X^2) + epsilon) * scale over the dims from `axis` on, computed in
    stash_type."""
    _norm_outputs(node)
    return [node.inputs[0].type]


@rms_norm.reference
def _(attrs, x, scale):
    axes = tuple(range(attrs["axis"] % x.ndim, x.ndim))
    xf = x.astype(numpy_dtype(STASH_TYPES[attrs["stash_type"]]))
    inv = 1 / np.sqrt((xf * xf).mean(axis=axes, keepdims=True) + attrs["epsilon"])
    return (xf * inv * scale).astype(x.dtype)


# columns per weight panel: one vector of fp32, the CPU kernels' tile (MatMulPacked and the
# spike kernels share the layout)
PANEL = 16
NARROW_FLOATS = ("bf16", "f16")  # storage dtypes of f32 weights, widened where they are read


@op("MatMulPacked", inputs=["A", "B_packed"])
def matmul_packed(node):
    """MatMul with a weight pre-packed in column panels: B_packed[n // P, k, n % P] = B[k, n].
    A [..., K] x B_packed [N/P, K, P] -> [..., N]. Contiguous K x P panels keep the kernel's
    weight reads on few pages (a [K, N] weight strides N floats between k steps). An f32 A may
    take a bf16 or f16 B (a weight kept in its stored dtype), widened to f32 as it is read."""
    a, bp = node.inputs
    if bp.type.rank != 3 or not require(a.shape[-1], "==", bp.shape[1], "MatMul inner dims"):
        raise OpError(f"MatMulPacked: {a.type} x {bp.type} do not fit [..., K] x [N/P, K, P]")
    if bp.dtype != a.dtype and not (a.dtype == "f32" and bp.dtype in NARROW_FLOATS):
        raise OpError(f"MatMulPacked: a {bp.dtype} weight for {a.dtype} input (the weight's "
                      f"dtype is A's, or {'/'.join(NARROW_FLOATS)} for an f32 A)")
    return [TensorType(a.dtype, a.shape[:-1] + (bp.shape[0] * bp.shape[2],))]


@matmul_packed.reference
def _(attrs, a, bp):
    panels, k, p = bp.shape
    b = bp.transpose(1, 0, 2).reshape(k, panels * p).astype(a.dtype)
    return np.matmul(a, b).astype(a.dtype)


def pack_weight(b: np.ndarray, panel: int) -> np.ndarray:
    """B [K, N] in column panels [N/P, K, P], written straight into an aligned array (a graph
    param's layout: no second copy of a large weight when it becomes one)."""
    k, n = b.shape
    out = aligned_empty((n // panel, k, panel), b.dtype)
    out[...] = b.reshape(k, n // panel, panel).transpose(1, 0, 2)
    return out


def einsum_subscripts(equation: str, ranks: list[int]) -> tuple[list[str], str]:
    """Parse an Einsum equation into per-input and output letter strings; an ellipsis becomes
    upper-case letters aligned to the right, an implicit output lists the letters that occur
    once, in alphabetical order (after the ellipsis letters)."""
    eq = equation.replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise OpError(f"Einsum: '{equation}' has {len(terms)} operands, got {len(ranks)} inputs")
    ell_rank = max((r - len(t.replace("...", "")) for t, r in zip(terms, ranks) if "..." in t), default=0)
    ell = "".join(chr(ord("A") + i) for i in range(ell_rank))
    subs = []
    for t, r in zip(terms, ranks):
        n = r - len(t.replace("...", ""))
        subs.append(t.replace("...", ell[ell_rank - n:]) if "..." in t else t)
        if len(subs[-1]) != r:
            raise OpError(f"Einsum: operand '{t}' does not match an input of rank {r}")
    if "->" in eq:
        out = rhs.replace("...", ell)
    else:
        counts = {c: "".join(subs).count(c) for c in "".join(subs) if c.islower()}
        out = ell + "".join(sorted(c for c, n in counts.items() if n == 1))
    return subs, out


@op("Einsum", inputs=["Inputs*"], outputs=["Output"], attrs={"equation": Attr("str")})
def einsum(node):
    subs, out = einsum_subscripts(node.attrs["equation"], [v.type.rank for v in node.inputs])
    sizes: dict[str, object] = {}
    for s, v in zip(subs, node.inputs):
        if v.dtype != node.inputs[0].dtype:
            raise OpError(f"Einsum: inputs differ in dtype ({node.inputs[0].type}, {v.type})")
        for letter, d in zip(s, v.shape):
            known = sizes.get(letter, 1)
            if known == 1:  # broadcast (ellipsis) dims: the non-1 size wins
                sizes[letter] = d
            elif d != 1 and not require(d, "==", known, f"Einsum letter '{letter}'"):
                raise OpError(f"Einsum: '{letter}' is {known} in one operand and {d} in "
                              f"another ('{node.attrs['equation']}')")
    unknown = set(out) - set(sizes)
    if unknown:
        raise OpError(f"Einsum: output letters {sorted(unknown)} of '{node.attrs['equation']}' "
                      f"occur in no input")
    return [TensorType(node.inputs[0].dtype, tuple(sizes[c] for c in out))]


einsum.reference(lambda attrs, *xs: np.asarray(np.einsum(attrs["equation"], *xs)).astype(xs[0].dtype))
