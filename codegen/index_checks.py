"""Run-time bounds checks of the index inputs of Gather, GatherElements, GatherND,
ScatterElements and ScatterND (whose kernels skip a bad index: nothing is written outside).

The gather kernels themselves never read outside `data` (codegen.lower guards each read), but
an index out of range is the caller's error and must say so, as onnxruntime does. Each gather
gets a small check kernel: the flat position of the first index outside [-size, size), the
index found there and the size it was checked against. The Relax function asserts, after its
last kernel, that no position was found; the assertion's message is the error users read:

    node 'embed' (Gather): index 1000 at flat position 3 of %ids is out of range for an axis
    of size 256 (valid: -256 .. 255)

A check costs one pass over the indices (a few hundred bytes for token ids), outside the hot
loop of the gather. Gathers of the same indices against the same size share one check.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import relax, te, tirx

CHECKED_OPS = ("Gather", "GatherElements", "GatherND", "ScatterElements", "ScatterND")


@dataclass
class IndexCheck:
    """The check kernels' results (Relax vars) and the message they fill in."""
    ok: relax.Expr  # bool []: every index in range
    position: relax.Expr  # i64 []: flat position of the first bad index
    index: relax.Expr  # i64 []: the bad index
    size: relax.Expr  # i64 []: the axis size it was checked against
    message: str


def checked_axes(node) -> list:
    """Per component of an index (GatherND: one per last-dim entry), the data axis it
    indexes."""
    rank = node.inputs[0].type.rank
    if node.op in ("GatherND", "ScatterND"):
        b = node.attrs.get("batch_dims", 0)
        return [b + k for k in range(node.inputs[1].shape[-1])]
    return [node.attrs["axis"] % rank]


def emit_index_check(bb: relax.BlockBuilder, node, data: relax.Expr, indices: relax.Expr) -> IndexCheck:
    """Emit the check kernels of one gather node (inside the current dataflow block)."""
    axes = checked_axes(node)
    per_component = node.op in ("GatherND", "ScatterND")

    def bound(x, idx, flat):
        """The size the index at flat position `flat` is checked against."""
        if not per_component:
            return x.shape[axes[0]]
        component = tirx.floormod(flat, tirx.IntImm("int64", len(axes)))
        size = x.shape[axes[-1]].astype("int64")
        for k in reversed(range(len(axes) - 1)):
            size = tirx.Select(component == k, x.shape[axes[k]].astype("int64"), size)
        return size

    def first_bad(x, idx):
        numel = _numel(idx)
        r = te.reduce_axis((0, numel), "r")
        value = idx[_unravel(r, idx.shape)].astype("int64") if idx.shape else idx().astype("int64")
        size = bound(x, idx, r)
        bad = tirx.Or(value < -size, value >= size)
        return te.compute((), lambda: te.min(tirx.Select(bad, r, numel), axis=r), name="index_check")

    position = bb.emit_te(first_bad, data, indices, primfunc_name_hint="index_check")
    # >=, not ==: with no index at all the min over nothing is te.min's identity (the largest
    # int64), not numel (an empty index tensor of symbolic shape was reported out of range)
    ok = bb.emit_te(lambda p, idx: te.compute((), lambda: p() >= _numel(idx), name="index_ok"),
                    position, indices, primfunc_name_hint="index_ok")

    def at_position(p, idx):  # the index at the bad position (0 when there is none)
        safe = tirx.min(p(), tirx.max(_numel(idx) - 1, tirx.IntImm("int64", 0)))
        read = idx[_unravel(safe, idx.shape)] if idx.shape else idx()
        return te.compute((), lambda: tirx.if_then_else(p() < _numel(idx), read.astype("int64"),
                                                        tirx.IntImm("int64", 0)), name="index_found")

    index = bb.emit_te(at_position, position, indices, primfunc_name_hint="index_found")
    size = bb.emit_te(lambda p, x, idx: te.compute((), lambda: bound(x, idx, p()).astype("int64"),
                                                   name="index_bound"),
                      position, data, indices, primfunc_name_hint="index_bound")
    where = node.where().replace("{", "{{").replace("}", "}}")  # the message is a format string
    source = node.inputs[1].name.replace("{", "{{").replace("}", "}}")
    message = (f"{where}: index {{1}} at flat position {{0}} of %{source} is out of range for "
               f"an axis of size {{2}}")
    return IndexCheck(ok, position, index, size, message)


def emit_assert(bb: relax.BlockBuilder, check: IndexCheck) -> None:
    """Outside the dataflow block: fail the call with the check's message."""
    bb.emit(relax.op.assert_op(check.ok, [check.position, check.index, check.size], check.message))


def _numel(t):
    n = tirx.IntImm("int64", 1)
    for d in t.shape:
        n = n * d
    return n


def _unravel(flat, shape) -> tuple:
    """Multi-index of a flat C-order position."""
    out = []
    for d in reversed(shape):
        out.append(tirx.floormod(flat, d))
        flat = tirx.floordiv(flat, d)
    return tuple(reversed(out))
