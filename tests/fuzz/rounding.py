"""How large each float output's rounding error may be: the fuzz judge's tolerance.

Two correct float32 programs differ by rounding, and how much depends on the values they went
through, not only on the result: a sum of terms of size 1e4 that cancels to 0.01 (a MatMul, a
ReduceSum) is off by about eps * 1e4 in any summation order, and exp amplifies the error of its
argument. `error_scales` runs the graph in the reference interpreter and carries, for every
float value v, an array s(v) of v's shape (first-order forward error analysis): each engine's
result may be off by about eps * s(v), where

    s(input) = |x|, and each op adds its own rounding |y| to what its inputs' errors become:
    Add/Sub  s(a) + s(b)                      MatMul   s(A) @ |B| + |A| @ s(B) + |A| @ |B|
    Mul      s(a) |b| + |a| s(b)              Div      s(a) / |b| + |a| s(b) / b^2
    Exp      |y| s(x)                         Log      s(x) / |x|
    Sigmoid  y (1 - y) s(x)                   Tanh     (1 - y^2) s(x)
    Sqrt     s(x) / (2 sqrt(x))               ReduceSum, ReduceMean: the same reduction of s(x)

Ops that move or pick values (Reshape, Slice, Gather, Concat, Where, ...) do the same to s.
An op this table does not know gets the largest scale of its inputs everywhere (safe, loose).
Scales are float64 (1e30 * 1e30 is not inf); where one is not finite (an inf or NaN went
through it), it says nothing and the judge uses the value alone.
"""

from __future__ import annotations

import numpy as np

# ops whose reference implementation, applied to the scales of their float inputs (their other
# inputs unchanged), gives the scales of their outputs: they move, pick or sum values. A
# ReduceMin's scale is the largest of the row's, as a ReduceMax's.
MOVES = {"Reshape", "Transpose", "Slice", "Gather", "GatherElements", "GatherND", "Concat",
         "Unsqueeze", "Squeeze", "Expand", "Identity", "Flatten", "Tile", "Split", "Where",
         "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin"}
# elementwise ops whose result is one of their float inputs (or a bound): the largest scale
PICKS = {"Max", "Min", "Clip"}


def error_scales(graph, feeds: dict) -> dict[str, np.ndarray]:
    """Output name -> the scale of each element's rounding error (see the module docstring),
    for the float outputs of `graph` run on `feeds` by the reference interpreter."""
    from sbc.ir.interpreter import run
    from sbc.ir.types import bind_symbols
    env = bind_symbols([(v.name, v.type) for v in graph.inputs], feeds)
    values = {id(v): np.asarray(feeds[v.name]) for v in graph.inputs}
    values.update({id(p): _concrete(p.data, env) for p in graph.params})
    scales = {k: _own(x) for k, x in values.items()}

    def observe(node, outs):
        args = [None if v is None else values[id(v)] for v in node.inputs]
        arg_scales = [None if v is None else scales[id(v)] for v in node.inputs]
        attrs = {k: _concrete(a, env) for k, a in node.attrs.items()}
        for v, out, s in zip(node.outputs, outs, _scales(node.op, attrs, args, arg_scales, outs)):
            values[id(v)], scales[id(v)] = out, s

    with np.errstate(all="ignore"):
        run(graph, feeds, observe)
    return {name: scales[id(v)] for v, name in zip(graph.outputs, graph.output_names)
            if scales[id(v)] is not None}


def _concrete(attr, env):
    from sbc.ir.dims import concretize
    return concretize(attr, env)


def _is_float(x) -> bool:
    return x is not None and np.asarray(x).dtype.kind == "f"


def _own(y) -> np.ndarray | None:
    """The rounding of y itself: |y| for floats; integers and bools are exact (None)."""
    return np.abs(np.asarray(y, np.float64)) if _is_float(y) else None


