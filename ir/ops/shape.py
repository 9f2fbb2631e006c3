"""Shape, layout and indexing ops. Shapes computed from shapes are known at compile time
(possibly symbolic), which is what lets Reshape keep symbolic dims."""

from __future__ import annotations

import numpy as np

from sbc.errors import InputError
from sbc.ir.assumptions import require
from sbc.ir.dims import Sym, difference, dim_max, dim_min, prod
from sbc.ir.ops.common import broadcast_shapes, known, known_ints, normalize_axis
from sbc.ir.registry import Attr, OpError, op
from sbc.ir.types import TensorType, dtype_of, numpy_dtype


@op("Shape", inputs=["data"], outputs=["shape"], attrs={"start": Attr("int", 0),
                                                        "end": Attr("int", None)})
def shape_(node):
    """The dims of data[start:end] (Python slice rules) as i64; known at compile time."""
    return [TensorType("i64", (len(_shape_slice(node)),))]


def _shape_slice(node):
    shape = node.inputs[0].shape
    return shape[node.attrs["start"]:node.attrs["end"]]


@shape_.value
def _(node):
    dims = _shape_slice(node)
    static = all(isinstance(d, int) for d in dims)
    return [np.array(dims, dtype=np.int64 if static else object)]


@shape_.reference
def _(attrs, x):
    return np.array(x.shape[attrs["start"]:attrs["end"]], dtype=np.int64)


@op("Reshape", inputs=["data", "shape"], outputs=["reshaped"], attrs={"allowzero": Attr("int", 0)})
def reshape(node):
    """Same data, new shape; the shape must be known at compile time."""
    x, shape = node.inputs
    return [TensorType(x.dtype, resolve_reshape(x.shape, known_ints(shape, "Reshape's shape"),
                                                node.attrs["allowzero"]))]


