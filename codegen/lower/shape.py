"""Lowering of the layout and indexing ops (sbc.ir.ops.shape): reshapes, Transpose, Expand,
Tile, Concat, Split, Slice, the gathers and scatters, Range, ConstantOfShape, Trilu and Pad.

The scatters are TIR: a copy of data, then the updates applied one by one in index order, as
the NumPy references do. The update loop is serial: duplicate indices are deterministic
(reduction 'none': the last update wins) and the reductions never race. An index out of range
is skipped, so nothing is ever written outside the output; the run-time check of
codegen.index_checks reports it as the gathers' bad indices are."""

from __future__ import annotations

from tvm import te, tirx, topi

from sbc.codegen.index_checks import _unravel
from sbc.codegen.lower.common import broadcast, lowering
from sbc.ir.dims import Sym


@lowering("Reshape", "Squeeze", "Unsqueeze", "Flatten", known=(1,))
def _reshape(ctx, node, x, *shape_args):
    return topi.reshape(x, ctx.out_shape())


@lowering("Transpose")
def _transpose(ctx, node, x):
    perm = node.attrs["perm"]
    perm = list(range(len(x.shape)))[::-1] if perm is None else [p % len(x.shape) for p in perm]
    return te.compute(ctx.out_shape(), lambda *i: x[tuple(i[perm.index(d)] for d in range(len(perm)))],
                      name="transpose")


@lowering("Expand", known=(1,))
def _expand(ctx, node, x, shape):
    return broadcast(ctx, [x], lambda v: v, "expand")


@lowering("Tile", known=(1,))
def _tile(ctx, node, x, reps):
    return te.compute(ctx.out_shape(), lambda *i: x[tuple(tirx.floormod(i[d], x.shape[d])
                                                          for d in range(len(i)))], name="tile")


@lowering("Concat")
def _concat(ctx, node, *xs):
    axis = node.attrs["axis"] % len(xs[0].shape)
    offsets, total = [], tirx.IntImm("int64", 0)
    for t in xs:
        offsets.append(total)
        total = total + t.shape[axis]

    def body(*i):
        out = None  # built from the last chunk backwards: chunk k wins where i < its end
        for t, off in reversed(list(zip(xs, offsets))):
            idx = list(i)
            idx[axis] = i[axis] - off
            val = t[tuple(idx)]
            out = val if out is None else tirx.Select(i[axis] < off + t.shape[axis], val, out)
        return out
    return te.compute(ctx.out_shape(), body, name="concat")


@lowering("Split", known=(1,))
def _split(ctx, node, x, *sizes):
    axis = node.attrs["axis"] % len(x.shape)
    outs, offset = [], tirx.IntImm("int64", 0)
    for k, v in enumerate(node.outputs):
        shape = ctx.shape(v.shape)
        outs.append(te.compute(shape, _shifted(x, axis, offset), name=f"split{k}"))
        offset = offset + shape[axis]
    return outs


def _shifted(x, axis, offset):
    """fcompute reading x at index + offset along axis (TE forbids keyword defaults)."""
    def body(*i):
        idx = list(i)
        idx[axis] = i[axis] + offset
        return x[tuple(idx)]
    return body


@lowering("Slice", known=(1, 2, 3, 4))
def _slice(ctx, node, x, starts, ends, axes=None, steps=None):
    from sbc.ir.ops.shape import _slice_range
    rank = len(x.shape)
    in_dims = node.inputs[0].shape
    begin = [tirx.IntImm("int64", 0)] * rank
    stride = [1] * rank
    axes_l = range(len(starts.array)) if axes is None else [int(a) % rank for a in axes.array.reshape(-1)]
    steps_l = [1] * len(starts.array) if steps is None else [int(s) for s in steps.array.reshape(-1)]
    for a, s, e, st in zip(axes_l, starts.array.reshape(-1), ends.array.reshape(-1), steps_l):
        s0, _, _ = _slice_range(in_dims[a], s if isinstance(s, Sym) else int(s),
                                e if isinstance(e, Sym) else int(e), st)
        begin[a] = ctx.expr(s0)
        stride[a] = st
    return te.compute(ctx.out_shape(), lambda *i: x[tuple(begin[d] + i[d] * stride[d] for d in range(rank))],
                      name="slice")


def _wrap(idx, dim):
    idx = idx.astype("int64")
    return tirx.Select(idx < tirx.IntImm("int64", 0), idx + dim, idx)


def _all(conds):
    """The conjunction of a non-empty list of conditions."""
    cond = conds[0]
    for c in conds[1:]:
        cond = tirx.And(cond, c)
    return cond


def _guarded_read(x, index, axes_dims):
    """x[index], or 0 where an index along `axes_dims` ({axis: dim}) is out of range: a bad
    index never reads outside x (the run-time check of codegen.index_checks reports it)."""
    if not axes_dims:  # a GatherND with index tuples of length 0 reads whole slices
        return x[tuple(index)]
    inside = _all([tirx.And(index[a] >= 0, index[a] < d) for a, d in axes_dims.items()])
    return tirx.if_then_else(inside, x[tuple(index)], tirx.const(0, x.dtype))


