"""Lowering of the reductions (sbc.ir.ops.reduce): Reduce*, ArgMax / ArgMin, CumSum (a scan)
and Softmax / LogSoftmax."""

from __future__ import annotations

from tvm import ir, te, tirx

from sbc.codegen.fast_math import exp_nonpositive
from sbc.codegen.lower.common import divide, fmax, fmin, lowering


def _reduce_axes(node, x, axes_known):
    rank = len(x.shape)
    axes = [] if axes_known is None else [int(a) % max(rank, 1) for a in axes_known.array.reshape(-1)]
    if not axes and not node.attrs.get("noop_with_empty_axes", 0):
        axes = list(range(rank))
    return sorted(set(axes))


def _source_index(idx, axes, keep, rank, reduce_vars):
    """Index into the reduced input for output index idx (keepdims or not)."""
    full, it, ri = [], iter(idx), iter(reduce_vars)
    for d in range(rank):
        if d in axes:
            if keep:
                next(it)
            full.append(next(ri))
        else:
            full.append(next(it))
    return tuple(full)


def _reduce(x, axes, keep, combine, finish=None, pre=None, name="reduce"):
    raxes = [te.reduce_axis((0, x.shape[a]), name=f"r{a}") for a in axes]
    rank = len(x.shape)
    out_shape = [1 if d in axes else s for d, s in enumerate(x.shape) if keep or d not in axes]
    pre = pre or (lambda v: v)
    red = te.compute(out_shape, lambda *i: combine(pre(x[_source_index(i, axes, keep, rank, raxes)]),
                                                   axis=raxes), name=name)
    return te.compute(out_shape, lambda *i: finish(red[i]), name=name + "_out") if finish else red


@lowering("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceSumSquare", "ReduceLogSumExp", known=(1,))
def _reduce_rule(ctx, node, x, axes=None):
    """Reduce* with keepdims; Mean divides by the (possibly symbolic) element count."""
    axes = _reduce_axes(node, x, axes)
    keep = node.attrs["keepdims"]
    if not axes:
        return te.compute(x.shape, lambda *i: x[i], name="noop")
    count = 1
    for a in axes:
        count = count * x.shape[a]
    op = node.op
    if op == "ReduceLogSumExp":
        return _logsumexp(x, axes, keep)
    pre = {"ReduceL1": tirx.abs, "ReduceL2": lambda v: v * v, "ReduceSumSquare": lambda v: v * v}.get(op)
    combine = {"ReduceMax": _te_nanmax, "ReduceMin": _te_nanmin, "ReduceProd": _te_prod}.get(op, te.sum)
    finish = None
    if op == "ReduceMean":
        dt = ctx.out_dtype()
        # the mean of nothing is 0 as in onnxruntime (1.31, floats and ints): the empty sum
        # over at least 1, never a division by 0 (TVM refuses a constant one at compile time).
        # ONNX's reference implementation (NumPy) gives NaN, and the lowest int for ints.
        count = tirx.max(_as_expr(count), tirx.IntImm("int64", 1))
        finish = lambda v: divide(v, count.astype(dt), dt)  # noqa: E731  (ints truncate)
    elif op == "ReduceL2":
        dt = ctx.out_dtype()
        # NumPy takes an integer sum's sqrt in float64, then truncates back
        finish = tirx.sqrt if "float" in dt else (lambda v: tirx.sqrt(v.astype("float64")).astype(dt))  # noqa: E731
    return _reduce(x, axes, keep, combine, finish, pre, op.lower())


def _as_expr(v):
    return tirx.IntImm("int64", v) if isinstance(v, int) else v


def _logsumexp(x, axes, keep):
    """log(sum(exp(x - m))) + m with m the row's max, or 0 where that max is infinite (a row
    holding +inf, a row of -inf, an empty row): inf - inf would be NaN, where ONNX says +inf,
    -inf and -inf."""
    rank = len(x.shape)
    mx = _reduce(x, axes, True, _te_max, name="lse_max")
    zero = tirx.IntImm("int64", 0)

    def mx_at(idx):
        m = mx[tuple(zero if d in axes else i for d, i in
                     zip(range(rank), _source_index(idx, axes, keep, rank, [zero] * len(axes))))]
        return tirx.Select(tirx.isinf(m), tirx.const(0, x.dtype), m)

    raxes = [te.reduce_axis((0, x.shape[a]), name=f"r{a}") for a in axes]
    out_shape = [1 if d in axes else s for d, s in enumerate(x.shape) if keep or d not in axes]
    total = te.compute(out_shape, lambda *i: te.sum(
        tirx.exp(x[_source_index(i, axes, keep, rank, raxes)] - mx_at(i)), axis=raxes), name="lse_sum")
    return te.compute(out_shape, lambda *i: tirx.log(total[i]) + mx_at(i), name="lse")


_te_prod = te.comm_reducer(lambda a, b: a * b, lambda t: tirx.const(1, t), name="prod")


