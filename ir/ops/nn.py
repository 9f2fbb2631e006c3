"""Linear algebra and normalisation ops with ONNX semantics: MatMul, Gemm, Einsum,
LayerNormalization (opset 17), RMSNormalization (opset 23), and sbc's MatMulPacked."""

from __future__ import annotations

import numpy as np

from sbc.ir.ops.common import broadcast_shapes, normalize_axis
from sbc.ir.registry import Attr, OpError, op
from sbc.ir.types import TensorType


@op("MatMul", inputs=["A", "B"])
def matmul(node):
    a, b = node.inputs
    sa, sb = a.shape, b.shape
    if not sa or not sb:
        raise OpError("MatMul: inputs must have rank >= 1")
    ka = sa[-1]
    kb = sb[0] if len(sb) == 1 else sb[-2]
    if ka != kb and isinstance(ka, int) and isinstance(kb, int):
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
    a, b = node.inputs[:2]
    m = a.shape[1] if node.attrs["transA"] else a.shape[0]
    n = b.shape[0] if node.attrs["transB"] else b.shape[1]
    return [TensorType(a.dtype, (m, n))]


@gemm.reference
def _(attrs, a, b, c=None):
    a = a.T if attrs["transA"] else a
    b = b.T if attrs["transB"] else b
    y = attrs["alpha"] * (a @ b)
    if c is not None:
        y = y + attrs["beta"] * c
    return y.astype(a.dtype)


def _norm_outputs(node, stat_dtype="f32"):
    x = node.inputs[0]
    axis = normalize_axis(node.attrs["axis"], x.type.rank)
    stat_shape = tuple(d if i < axis else 1 for i, d in enumerate(x.shape))
    return x, axis, stat_shape


@op("LayerNormalization", inputs=["X", "Scale", "B?"], outputs=["Y", "Mean?", "InvStdDev?"],
    attrs={"axis": Attr("int", -1), "epsilon": Attr("float", 1e-5), "stash_type": Attr("int", 1),
           "num_outputs": Attr("int", 1)})
def layer_norm(node):
    """Outputs Mean and InvStdDev exist when num_outputs (set by the frontend) says so."""
    x, axis, stat = _norm_outputs(node)
    return [x.type] + [TensorType("f32", stat)] * (node.attrs["num_outputs"] - 1)


@layer_norm.reference
def _(attrs, x, scale, bias=None):
    axes = tuple(range(attrs["axis"] % x.ndim, x.ndim))
    xf = x.astype(np.float32)
    mean = xf.mean(axis=axes, keepdims=True)
    inv = 1 / np.sqrt(((xf - mean) ** 2).mean(axis=axes, keepdims=True) + attrs["epsilon"])
    y = (xf - mean) * inv * scale
    if bias is not None:
        y = y + bias
    return (y.astype(x.dtype), mean, inv)[:attrs["num_outputs"]]


@op("RMSNormalization", inputs=["X", "scale"], outputs=["Y"],
    attrs={"axis": Attr("int", -1), "epsilon": Attr("float", 1e-5), "stash_type": Attr("int", 1)})
def rms_norm(node):
    normalize_axis(node.attrs["axis"], node.inputs[0].type.rank)
    return [node.inputs[0].type]


@rms_norm.reference
def _(attrs, x, scale):
    axes = tuple(range(attrs["axis"] % x.ndim, x.ndim))
    xf = x.astype(np.float32)
    inv = 1 / np.sqrt((xf * xf).mean(axis=axes, keepdims=True) + attrs["epsilon"])
    return (xf * inv * scale).astype(x.dtype)


@op("MatMulPacked", inputs=["A", "B_packed"])
def matmul_packed(node):
    """MatMul with a weight pre-packed in column panels: B_packed[n // P, k, n % P] = B[k, n].
    A [..., K] x B_packed [N/P, K, P] -> [..., N]. Contiguous K x P panels keep the kernel's
    weight reads on few pages (a [K, N] weight strides N floats between k steps)."""
    a, bp = node.inputs
    if bp.type.rank != 3 or a.shape[-1] != bp.shape[1]:
        raise OpError(f"MatMulPacked: {a.type} x {bp.type} do not fit [..., K] x [N/P, K, P]")
    return [TensorType(a.dtype, a.shape[:-1] + (bp.shape[0] * bp.shape[2],))]


@matmul_packed.reference
def _(attrs, a, bp):
    panels, k, p = bp.shape
    return np.matmul(a, bp.transpose(1, 0, 2).reshape(k, panels * p)).astype(a.dtype)


def pack_weight(b: np.ndarray, panel: int) -> np.ndarray:
    k, n = b.shape
    return np.ascontiguousarray(b.reshape(k, n // panel, panel).transpose(1, 0, 2))


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
        for letter, d in zip(s, v.shape):
            if sizes.get(letter, 1) == 1:  # broadcast (ellipsis) dims: the non-1 size wins
                sizes[letter] = d
    return [TensorType(node.inputs[0].dtype, tuple(sizes[c] for c in out))]


einsum.reference(lambda attrs, *xs: np.asarray(np.einsum(attrs["equation"], *xs)).astype(xs[0].dtype))