@lowering("Gather")
def _gather(ctx, node, x, indices):
    axis = node.attrs["axis"] % len(x.shape)
    q = len(indices.shape)

    def body(*i):
        idx = _wrap(indices[tuple(i[axis:axis + q])] if q else indices(), x.shape[axis])
        return _guarded_read(x, list(i[:axis]) + [idx] + list(i[axis + q:]), {axis: x.shape[axis]})
    return te.compute(ctx.out_shape(), body, name="gather")


@lowering("GatherElements")
def _gather_elements(ctx, node, x, indices):
    axis = node.attrs["axis"] % len(x.shape)

    def body(*i):
        idx = list(i)
        idx[axis] = _wrap(indices[i], x.shape[axis])
        # the indices may also be larger than data on the other axes: guard every axis
        return _guarded_read(x, idx, dict(enumerate(x.shape)))
    return te.compute(ctx.out_shape(), body, name="gather_elements")


@lowering("GatherND")
def _gather_nd(ctx, node, x, indices):
    b = node.attrs["batch_dims"]
    last = int(indices.shape[-1])
    q = len(indices.shape)

    def body(*i):
        lead = list(i[:q - 1])
        picked = [_wrap(indices[tuple(lead + [tirx.IntImm("int64", k)])], x.shape[b + k]) for k in range(last)]
        return _guarded_read(x, list(i[:b]) + picked + list(i[q - 1:]),
                             {b + k: x.shape[b + k] for k in range(last)})
    return te.compute(ctx.out_shape(), body, name="gather_nd")


@lowering("Range", known=(0, 1, 2))
def _range(ctx, node, start, limit, delta):
    dtype = ctx.out_dtype()
    s, d = start.scalar(ctx), delta.scalar(ctx)

    def as_dtype(v):
        return tirx.const(v, dtype) if isinstance(v, (int, float)) else v.astype(dtype)
    return te.compute(ctx.out_shape(), lambda i: as_dtype(s) + i.astype(dtype) * as_dtype(d), name="range")


@lowering("ConstantOfShape", known=(0,))
def _constant_of_shape(ctx, node, shape):
    value = node.attrs["value"]
    v = 0 if value is None else value.reshape(-1)[0].item()
    dtype = ctx.out_dtype()
    return te.compute(ctx.out_shape(), lambda *i: tirx.const(v, dtype), name="fill")


@lowering("Trilu")
def _trilu(ctx, node, x, k=None):
    def body(*i):
        row, col = i[-2], i[-1]
        kk = tirx.IntImm("int64", 0) if k is None else (k() if not k.shape else k[0]).astype("int64")
        keep = (col - row >= kk) if node.attrs["upper"] else (col - row <= kk)
        return tirx.Select(keep, x[i], tirx.const(0, x.dtype))
    return te.compute(x.shape, body, name="trilu")


@lowering("Pad", known=(1, 3))
def _pad(ctx, node, x, pads, value=None, axes=None):
    """Output index i reads x at i - before. Negative pads crop first (as in onnxruntime):
    edge and reflect fold that index into the range [lo, lo + kept) left by cropping.
    Inference has made sure that range holds what the mode needs (sbc.ir.ops.shape.pad)."""
    from sbc.ir.ops.shape import _pad_widths, pad_crop, pad_kept
    rank = len(x.shape)
    widths = _pad_widths(node, rank)
    mode = node.attrs["mode"]
    spans = []  # per axis: (before, lo, kept)
    for d, dim in enumerate(node.inputs[0].shape):
        b, a = widths.get(d, (0, 0))
        spans.append((ctx.expr(b), ctx.expr(pad_crop(b)), ctx.expr(pad_kept(dim, b, a))))

    def body(*i):
        src = [i[d] - b for d, (b, _, _) in enumerate(spans)]
        if mode != "constant":
            return x[tuple(lo + _FOLD[mode](s - lo, n) for s, (_, lo, n) in zip(src, spans))]
        inside = None
        for d, s in enumerate(src):
            cond = tirx.And(s >= tirx.IntImm("int64", 0), s < x.shape[d])
            inside = cond if inside is None else tirx.And(inside, cond)
        fill = tirx.const(0, x.dtype) if value is None else (value() if not value.shape else value[0])
        clamped = [tirx.max(tirx.min(s, x.shape[d] - 1), tirx.IntImm("int64", 0)) for d, s in enumerate(src)]
        return tirx.Select(inside, x[tuple(clamped)], fill) if inside is not None else x[tuple(clamped)]
    return te.compute(ctx.out_shape(), body, name="pad")


def _edge(s, n):
    return tirx.max(tirx.min(s, n - 1), tirx.IntImm("int64", 0))