def _extreme(t, sign):
    """Identity of max (sign -1) / min (sign +1): -inf/+inf for floats, so that a row of all
    -inf reduces to -inf as in NumPy (te.max's identity is the lowest finite float)."""
    if "float" in str(t):
        return tirx.const(sign * float("inf"), t)
    return tirx.min_value(t) if sign < 0 else tirx.max_value(t)


_te_max = te.comm_reducer(lambda a, b: tirx.max(a, b), lambda t: _extreme(t, -1), name="max")
_te_min = te.comm_reducer(lambda a, b: tirx.min(a, b), lambda t: _extreme(t, +1), name="min")
# ReduceMax/Min propagate NaN like np.max; softmax's internal max need not (NaN spreads anyway)
_te_nanmax = te.comm_reducer(lambda a, b: fmax(a, b), lambda t: _extreme(t, -1), name="nanmax")
_te_nanmin = te.comm_reducer(lambda a, b: fmin(a, b), lambda t: _extreme(t, +1), name="nanmin")


@lowering("ArgMax", "ArgMin")
def _argminmax(ctx, node, x):
    axis = node.attrs["axis"] % len(x.shape)
    keep = node.attrs["keepdims"]
    last = node.attrs["select_last_index"]
    is_max = node.op == "ArgMax"
    r = te.reduce_axis((0, x.shape[axis]), name="r")
    nan_wins = "float" in str(x.dtype)  # as np.argmax / np.argmin: a NaN is the extreme

    def fcombine(a, b):
        better = (b[1] > a[1]) if is_max else (b[1] < a[1])
        tie = b[1] == a[1]
        if nan_wins:
            better = tirx.Or(better, tirx.And(tirx.isnan(b[1]), tirx.Not(tirx.isnan(a[1]))))
            tie = tirx.Or(tie, tirx.And(tirx.isnan(b[1]), tirx.isnan(a[1])))
        # the identity (index -1) loses to any element: a row of -inf (or of the lowest
        # integer) is no better than the identity's value, and must not answer -1
        pick_b = tirx.Or(tirx.Or(a[0] < tirx.IntImm("int64", 0), better),
                         tirx.And(tie, (b[0] > a[0]) if last else (b[0] < a[0])))
        return tirx.Select(pick_b, b[0], a[0]), tirx.Select(pick_b, b[1], a[1])

    def fidentity(t0, t1):
        lim = tirx.min_value(t1) if is_max else tirx.max_value(t1)
        return tirx.const(-1, t0), lim

    reducer = te.comm_reducer(fcombine, fidentity, name="argreduce")

    def body(*idx):
        full, it = [], iter(idx)
        for d in range(len(x.shape)):
            if d == axis:
                if keep:
                    next(it)
                full.append(r)
            else:
                full.append(next(it))
        return reducer((r.var.astype("int64"), x[tuple(full)]), axis=r)

    idx, _ = te.compute(ctx.out_shape(), body, name="arg")
    return idx


@lowering("CumSum", known=(1,))
def _cumsum(ctx, node, x, axis):
    """A scan: a serial loop along the axis, the other axes data-parallel (linear in T)."""
    axis = int(axis.array.reshape(-1)[0]) % len(x.shape)
    scan = scan_sum_func(list(x.shape), x.dtype, axis, bool(node.attrs["exclusive"]),
                         bool(node.attrs["reverse"]))
    return te.extern_primfunc([x], scan)


