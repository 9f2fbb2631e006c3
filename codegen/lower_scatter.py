"""TIR lowering of ScatterElements and ScatterND (sbc.ir.ops.shape): a copy of data, then the
updates applied one by one in index order, as the NumPy references do. The update loop is
serial: duplicate indices are deterministic (reduction 'none': the last update wins) and the
reductions never race. An index out of range is skipped, so nothing is ever written outside the
output; the run-time check of codegen.index_checks reports it as the gathers' bad indices are."""

from __future__ import annotations

from tvm import te, tirx

from sbc.codegen.index_checks import _unravel
from sbc.codegen.lower import _wrap, lowering

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


def _all(conds):
    cond = conds[0]
    for c in conds[1:]:
        cond = tirx.And(cond, c)
    return cond


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

    def apply(T, idx, upd, out):
        with T.serial(0, _numel(ishape)) as n:
            target = list(_unravel(n, ishape))
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

    def apply(T, idx, upd, out):
        with T.serial(0, count) as n:
            comps = [_wrap(idx[n * k + j], shape[j]) for j in range(k)]

            def write():
                base = _ravel(comps, shape[:k]) * size
                with T.serial(0, size) as m:
                    out[base + m] = combine(out[base + m], upd[n * size + m])
            if not k:
                write()
                return
            with T.If(_all([tirx.And(c >= 0, c < d) for c, d in zip(comps, shape)])):
                with T.Then():
                    write()

    return _scatter_extern(x, indices, updates, "scatter_nd", apply)