def resolve_reshape(in_shape, target, allowzero=0):
    """ONNX Reshape target: 0 copies the input dim (unless allowzero), -1 is inferred."""
    out = [in_shape[i] if (d == 0 and not allowzero) else d for i, d in enumerate(target)]
    if sum(1 for d in out if isinstance(d, int) and d == -1) > 1:
        raise OpError("Reshape: more than one -1 in the target shape")
    if any(isinstance(d, int) and d == -1 for d in out):
        known_part = prod(d for d in out if not (isinstance(d, int) and d == -1))
        out = [prod(in_shape) // known_part if isinstance(d, int) and d == -1 else d for d in out]
    if prod(out) != prod(in_shape):
        raise OpError(f"Reshape: cannot reshape {list(map(str, in_shape))} to "
                      f"{list(map(str, out))}")
    return tuple(out)


@reshape.reference
def _(attrs, x, shape):
    return np.reshape(x, resolve_reshape(x.shape, [int(d) for d in shape], attrs["allowzero"]))


@op("Constant", inputs=[], outputs=["output"], attrs={"value": Attr("tensor")})
def constant(node):
    """The `value` tensor (object arrays of symbolic dims are i64)."""
    value = node.attrs["value"]
    return [TensorType("i64" if value.dtype == object else dtype_of(value), value.shape)]


@constant.value
def _(node):
    return [node.attrs["value"]]


@constant.reference
def _(attrs, *unused):
    return attrs["value"]


# -- layout ------------------------------------------------------------------------------------

@op("Transpose", inputs=["data"], outputs=["transposed"], attrs={"perm": Attr("ints", None)})
def transpose(node):
    """Permute the dims: out.shape[i] = in.shape[perm[i]]; perm defaults to reversed."""
    x = node.inputs[0]
    perm = _perm(node.attrs["perm"], x.type.rank)
    return [TensorType(x.dtype, tuple(x.shape[p] for p in perm))]


def _perm(perm, rank):
    perm = list(range(rank))[::-1] if perm is None else [normalize_axis(p, rank) for p in perm]
    if sorted(perm) != list(range(rank)):
        raise OpError(f"Transpose: perm {perm} is not a permutation of {rank} axes")
    return perm


transpose.reference(lambda attrs, x: np.transpose(x, _perm(attrs["perm"], x.ndim)))


def _axes(node, index, rank, what):
    if len(node.inputs) <= index or node.inputs[index] is None:
        return None
    return sorted(normalize_axis(int(a), rank) for a in known_ints(node.inputs[index], what))


@op("Squeeze", inputs=["data", "axes?"], outputs=["squeezed"])
def squeeze(node):
    """Drop the given size-1 dims (all static size-1 dims when axes is omitted)."""
    x = node.inputs[0]
    axes = _axes(node, 1, x.type.rank, "Squeeze's axes")
    if axes is None:  # a symbolic dim is kept: it must not be 1 when the model runs
        axes = [i for i, d in enumerate(x.shape) if d == 1]
        for d in x.shape:
            require(d, "!=", 1, "Squeeze without axes keeps this dim")
    if not all(require(x.shape[a], "==", 1, "Squeeze drops this dim") for a in axes):
        raise OpError(f"Squeeze: axes {axes} of {x.type} are not all 1")
    return [TensorType(x.dtype, tuple(d for i, d in enumerate(x.shape) if i not in axes))]


@squeeze.reference
def _(attrs, x, axes=None):
    return np.squeeze(x, axis=None if axes is None else tuple(int(a) for a in axes))


@op("Unsqueeze", inputs=["data", "axes"], outputs=["expanded"])
def unsqueeze(node):
    """Insert size-1 dims at `axes`, which index the output (rank + len(axes))."""
    x = node.inputs[0]
    rank = x.type.rank + len(known_ints(node.inputs[1], "Unsqueeze's axes"))
    axes = _axes(node, 1, rank, "Unsqueeze's axes")
    if len(set(axes)) != len(axes):
        raise OpError(f"{node.where()}: axes {axes} repeat an axis")
    dims = iter(x.shape)
    return [TensorType(x.dtype, tuple(1 if i in axes else next(dims) for i in range(rank)))]


@unsqueeze.reference
def _(attrs, x, axes):
    return np.expand_dims(x, tuple(int(a) % (x.ndim + len(axes)) for a in axes))


@op("Flatten", inputs=["input"], outputs=["output"], attrs={"axis": Attr("int", 1)})
def flatten(node):
    """2-D [prod(shape[:axis]), prod(shape[axis:])]."""
    x = node.inputs[0]
    axis = _flatten_axis(node.attrs["axis"], x.type.rank)
    return [TensorType(x.dtype, (prod(x.shape[:axis]), prod(x.shape[axis:])))]


def _flatten_axis(axis: int, rank: int) -> int:
    """Flatten's axis lies in [-rank, rank]; negative counts from the end."""
    if not -rank <= axis <= rank:
        raise OpError(f"Flatten: axis {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


@flatten.reference
def _(attrs, x):
    axis = _flatten_axis(attrs["axis"], x.ndim)
    return x.reshape(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))


@op("Concat", inputs=["inputs*"], outputs=["concat_result"], attrs={"axis": Attr("int")})
def concat(node):
    """Join along `axis`; every other dim must agree."""
    first = node.inputs[0].type
    axis = normalize_axis(node.attrs["axis"], first.rank)
    for v in node.inputs[1:]:
        if v.type.rank != first.rank or v.dtype != first.dtype:
            raise OpError(f"Concat: inputs {first} and {v.type} differ in dtype or rank")
        if not all(require(a, "==", b, f"Concat inputs outside axis {axis}")
                   for i, (a, b) in enumerate(zip(first.shape, v.shape)) if i != axis):
            raise OpError(f"Concat: inputs {first} and {v.type} differ outside axis {axis}")
    size = sum((v.shape[axis] for v in node.inputs[1:]), first.shape[axis])
    return [TensorType(first.dtype, first.shape[:axis] + (size,) + first.shape[axis + 1:])]


concat.reference(lambda attrs, *xs: np.concatenate(xs, axis=attrs["axis"]))


@op("Split", inputs=["input", "split?"], outputs=["outputs*"], attrs={
    "axis": Attr("int", 0), "num_outputs": Attr("int", None)})
def split(node):
    """Cut along `axis` into the sizes of the split input, or into num_outputs chunks of
    ceil(dim / num_outputs) (the last one smaller)."""
    x = node.inputs[0]
    axis = normalize_axis(node.attrs["axis"], x.type.rank)
    return [TensorType(x.dtype, x.shape[:axis] + (n,) + x.shape[axis + 1:])
            for n in _split_sizes(node, x.shape[axis])]


def _split_sizes(node, dim):
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        sizes = known_ints(node.inputs[1], "Split's sizes")
        if not require(sum(sizes[1:], sizes[0]), "==", dim, "Split sizes add up to the axis"):
            raise OpError(f"Split: sizes {sizes} do not add up to {dim}")
        return sizes
    n = node.attrs["num_outputs"]
    if n is None:
        raise OpError("Split needs either the split input or num_outputs")
    chunk = (dim + n - 1) // n  # ceil, as ONNX says
    return [chunk] * (n - 1) + [dim - chunk * (n - 1)]


@split.reference
def _(attrs, x, sizes=None):
    axis = attrs["axis"] % x.ndim
    if sizes is None:
        n = attrs["num_outputs"]
        chunk = -(-x.shape[axis] // n)
        sizes = [chunk] * (n - 1) + [x.shape[axis] - chunk * (n - 1)]
    return tuple(np.split(x, np.cumsum([int(s) for s in sizes])[:-1], axis=axis))


# -- indexing ----------------------------------------------------------------------------------

INT64_BIG = 2 ** 31 - 1  # exporters write INT64_MAX / INT32_MAX (and MIN) for "to the end"


def _slice_range(dim, start, end, step):
    """Clamped (start, end, length) of one sliced axis, ONNX rules; dim may be symbolic.

    Negative indices count from the end (dim is added). Positive steps clamp start and end to
    [0, dim]; negative steps clamp start to [0, dim - 1] and end to [-1, dim - 1] (-1: before
    the first entry). The length is max(0, ceil((end - start) / step)). Against a symbolic dim
    these are dims with min / max in them, exact for every size: `x[:, :8]` has min(seq, 8)
    rows, `x[:, 1:]` max(seq - 1, 0). +-2**31 and beyond mean "to the end"."""
    lo, hi = (0, dim) if step > 0 else (-1, dim - 1)
    s, e = _from_end(start, dim, 0, hi), _from_end(end, dim, lo, hi)
    s_low, e_low = _at_least(s, 0, start), _at_least(e, lo, end)
    # the upper bound last: with dim 0 and a negative step both bounds are -1, an empty slice
    s_clamped, e_clamped = dim_min(s_low, hi), dim_min(e_low, hi)
    # The length needs only the clamps that can shorten the slice (a start past the end
    # leaves nothing either way): fewer min / max make simpler dims.
    if step > 0:
        span, stride = difference(dim_min(e, hi), s_low), step
    else:
        span, stride = difference(s_clamped, e_low), -step
    return s_clamped, e_clamped, dim_max(0, (span + stride - 1) // stride)


def _from_end(i, dim, lowest, highest):
    """A Slice index with negative ones counted from the end; +-2**31 and beyond are the
    bounds. A symbolic index (computed from shapes) of unknown sign is required to be >= 0
    (sbc.ir.assumptions): whether to add dim would depend on its sign at run time."""
    if isinstance(i, Sym):
        require(i, ">=", 0, "Slice indices computed from shapes are not negative")
        return i
    if i >= INT64_BIG:
        return highest
    if i <= -INT64_BIG:
        return lowest
    return dim + i if i < 0 else i


def _at_least(i, lowest, given):
    """max(i, lowest); a symbolic index as given is required to be >= 0 already, so that
    `x[seq - 1:seq]` has 1 row (where `x[-1:]` has min(seq, 1))."""
    return i if isinstance(given, Sym) else dim_max(i, lowest)


@op("Slice", inputs=["data", "starts", "ends", "axes?", "steps?"], outputs=["output"])
def slice_(node):
    """data[starts:ends:steps] on the given axes, clamped as ONNX says (see _slice_range)."""
    x = node.inputs[0]
    shape = list(x.shape)
    for axis, start, end, step in _slice_args(node, x.type.rank):
        shape[axis] = _slice_range(shape[axis], start, end, step)[2]
    return [TensorType(x.dtype, tuple(shape))]


def _slice_args(node, rank):
    starts = known_ints(node.inputs[1], "Slice's starts")
    ends = known_ints(node.inputs[2], "Slice's ends")
    axes = (known_ints(node.inputs[3], "Slice's axes")
            if len(node.inputs) > 3 and node.inputs[3] is not None else range(len(starts)))
    steps = (known_ints(node.inputs[4], "Slice's steps")
             if len(node.inputs) > 4 and node.inputs[4] is not None else [1] * len(starts))
    if any(s == 0 for s in steps):
        raise OpError("Slice: a step of 0 is invalid")
    return [(normalize_axis(int(a), rank), s, e, int(st))
            for a, s, e, st in zip(axes, starts, ends, steps)]


@slice_.reference
def _(attrs, x, starts, ends, axes=None, steps=None):
    index = [slice(None)] * x.ndim
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    for a, s, e, st in zip(axes, starts, ends, steps):
        s, e, _ = _slice_range(x.shape[int(a)], int(s), int(e), int(st))
        index[int(a) % x.ndim] = slice(s, None if e < 0 else e, int(st))
    return x[tuple(index)]


@op("Gather", inputs=["data", "indices"], outputs=["output"], attrs={"axis": Attr("int", 0)})
def gather(node):
    """Take entries of data along `axis` (negative indices count from the end); the indices'
    shape replaces that axis."""
    x, idx = node.inputs
    _check_indices(node, idx)
    axis = normalize_axis(node.attrs["axis"], x.type.rank)
    return [TensorType(x.dtype, x.shape[:axis] + idx.shape + x.shape[axis + 1:])]


@gather.reference
def _(attrs, x, idx):
    axis = attrs["axis"] % x.ndim
    _check_range(idx, x.shape[axis])
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    return np.take(x, idx, axis=axis)


def _check_indices(node, idx):
    if idx.dtype not in ("i32", "i64"):
        raise OpError(f"{node.where()}: indices must be i32 or i64, got {idx.dtype}")


def _check_range(idx: np.ndarray, size) -> None:
    """Indices must lie in [-size, size) (size: one int, or one per entry of the last axis),
    as the compiled check (codegen.index_checks) and onnxruntime require."""
    if idx.dtype == object:  # symbolic indices (shape arithmetic): nothing to check yet
        return
    bad = ((idx < -np.asarray(size)) | (idx >= np.asarray(size))).reshape(-1)
    if bad.any():
        at = int(np.flatnonzero(bad)[0])
        sizes = np.broadcast_to(np.asarray(size), idx.shape).reshape(-1)
        raise InputError(f"index {idx.reshape(-1)[at]} at flat position {at} is out of range "
                         f"for an axis of size {sizes[at]}")


@op("GatherElements", inputs=["data", "indices"], outputs=["output"],
    attrs={"axis": Attr("int", 0)})
def gather_elements(node):
    """out[i][j] = data[idx[i][j]][j] (axis 0): indices as big as the output, same rank."""
    x, idx = node.inputs
    _check_indices(node, idx)
    normalize_axis(node.attrs["axis"], x.type.rank)
    if idx.type.rank != x.type.rank:
        raise OpError(f"{node.where()}: indices {idx.type} must have the rank of data {x.type}")
    return [TensorType(node.inputs[0].dtype, node.inputs[1].shape)]


@gather_elements.reference
def _(attrs, x, idx):
    axis = attrs["axis"] % x.ndim
    _check_range(idx, x.shape[axis])
    return np.take_along_axis(x, np.where(idx < 0, idx + x.shape[axis], idx), axis=axis)


@op("GatherND", inputs=["data", "indices"], outputs=["output"], attrs={"batch_dims": Attr("int", 0)})
def gather_nd(node):
    """Index tuples in the last indices dim select slices of data; the first batch_dims dims
    of data and indices are batch dims, shared."""
    x, idx = node.inputs
    _check_indices(node, idx)
    b = node.attrs["batch_dims"]
    if idx.type.rank < 1 or not 0 <= b < min(x.type.rank, idx.type.rank):
        raise OpError(f"GatherND: batch_dims {b} does not fit data {x.type}, indices {idx.type}")
    last = idx.shape[-1]
    if not isinstance(last, int):
        raise OpError("GatherND: the last indices dim must be static")
    if last > x.type.rank - b:
        raise OpError(f"GatherND: indices {idx.type} index {last} dims, data {x.type} has "
                      f"{x.type.rank - b} after batch_dims {b}")
    return [TensorType(x.dtype, idx.shape[:-1] + x.shape[b + last:])]


@gather_nd.reference
def _(attrs, x, idx):
    b, last = attrs["batch_dims"], idx.shape[-1]
    sizes = np.array(x.shape[b:b + last], dtype=np.int64)
    _check_range(idx, sizes)
    idx = np.where(idx < 0, idx + sizes, idx)
    # one advanced index over the flattened batch dims: no per-item loop, whose stacking of
    # nothing failed when a batch dim or the number of index tuples is 0
    batch = int(np.prod(x.shape[:b], dtype=np.int64))
    xs, ids = x.reshape((batch,) + x.shape[b:]), idx.reshape((batch,) + idx.shape[b:])
    items = np.arange(batch).reshape((batch,) + (1,) * (ids.ndim - 2))
    which = np.broadcast_to(items, ids.shape[:-1])  # the batch item of each index tuple
    picked = xs[(which,) + tuple(ids[..., k] for k in range(last))]
    return picked.reshape(idx.shape[:-1] + x.shape[b + last:])


REDUCTIONS = ("none", "add", "mul", "max", "min")


def _check_reduction(node):
    if node.attrs["reduction"] not in REDUCTIONS:
        raise OpError(f"{node.where()}: reduction '{node.attrs['reduction']}' is not one of "
                      f"{', '.join(REDUCTIONS)}")


def _check_updates(node, data, updates, want):
    """updates must be of data's dtype and of shape `want`."""
    if updates.dtype != data.dtype:
        raise OpError(f"{node.where()}: updates {updates.type} must have the dtype of data {data.type}")
    if len(updates.shape) != len(want) or not all(
            require(u, "==", w, f"{node.op} updates shape") for u, w in zip(updates.shape, want)):
        raise OpError(f"{node.where()}: updates {updates.type} must have shape "
                      f"[{', '.join(map(str, want))}]")


@op("ScatterElements", inputs=["data", "indices", "updates"], outputs=["output"],
    attrs={"axis": Attr("int", 0), "reduction": Attr("str", "none")})
def scatter_elements(node):
    """A copy of data with out[.., idx[i][j], ..] (axis 0: out[idx[i][j]][j]) set to (or
    combined by `reduction` with) updates[i][j], in order: a duplicate index with reduction
    'none' keeps the last update. indices and updates have one shape, the rank of data."""
    x, idx, upd = node.inputs
    _check_indices(node, idx)
    _check_reduction(node)
    axis = normalize_axis(node.attrs["axis"], x.type.rank)
    if idx.type.rank != x.type.rank:
        raise OpError(f"{node.where()}: indices {idx.type} must have the rank of data {x.type}")
    for d in range(x.type.rank):
        if d != axis and not require(x.shape[d], ">=", idx.shape[d],
                                     "ScatterElements indices fit data off the axis"):
            raise OpError(f"{node.where()}: indices {idx.type} are larger than data {x.type} "
                          f"on axis {d}")
    _check_updates(node, x, upd, idx.shape)
    return [x.type]


_UFUNCS = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatter(out, target, updates, reduction):
    """out[target] = / op= updates, in order (duplicates: last wins / all combined)."""
    if reduction == "none":
        flat = np.ravel_multi_index(target, out.shape) if out.ndim else np.zeros(0, np.int64)
        view = out.reshape(-1)
        for pos, value in zip(flat.reshape(-1), updates.reshape(-1)):  # in order: last wins
            view[pos] = value
    else:
        _UFUNCS[reduction].at(out, target, updates)
    return out


@scatter_elements.reference
def _(attrs, x, idx, upd):
    axis = attrs["axis"] % x.ndim
    _check_range(idx, x.shape[axis])
    target = list(np.indices(idx.shape, sparse=False))
    target[axis] = np.where(idx < 0, idx + x.shape[axis], idx).astype(np.int64)
    return _scatter(x.copy(), tuple(target), upd, attrs["reduction"])


@op("ScatterND", inputs=["data", "indices", "updates"], outputs=["output"],
    attrs={"reduction": Attr("str", "none")})
def scatter_nd(node):
    """A copy of data where each index tuple (last indices dim, k entries) selects a slice
    data[i0, .., ik-1] that is set to (or combined by `reduction` with) the matching slice of
    updates, in order: a duplicate index with reduction 'none' keeps the last update.
    updates has shape indices.shape[:-1] + data.shape[k:]."""
    x, idx, upd = node.inputs
    _check_indices(node, idx)
    _check_reduction(node)
    if idx.type.rank < 1:
        raise OpError(f"{node.where()}: indices {idx.type} must have rank >= 1")
    last = idx.shape[-1]
    if not isinstance(last, int):
        raise OpError(f"{node.where()}: the last indices dim must be static")
    if last > x.type.rank:
        raise OpError(f"{node.where()}: indices {idx.type} index {last} dims, data {x.type} "
                      f"has {x.type.rank}")
    _check_updates(node, x, upd, idx.shape[:-1] + x.shape[last:])
    return [x.type]


@scatter_nd.reference
def _(attrs, x, idx, upd):
    k = idx.shape[-1]
    _check_range(idx, x.shape[:k])
    flat = idx.reshape(int(np.prod(idx.shape[:-1], dtype=np.int64)), k).astype(np.int64)
    flat = np.where(flat < 0, flat + np.array(x.shape[:k], dtype=np.int64), flat)
    out = x.copy()
    slices = upd.reshape((flat.shape[0],) + x.shape[k:])
    if attrs["reduction"] == "none":
        for i, value in zip(flat, slices):  # in order: last wins
            out[tuple(i)] = value
        return out
    return _scatter(out, tuple(flat.T), slices, attrs["reduction"])


# -- creation and broadcasting -----------------------------------------------------------------

@op("Expand", inputs=["input", "shape"], outputs=["output"])
def expand(node):
    """Broadcast to `shape` bidirectionally: the result has the broadcast of both shapes."""
    x, shape = node.inputs
    target = known_ints(shape, "Expand's shape")
    out = broadcast_shapes(x.shape, target)
    _require_fill_size(out, np.dtype(numpy_dtype(x.dtype)).itemsize, node.where(), OpError)
    return [TensorType(x.dtype, out)]


@expand.reference
def _(attrs, x, shape):
    return np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(int(d) for d in shape))).copy()


@op("Tile", inputs=["input", "repeats"], outputs=["output"])
def tile(node):
    """Repeat the input repeats[i] times along dim i."""
    x, reps = node.inputs
    r = known_ints(reps, "Tile's repeats")
    if len(r) != x.type.rank:
        raise OpError(f"Tile: repeats {r} must have one entry per dim of {x.type}")
    shape = tuple(d * n for d, n in zip(x.shape, r))
    _require_fill_size(shape, np.dtype(numpy_dtype(x.dtype)).itemsize, node.where(), OpError)
    return [TensorType(x.dtype, shape)]


tile.reference(lambda attrs, x, reps: np.tile(x, [int(r) for r in reps]))


@op("Range", inputs=["start", "limit", "delta"], outputs=["output"],
    attrs={"stash_type": Attr("int", 1)})
def range_(node):
    """start, start + delta, ... up to (excluding) limit; max(ceil((limit - start) / delta), 0)
    entries. stash_type (opset 27) concerns f16 accumulation only."""
    start, limit, delta = (np.asarray(known(v, "Range's bounds")).reshape(()).item()
                           for v in node.inputs)
    if len({v.dtype for v in node.inputs}) != 1:
        raise OpError(f"Range: start, limit and delta must have one dtype, got "
                      f"{[v.dtype for v in node.inputs]}")
    if isinstance(delta, Sym) or delta == 0:
        raise OpError(f"Range: delta must be a nonzero constant, got {delta}")
    if not any(isinstance(b, Sym) for b in (start, limit, delta)):
        length = max(int(np.ceil((limit - start) / delta)), 0)
    elif delta == 1:
        length = limit - start  # a symbolic length, e.g. arange(seq)
    else:
        length = (limit - start + delta - 1) // delta
    return [TensorType(node.inputs[0].dtype, (length,))]


range_.reference(lambda attrs, s, l, d: np.arange(s, l, d, dtype=np.asarray(s).dtype))


# The most bytes one tensor made from sizes (ConstantOfShape, Expand, Tile) may hold. No
# machine sbc runs on holds more; beyond it the allocation would fail deep inside TVM
# (std::bad_alloc) or NumPy.
MAX_FILL_BYTES = 1 << 40  # 1 TiB


@op("ConstantOfShape", inputs=["input"], outputs=["output"], attrs={"value": Attr("tensor", None)})
def constant_of_shape(node):
    """A tensor of the known shape filled with the one-element `value` (default f32 0)."""
    value = node.attrs["value"]
    dtype = "f32" if value is None else dtype_of(value)
    shape = tuple(known_ints(node.inputs[0], "ConstantOfShape's shape"))
    _require_fill_size(shape, np.dtype(numpy_dtype(dtype)).itemsize, node.where(), OpError)
    return [TensorType(dtype, shape)]


def _require_fill_size(shape, itemsize: int, where: str, error) -> None:
    """Refuse a fill of negative dims or over MAX_FILL_BYTES: now where the shape is known,
    else (symbolic dims) as a relation checked before the compiled program allocates
    anything (sbc.ir.assumptions)."""
    if not all(require(d, ">=", 0, "dims are sizes") for d in shape):
        raise OpError(f"{where}: shape {[str(d) for d in shape]} has a negative dim")
    nbytes = prod(shape) * itemsize
    if not require(MAX_FILL_BYTES, ">=", nbytes, "a tensor made from sizes holds at most 1 TiB"):
        raise error(f"{where}: shape {[str(d) for d in shape]} asks for {nbytes} bytes; "
                    f"sbc fills at most {MAX_FILL_BYTES} (1 TiB) per tensor")


@constant_of_shape.reference
def _(attrs, shape):
    value = attrs["value"] if attrs["value"] is not None else np.zeros(1, np.float32)
    shape = tuple(int(d) for d in shape)
    _require_fill_size(shape, value.dtype.itemsize, "ConstantOfShape", InputError)
    return np.full(shape, value.reshape(-1)[0], dtype=value.dtype)


@op("Size", inputs=["data"], outputs=["size"])
def size(node):
    """The number of elements, i64 scalar; known at compile time (possibly symbolic)."""
    return [TensorType("i64", ())]


@size.value
def _(node):
    n = node.inputs[0].type.numel
    return [np.array(n, dtype=np.int64 if isinstance(n, int) else object)]


size.reference(lambda attrs, x: np.array(x.size, dtype=np.int64))


@op("Trilu", inputs=["input", "k?"], outputs=["output"], attrs={"upper": Attr("int", 1)})
def trilu(node):
    """Keep the upper (or lower) triangle of the last two dims, diagonal shifted by k
    (optional, default 0); zero the rest."""
    if node.inputs[0].type.rank < 2:
        raise OpError(f"Trilu: input must have rank >= 2, got {node.inputs[0].type}")
    return [node.inputs[0].type]


@trilu.reference
def _(attrs, x, k=None):
    k = 0 if k is None else int(k)
    return np.triu(x, k) if attrs["upper"] else np.tril(x, k)


PAD_MODES = ("constant", "edge", "reflect")


@op("Pad", inputs=["data", "pads", "constant_value?", "axes?"], outputs=["output"],
    attrs={"mode": Attr("str", "constant")})
def pad(node):
    """Pad (negative: crop) the given axes by pads = [begins..., ends...]; modes constant
    (constant_value, default 0), edge, reflect. As in onnxruntime, negative pads crop first
    and edge and reflect then read the cropped axis."""
    mode = node.attrs["mode"]
    if mode not in PAD_MODES:
        raise OpError(f"{node.where()}: Pad mode '{mode}' is not supported; "
                      f"supported: {', '.join(PAD_MODES)}")
    x = node.inputs[0]
    shape = list(x.shape)
    for axis, (before, after) in _pad_widths(node, x.type.rank).items():
        shape[axis] = shape[axis] + before + after
        if mode != "constant":
            _require_source(node.where(), mode, axis, x.shape[axis], before, after)
    return [TensorType(x.dtype, tuple(shape))]


def pad_crop(pad):
    """How much a pad crops; a symbolic pad is taken to be a size (>= 0)."""
    return 0 if isinstance(pad, Sym) else max(-pad, 0)


def pad_kept(dim, before, after):
    """The length of an axis once negative pads have cropped it."""
    return dim - pad_crop(before) - pad_crop(after)


def _require_source(where: str, mode: str, axis: int, dim, before, after) -> None:
    """What onnxruntime requires of an axis that edge or reflect pad: an entry to repeat,
    and for reflect at most kept - 1 entries on each side (the kernel's reflection period
    2 * kept - 2 is then positive). Refused now where the sizes are known, else checked
    before the compiled program runs (sbc.ir.assumptions)."""
    kept = pad_kept(dim, before, after)
    for p in (before, after):
        if not isinstance(p, Sym) and p <= 0:
            continue  # nothing added on this side
        least = p + 1 if mode == "reflect" else 1
        if not require(kept, ">=", least, f"Pad {mode} pads axis {axis} by {p}"):
            raise OpError(f"{where}: Pad mode '{mode}' pads axis {axis} by {p} but the "
                          f"axis keeps {kept} entries (at least {least} needed)")


def _pad_widths(node, rank):
    pads = known_ints(node.inputs[1], "Pad's pads")
    axes = (known_ints(node.inputs[3], "Pad's axes")
            if len(node.inputs) > 3 and node.inputs[3] is not None else range(rank))
    axes = [normalize_axis(int(a), rank) for a in axes]
    n = len(axes)
    if len(pads) != 2 * n:
        raise OpError(f"Pad: pads {pads} must hold 2 entries per padded axis ({n} axes)")
    return {a: (pads[i], pads[i + n]) for i, a in enumerate(axes)}


@pad.reference
def _(attrs, x, pads, value=None, axes=None):
    rank, pads = x.ndim, [int(p) for p in pads]
    axes = range(rank) if axes is None else [int(a) % rank for a in axes]
    widths = [(0, 0)] * rank
    for i, a in enumerate(axes):
        widths[a] = (pads[i], pads[i + len(axes)])
    mode = attrs["mode"]
    if mode != "constant":
        for a, ((b, e), n) in enumerate(zip(widths, x.shape)):
            _require_source("Pad", mode, a, n, b, e)
    # negative pads crop first (edge and reflect then read the cropped axis)
    x = x[tuple(slice(pad_crop(b), max(n - pad_crop(a), 0)) for (b, a), n in zip(widths, x.shape))]
    widths = [(max(b, 0), max(a, 0)) for b, a in widths]
    if mode == "constant":
        cval = 0 if value is None else np.asarray(value).reshape(-1)[0]
        return np.pad(x, widths, mode="constant", constant_values=cval)
    return np.pad(x, widths, mode=mode)


# -- sorting -----------------------------------------------------------------------------------

@op("TopK", inputs=["X", "K"], outputs=["Values", "Indices"], attrs={
    "axis": Attr("int", -1), "largest": Attr("int", 1), "sorted": Attr("int", 1)})
def topk(node):
    """The k largest (or smallest) entries along `axis` and their i64 indices, best first;
    equal values keep index order. sorted=0 allows any order: sbc sorts anyway."""
    x, k_value = node.inputs
    axis = normalize_axis(node.attrs["axis"], x.type.rank)
    ks = known_ints(k_value, "TopK's k")
    if len(ks) != 1:
        raise OpError(f"TopK: k must hold one value, got {ks}")
    k, dim = ks[0], x.shape[axis]
    if isinstance(k, int) and (k < 0 or (isinstance(dim, int) and k > dim)):
        raise OpError(f"TopK: k = {k} is out of range for axis {axis} of {x.type}")
    shape = x.shape[:axis] + (k,) + x.shape[axis + 1:]
    return [TensorType(x.dtype, shape), TensorType("i64", shape)]


@topk.reference
def _(attrs, x, k):
    axis, k = attrs["axis"] % x.ndim, int(np.asarray(k).reshape(-1)[0])
    if attrs["largest"]:
        # a stable ascending sort of the reversed axis, read backwards: descending values,
        # ties in ascending index order (no negation: it would wrap unsigned ints)
        flipped = np.argsort(np.flip(x, axis), axis=axis, kind="stable")
        order = x.shape[axis] - 1 - np.flip(flipped, axis)
    else:
        order = np.argsort(x, axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis).astype(np.int64)
    return np.take_along_axis(x, idx, axis=axis), idx