def scan_sum_func(shape, dtype, axis, exclusive, reverse) -> tirx.PrimFunc:
    """CumSum as one block per column (every index but the axis'; te.extern's loops were
    opaque to the schedules) that holds the column's scan as a serial loop:

        y[.., p0, ..] = x[.., p0, ..] (0 if exclusive)                p0 the first position
        y[.., p, ..] = y[.., q, ..] + x[.., p (q if exclusive), ..]    q the one before p

    The block's iterators are all data-parallel, columns being independent: a schedule may
    run them in parallel and vectorise the contiguous trailing ones (the loop inside then
    steps whole vectors along the axis; codegen.schedule_cpu.scan), dlight's GPU Fallback
    binds them to threads with the scan in each. The dependence along the axis never shows
    as an iterator, so no schedule can reorder it. Positions run backwards when `reverse`;
    a symbolic axis fed 0 at run time writes nothing. Each entry adds in the reference's
    order (np.cumsum's), whatever the schedule."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T
    one, zero = tirx.IntImm("int64", 1), tirx.IntImm("int64", 0)
    length = shape[axis]
    # a 1-D scan still gets one (unit) column iterator: a block needs one to be scheduled
    columns = shape[:axis] + shape[axis + 1:] or [one]

    def position(k):  # the k-th position in scan order
        return length - one - k if reverse else k

    def at(ivs, k):  # the column's entry at scan step k
        return [*ivs[:axis], position(k), *ivs[axis:]] if len(shape) > 1 else [position(k)]

    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("cumsum")
            xb = T.arg("x", T.buffer(shape, dtype))
            yb = T.arg("y", T.buffer(shape, dtype))
            with T.grid(*columns) as loops:
                with T.sblock("cumsum"):
                    ivs = [T.axis.spatial(e, lp) for e, lp in zip(columns, _as_list(loops))]
                    # what it reads of y, the block wrote itself: no read from outside (as
                    # one, TVM's schedules would refuse to run the blocks in parallel)
                    T.reads(_column(xb, ivs, axis))
                    T.writes(_column(yb, ivs, axis))
                    with T.If(zero < length):
                        with T.Then():
                            start = at(ivs, zero)
                            first = tirx.const(0, dtype) if exclusive else tirx.BufferLoad(xb, start)
                            T.buffer_store(yb, first, start)
                            with T.serial(zero, length - one) as k:
                                p, q = at(ivs, k + one), at(ivs, k)
                                T.buffer_store(yb, tirx.BufferLoad(yb, q) +
                                               tirx.BufferLoad(xb, q if exclusive else p), p)
    return ib.get()


def _column(buf, ivs, axis):
    """The region of `buf` along `axis` at the column `ivs` (the other indices)."""
    one = tirx.IntImm("int64", 1)
    ranges = [ir.Range.from_min_extent(iv, one) for iv in ivs]
    whole = ir.Range.from_min_extent(tirx.IntImm("int64", 0), buf.shape[axis])
    return tirx.BufferRegion(buf, [*ranges[:axis], whole, *ranges[axis:]] if len(buf.shape) > 1 else [whole])


def _as_list(loops) -> list:
    """T.grid's loop vars: a list, though it gives one loop's var alone."""
    return [loops] if isinstance(loops, tirx.Var) else list(loops)


@lowering("Softmax", "LogSoftmax")
def _softmax(ctx, node, x):
    axis = node.attrs["axis"] % len(x.shape)
    r1 = te.reduce_axis((0, x.shape[axis]), name="r1")
    r2 = te.reduce_axis((0, x.shape[axis]), name="r2")
    stat_shape = [1 if d == axis else s for d, s in enumerate(x.shape)]

    def at(idx, r):
        full = list(idx)
        full[axis] = r
        return tuple(full)

    # te.max (identity: the lowest finite float), not _te_max (-inf): the results are the same
    # (a row of -inf gives NaN either way: exp(-inf - lowest) = 0, 0 / 0; inf - inf), and TVM
    # knows te.max's reducer, so GPU schedules split each row across threads
    mx = te.compute(stat_shape, lambda *i: te.max(x[at(i, r1)], axis=r1), name="softmax_max")
    zero = tirx.IntImm("int64", 0)
    if node.op == "LogSoftmax":
        sm = te.compute(stat_shape, lambda *i: te.sum(tirx.exp(x[at(i, r2)] - mx[i]), axis=r2),
                        name="softmax_sum")
        return te.compute(x.shape, lambda *i: x[i] - mx[at(i, zero)] - tirx.log(sm[at(i, zero)]),
                          name="log_softmax")
    # exp once, stored, read by the sum and the scaling: the CPU schedule keeps the block
    # (codegen.schedule_cpu.common.COMPUTED_ONCE) where it would inline it into both readers,
    # computing every exp twice; the GPU's rules inline it as before
    # x - max is never positive: an exp without the overflow side (codegen.fast_math). A
    # symbolic row length is padded to whole vectors of 16 with exp(-inf) = 0 (the loads past
    # the row guarded), so that the sum reduces whole vectors (vector partial sums on CPU)
    length = x.shape[axis]
    if isinstance(length, tirx.IntImm):
        ex = te.compute(x.shape, lambda *i: exp_nonpositive(x[i] - mx[at(i, zero)]),
                        name="softmax_exp", attrs={"sbc.computed_once": 1})
        r2 = te.reduce_axis((0, length), name="r2")
    else:
        padded = (length + 16) // 16 * 16
        ex = te.compute([padded if d == axis else s for d, s in enumerate(x.shape)],
                        lambda *i: tirx.if_then_else(i[axis] < length,
                                                     exp_nonpositive(x[i] - mx[at(i, zero)]),
                                                     tirx.const(0, x.dtype)),
                        name="softmax_exp", attrs={"sbc.computed_once": 1})
        r2 = te.reduce_axis((0, padded), name="r2")
    sm = te.compute(stat_shape, lambda *i: te.sum(ex[at(i, r2)], axis=r2), name="softmax_sum")
    # times the reciprocal, which LLVM computes once per row: a vector division per element
    # was a fifth of the kernel (within 1 ulp of e / sum, as onnxruntime's MLAS scales)
    one = tirx.const(1, x.dtype)
    return te.compute(x.shape, lambda *i: ex[i] * (one / sm[at(i, zero)]), name="softmax")