def _scales(op: str, attrs: dict, args: list, s: list, outs: list) -> list:
    if not any(_is_float(y) for y in outs):
        return [None] * len(outs)
    if op in MOVES or op in PICKS:
        return _moved(op, attrs, args, s, outs)
    rule = RULES.get(op)
    if rule is None or not all(x is None or not _is_float(x) or sx is not None for x, sx in zip(args, s)):
        return [_unknown(s, y) for y in outs]
    y = np.asarray(outs[0], np.float64)
    a = [None if x is None else np.asarray(x, np.float64) for x in args]
    return [rule(attrs, a, s, y) + np.abs(y)]


def _moved(op: str, attrs: dict, args: list, s: list, outs: list) -> list:
    from sbc.ir.registry import as_list, get_op
    if op in PICKS:  # the picked input's scale, whichever it is: the largest
        present = [np.broadcast_to(x, np.shape(outs[0])) for x in s if x is not None]
        return [np.maximum.reduce(present) if present else _own(outs[0])]
    scaled = [sx if _is_float(x) else x for x, sx in zip(args, s)]
    if any(_is_float(x) and sx is None for x, sx in zip(args, s)):
        return [_unknown(s, y) for y in outs]
    ref = get_op("ReduceMax" if op == "ReduceMin" else op).ref
    return [np.asarray(o, np.float64) for o in as_list(ref(attrs, *scaled))]


def _unknown(s: list, y) -> np.ndarray | None:
    """An op the table does not know: the largest finite input scale, everywhere."""
    if not _is_float(y):
        return None
    largest = max((float(np.max(x[np.isfinite(x)], initial=0.0)) for x in s if x is not None), default=0.0)
    return np.maximum(np.abs(np.asarray(y, np.float64)), largest)


def _matmul(a, sa, b, sb):
    return sa @ np.abs(b) + np.abs(a) @ sb + np.abs(a) @ np.abs(b)


def _gemm(attrs, a, s, y):
    (ma, mb), (sa, sb) = a[:2], s[:2]
    ma, sa = (ma.T, sa.T) if attrs["transA"] else (ma, sa)
    mb, sb = (mb.T, sb.T) if attrs["transB"] else (mb, sb)
    out = abs(attrs["alpha"]) * _matmul(ma, sa, mb, sb)
    return out + abs(attrs["beta"]) * s[2] if len(s) > 2 and s[2] is not None else out


def _softmax(attrs, a, s, y):
    """dy_k = y_k (dx_k - sum_j y_j dx_j): at most 2 y_k max(s) along the axis."""
    return 2 * y * np.max(s[0], axis=attrs["axis"], keepdims=True, initial=0.0)


RULES = {
    "Relu": lambda attrs, a, s, y: s[0],
    "Abs": lambda attrs, a, s, y: s[0],
    "Neg": lambda attrs, a, s, y: s[0],
    "Add": lambda attrs, a, s, y: s[0] + s[1],
    "Sub": lambda attrs, a, s, y: s[0] + s[1],
    "Mul": lambda attrs, a, s, y: s[0] * np.abs(a[1]) + np.abs(a[0]) * s[1],
    "Div": lambda attrs, a, s, y: s[0] / np.abs(a[1]) + np.abs(a[0]) * s[1] / a[1] ** 2,
    "Exp": lambda attrs, a, s, y: np.abs(y) * s[0],
    "Log": lambda attrs, a, s, y: s[0] / np.abs(a[0]),
    "Sqrt": lambda attrs, a, s, y: s[0] / (2 * np.sqrt(np.abs(a[0]))),
    "Sigmoid": lambda attrs, a, s, y: y * (1 - y) * s[0],
    "Tanh": lambda attrs, a, s, y: (1 - y * y) * s[0],
    "MatMul": lambda attrs, a, s, y: _matmul(a[0], s[0], a[1], s[1]),
    "Gemm": _gemm,
    "Softmax": _softmax,
    "Cast": lambda attrs, a, s, y: s[0] if s[0] is not None else 0,  # from an integer: exact
}
