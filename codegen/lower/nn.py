"""Lowering of the nn ops (sbc.ir.ops.nn): MatMul, the pre-packed MatMulPacked, Einsum, Gemm,
and the RMS / layer normalisations."""

from __future__ import annotations

from tvm import te, tirx, topi

from sbc.codegen.lower.common import broadcast, is_one, lowering, read_broadcast


@lowering("MatMul")
def _matmul(ctx, node, a, b):
    """C[..., i, j] = sum_k A[..., i, k] * B[..., k, j]; a 2-D B stays 2-D (a weight)."""
    a2 = topi.expand_dims(a, 0) if len(a.shape) == 1 else a
    b2 = topi.expand_dims(b, 1) if len(b.shape) == 1 else b
    shape = ctx.out_shape()
    if len(a.shape) == 1:
        shape = shape[:-1] + [1] + shape[-1:] if len(b.shape) > 1 else [1] + shape
    if len(b.shape) == 1:
        shape = shape + [1]
    rank = len(shape)
    k = te.reduce_axis((0, a2.shape[-1]), name="k")

    def body(*idx):
        batch, i, j = idx[:-2], idx[-2], idx[-1]
        ai = _index_for_batch(a2, batch, rank) + [i, k]
        bi = _index_for_batch(b2, batch, rank) + [k, j]
        return te.sum(a2[tuple(ai)] * b2[tuple(bi)], axis=k)

    c = te.compute(shape, body, name="matmul")
    out = ctx.out_shape()
    return c if len(shape) == len(out) else topi.reshape(c, out)


@lowering("MatMulPacked")
def _matmul_packed(ctx, node, a, bp):
    """C[..., i, j] = sum_k A[..., i, k] * Bp[j // P, k, j % P]; a bf16/f16 Bp is widened to
    A's dtype as it is loaded (the weight stays in its stored dtype in memory)."""
    p = int(bp.shape[2])
    k = te.reduce_axis((0, a.shape[-1]), name="k")

    def weight(j):
        w = bp[j // p, k, j % p]
        return w if bp.dtype == a.dtype else w.astype(a.dtype)

    def body(*idx):
        return te.sum(a[tuple(idx[:-1]) + (k,)] * weight(idx[-1]), axis=k)
    return te.compute(ctx.out_shape(), body, name="matmul_packed")


@lowering("Einsum")
def _einsum(ctx, node, *xs):
    """out[o...] = sum over the letters not in the output of prod_i x_i[letters of i]."""
    from sbc.ir.ops.nn import einsum_subscripts
    subs, out = einsum_subscripts(node.attrs["equation"], [len(x.shape) for x in xs])
    extents = {}
    for s, x in zip(subs, xs):
        for letter, d in zip(s, x.shape):
            if letter not in extents or is_one(extents[letter]):
                extents[letter] = d
    reduced = sorted({c for s in subs for c in s} - set(out))
    raxes = {c: te.reduce_axis((0, extents[c]), name=f"r_{c}") for c in reduced}
    zero = tirx.IntImm("int64", 0)

    def body(*idx):
        var = dict(zip(out, idx)) | raxes
        prod = None
        for s, x in zip(subs, xs):
            term = x[tuple(zero if is_one(d) and not is_one(extents[c]) else var[c]
                           for c, d in zip(s, x.shape))]
            prod = term if prod is None else prod * term
        return te.sum(prod, axis=list(raxes.values())) if raxes else prod
    return te.compute(ctx.out_shape(), body, name="einsum")


def _index_for_batch(t, batch, out_rank):
    dims = t.shape[:-2]
    offset = (out_rank - 2) - len(dims)
    return [tirx.IntImm("int64", 0) if is_one(d) else batch[n + offset] for n, d in enumerate(dims)]


@lowering("Gemm")
def _gemm(ctx, node, a, b, c=None):
    at = topi.transpose(a) if node.attrs["transA"] else a
    bt = topi.transpose(b) if node.attrs["transB"] else b
    k = te.reduce_axis((0, at.shape[1]), name="k")
    prod = te.compute(ctx.out_shape(), lambda i, j: te.sum(at[i, k] * bt[k, j], axis=k), name="gemm")
    alpha, beta = node.attrs["alpha"], node.attrs["beta"]
    dt = a.dtype
    if c is None:
        return te.compute(prod.shape, lambda i, j: prod[i, j] * tirx.const(alpha, dt), name="gemm_out")
    return broadcast(ctx, [prod, c], lambda p, cv: p * tirx.const(alpha, dt) + cv * tirx.const(beta, dt),
                     "gemm_out")


# -- normalisation --------------------------------------------------------------------------------

def _row_stats(x, axis, fn, name):
    axes = list(range(axis, len(x.shape)))
    raxes = [te.reduce_axis((0, x.shape[a]), name=f"r{a}") for a in axes]
    stat_shape = list(x.shape[:axis]) + [1] * len(axes)
    count = 1
    for a in axes:
        count = count * x.shape[a]
    total = te.compute(stat_shape, lambda *i: te.sum(fn(x[tuple(list(i[:axis]) + raxes)]), axis=raxes),
                       name=name)
    return total, count


def _stat_index(idx, axis, rank):
    return tuple(list(idx[:axis]) + [tirx.IntImm("int64", 0)] * (rank - axis))


@lowering("RMSNormalization")
def _rms_norm(ctx, node, x, scale):
    axis = node.attrs["axis"] % len(x.shape)
    rank = len(x.shape)
    sq, count = _row_stats(x, axis, lambda v: v * v, "rms_sq")
    eps = tirx.const(node.attrs["epsilon"], x.dtype)
    inv = te.compute(sq.shape, lambda *i: tirx.rsqrt(sq[i] / count.astype(x.dtype) + eps), name="rms_inv")
    return te.compute(x.shape, lambda *i: x[i] * inv[_stat_index(i, axis, rank)] * read_broadcast(scale, i, rank),
                      name="rms_norm")


@lowering("LayerNormalization")
def _layer_norm(ctx, node, x, scale, bias=None):
    axis = node.attrs["axis"] % len(x.shape)
    rank = len(x.shape)
    total, count = _row_stats(x, axis, lambda v: v, "ln_sum")
    n = count.astype(x.dtype)
    mean = te.compute(total.shape, lambda *i: total[i] / n, name="ln_mean")
    axes = list(range(axis, rank))
    raxes = [te.reduce_axis((0, x.shape[a]), name=f"v{a}") for a in axes]
    var = te.compute(total.shape, lambda *i: te.sum(
        (x[tuple(list(i[:axis]) + raxes)] - mean[i]) * (x[tuple(list(i[:axis]) + raxes)] - mean[i]),
        axis=raxes), name="ln_var")
    eps = tirx.const(node.attrs["epsilon"], x.dtype)
    inv = te.compute(total.shape, lambda *i: tirx.rsqrt(var[i] / n + eps), name="ln_inv")

    def body(*i):
        y = (x[i] - mean[_stat_index(i, axis, rank)]) * inv[_stat_index(i, axis, rank)] * read_broadcast(scale, i, rank)
        return y + read_broadcast(bias, i, rank) if bias is not None else y

    y = te.compute(x.shape, body, name="layer_norm")
    return [y, mean, inv][:node.attrs["num_outputs"]]