def _reflect(s, n):
    """s reflected into [0, n) without repeating the ends. The period is kept >= 1 so that a
    kernel run with an axis too short (which the run-time checks refuse) cannot divide by 0."""
    period = tirx.max(2 * n - 2, tirx.IntImm("int64", 1))
    m = tirx.floormod(s, period)
    return tirx.Select(m < n, m, period - m)


_FOLD = {"edge": _edge, "reflect": _reflect}


# -- scatters -------------------------------------------------------------------------------------
#
# The updates are a loop nest whose outer loops are annotated INDEPENDENT: their iterations
# write disjoint elements, so a GPU build runs them in parallel (codegen.schedule_gpu.
# loop_nest); the CPU runs the loops as written. Reduction 'none' is parallel over the update
# index and the slice position (ONNX: the indices hold no duplicates); a reduction keeps each
# element's updates in index order in one iteration (ScatterND: one per slice position;
# ScatterElements: one per position off the axis), so every target combines them in the
# reference's order.

INDEPENDENT = "sbc.independent"

_COMBINE = {
    "none": lambda old, new: new,
    "add": lambda old, new: old + new,
    "mul": lambda old, new: old * new,
    "max": tirx.max,
    "min": tirx.min,
}


def _i64(v: int):
    return tirx.IntImm("int64", v)


def _numel(shape):
    n = _i64(1)
    for d in shape:
        n = n * d
    return n


def _ravel(index, shape):
    """Flat C-order position of a multi-index."""
    flat = _i64(0)
    for i, d in zip(index, shape):
        flat = flat * d + i
    return flat


def _scatter_extern(x, indices, updates, name, apply):
    """te.extern: copy x to the output (in parallel), then `apply(ib-proxies...)` the updates."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T
    shape = list(x.shape)

    def gen_ir(data_buf, idx_buf, upd_buf, out_buf):
        data, idx, upd, out = (T.buffer_proxy(b) for b in (data_buf, idx_buf, upd_buf, out_buf))
        with IRBuilder() as copy:
            with T.parallel(0, _numel(shape)) as i:
                out[i] = data[i]
        with IRBuilder() as update:
            apply(T, idx, upd, out)
        return tirx.SeqStmt([copy.get(), update.get()])

    return te.extern([shape], [x, indices, updates], lambda ins, outs: gen_ir(*ins, outs[0]),
                     dtype=x.dtype, out_buffers=[tirx.decl_buffer(shape, x.dtype, "out_buf")],
                     name=name, tag=name)


@lowering("ScatterElements")
def _scatter_elements(ctx, node, x, indices, updates):
    axis = node.attrs["axis"] % len(x.shape)
    combine = _COMBINE[node.attrs["reduction"]]
    shape, ishape = list(x.shape), list(indices.shape)

    off_axis = ishape[:axis] + ishape[axis + 1:]

    def apply(T, idx, upd, out):
        # updates that meet share their position off the axis: one iteration each
        with T.serial(0, _numel(off_axis), annotations={INDEPENDENT: 1}) as o:
            with T.serial(0, ishape[axis]) as j:
                position = list(_unravel(o, off_axis))
                position.insert(axis, j)
                n = _ravel(position, ishape)
                target = list(position)
                target[axis] = _wrap(idx[n], shape[axis])
                # off the axis, indices fit data (an assumption checked at run time): guard anyway
                inside = _all([tirx.And(t >= 0, t < d) for t, d in zip(target, shape)])
                with T.If(inside):
                    with T.Then():
                        at = _ravel(target, shape)
                        out[at] = combine(out[at], upd[n])

    return _scatter_extern(x, indices, updates, "scatter_elements", apply)


@lowering("ScatterND")
def _scatter_nd(ctx, node, x, indices, updates):
    combine = _COMBINE[node.attrs["reduction"]]
    shape, ishape = list(x.shape), list(indices.shape)
    k = int(ishape[-1])
    count, size = _numel(ishape[:-1]), _numel(shape[k:])  # index tuples, slice size

    def at_index(T, idx, n, write):
        """write(base): base the flat start of index tuple n's slice, if that tuple is in range."""
        comps = [_wrap(idx[n * k + j], shape[j]) for j in range(k)]
        if not k:
            write(_i64(0))
            return
        with T.If(_all([tirx.And(c >= 0, c < d) for c, d in zip(comps, shape)])):
            with T.Then():
                write(_ravel(comps, shape[:k]) * size)

    def apply(T, idx, upd, out):
        def element(n, m):
            def write(base):
                out[base + m] = combine(out[base + m], upd[n * size + m])
            return write

        if node.attrs["reduction"] == "none":  # every (update index, slice position) apart
            with T.serial(0, count, annotations={INDEPENDENT: 1}) as n:
                with T.serial(0, size, annotations={INDEPENDENT: 1}) as m:
                    at_index(T, idx, n, element(n, m))
        else:  # a slice position per iteration, the updates to it in index order inside
            with T.serial(0, size, annotations={INDEPENDENT: 1}) as m:
                with T.serial(0, count) as n:
                    at_index(T, idx, n, element(n, m))

    return _scatter_extern(x, indices, updates, "scatter_nd", apply)
