"""Control flow: ONNX `Scan` (opset 16 semantics) and `Loop` (opset 13+), each with a closed
body graph.

    Scan(states..., scan_inputs..., captured...) -> (final_states..., scan_outputs...)

N loop-carried states, M = num_scan_inputs scan inputs and C = num_captured captured values.
The body (attribute `body`, an sbc Graph) takes N + M + C inputs: the current states, one slice
of each scan input (its scan axis removed) and the captured values; it returns N + K outputs:
the next states and one slice of each scan output. Iteration t = 0 .. L-1 (L: the length of
the scan axes) reads slice t of a forward scan input and slice L-1-t of a reverse one; scan
output k stacks its L slices along scan_output_axes[k], in iteration order (reversed for
direction 1).

The captured values are sbc's addition to ONNX: an ONNX body may read values of the enclosing
graph by name, an sbc body may not (so every pass can treat a graph on its own); the frontend
passes such values explicitly, after the scan inputs.

    Loop(M?, cond?, v_initial..., captured...) -> (v_final..., scan_outputs...)

The body takes (iter_num i64[], cond_in bool[], v_in..., captured...) and returns (cond_out,
v_out..., slices...). The loop runs while iter_num < M (when M is given) and cond (when given,
then cond_out) is true; scan output k stacks the K slices along a new axis 0. Loop-carried
values keep their types. A scan output's length must be a dim known at compile time, so a Loop
with scan outputs needs a trip count known at compile time (a dim of an input's Shape: `seq`)
and a condition that cannot end it early (omitted or constant true, passed through unchanged
by the body); a Loop without scan outputs may stop whenever it likes.

Neither op has a lowering: a Loop computed from constants alone folds, passes turn recognised
Loops into Scans (loop-to-scan) and Scans into dedicated ops (LinearAttention); the references
run the body step by step with the IR interpreter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sbc.ir.dims import Dim, Sym, evaluate
from sbc.ir.ops.common import normalize_axis
from sbc.ir.registry import Attr, OpError, op
from sbc.ir.types import TensorType, bind_symbols, numpy_dtype


@dataclass(frozen=True)
class ScanLayout:
    """How a Scan node's inputs and outputs split up; axes as given (possibly negative)."""
    states: int  # N
    scans: int  # M
    captured: int  # C
    outputs: int  # K, the scan outputs
    input_axes: tuple[int, ...]
    input_reverse: tuple[bool, ...]
    output_axes: tuple[int, ...]
    output_reverse: tuple[bool, ...]

    def split(self, items: list) -> tuple[list, list, list]:
        """Node inputs (or body inputs) -> (states, scan inputs, captured)."""
        n, m = self.states, self.scans
        return list(items[:n]), list(items[n:n + m]), list(items[n + m:])


def scan_layout(attrs: dict, n_inputs: int) -> ScanLayout:
    """The checked layout of a Scan with these (normalized) attributes and input count."""
    body, m, c = attrs["body"], attrs["num_scan_inputs"], attrs["num_captured"]
    n = n_inputs - m - c
    if m < 1 or c < 0 or n < 0:
        raise OpError(f"Scan: {n_inputs} inputs cannot hold num_scan_inputs={m} (at least 1) "
                      f"scan inputs and num_captured={c} captured values")
    if len(body.inputs) != n + m + c:
        raise OpError(f"Scan: the body takes {len(body.inputs)} inputs, the node gives {n} "
                      f"state(s) + {m} scan input(s) + {c} captured")
    k = len(body.outputs) - n
    if k < 0:
        raise OpError(f"Scan: the body returns {len(body.outputs)} outputs, fewer than the "
                      f"{n} state(s)")
    return ScanLayout(n, m, c, k,
                      _per_item(attrs["scan_input_axes"], m, "scan_input_axes"),
                      _directions(attrs["scan_input_directions"], m, "scan_input_directions"),
                      _per_item(attrs["scan_output_axes"], k, "scan_output_axes"),
                      _directions(attrs["scan_output_directions"], k, "scan_output_directions"))


def _per_item(values, count: int, what: str) -> tuple[int, ...]:
    """One int per scan input/output; an empty list means all 0 (ONNX's default)."""
    values = [int(v) for v in values] if values else [0] * count
    if len(values) != count:
        raise OpError(f"Scan: {what} has {len(values)} entries, expected {count}")
    return tuple(values)


def _directions(values, count: int, what: str) -> tuple[bool, ...]:
    values = _per_item(values, count, what)
    if any(v not in (0, 1) for v in values):
        raise OpError(f"Scan: {what} must be 0 (forward) or 1 (reverse), got {list(values)}")
    return tuple(v == 1 for v in values)


# -- inference ---------------------------------------------------------------------------------

@op("Scan", inputs=["inputs*"], outputs=["outputs*"], foldable=False, attrs={
    "body": Attr("graph"),
    "num_scan_inputs": Attr("int"),
    "num_captured": Attr("int", 0),
    "scan_input_directions": Attr("ints", []),
    "scan_input_axes": Attr("ints", []),
    "scan_output_directions": Attr("ints", []),
    "scan_output_axes": Attr("ints", []),
})
def scan(node):
    """Final states (typed like the initial ones) and the scan outputs (the body's slices
    stacked along their scan axis, of the scan length L, which may be symbolic)."""
    if any(v is None for v in node.inputs):
        raise OpError("Scan: inputs cannot be omitted")
    layout = scan_layout(node.attrs, len(node.inputs))
    body = node.attrs["body"]
    states, scans, captured = layout.split(node.inputs)
    if any(v.type.rank == 0 for v in scans):
        raise OpError(f"Scan: scan inputs need a scan axis, got {[str(v.type) for v in scans]}")
    axes = [normalize_axis(a, v.type.rank) for a, v in zip(layout.input_axes, scans)]
    expected = ([v.type for v in states] + [_drop(v.type, a) for v, a in zip(scans, axes)]
                + [v.type for v in captured])
    for i, (b, want) in enumerate(zip(body.inputs, expected)):
        if b.type != want:
            raise OpError(f"Scan: body input {i} %{b.name} is {b.type}, the node gives {want}")
    for s, out in zip(states, body.outputs):
        _check_state("Scan", s.type, out)
    length = scan_length(scans, axes)
    slices = body.outputs[layout.states:]
    return [v.type for v in states] + [_insert(o.type, length, a)
                                       for o, a in zip(slices, layout.output_axes)]


def scan_length(scans: list, axes: list[int]):
    """The common length of the scan inputs along their (normalized) scan axes."""
    length = scans[0].shape[axes[0]]
    for v, a in zip(scans[1:], axes[1:]):
        d = v.shape[a]
        if isinstance(d, int) and isinstance(length, int) and d != length:
            raise OpError(f"Scan: scan inputs differ in length along their scan axes "
                          f"({[str(v.type) for v in scans]}, axes {axes})")
        if isinstance(length, Sym) and isinstance(d, int):
            length = d  # a concrete length is the better-known one
    return length


def _check_state(op_name: str, initial: TensorType, out) -> None:
    """A state keeps its dtype, rank and static dims across iterations. (Symbolic dims may be
    spelled differently by the body's inference; the interpreter checks them per step.)"""
    t = out.type
    same = t.dtype == initial.dtype and t.rank == initial.rank and all(
        a == b for a, b in zip(t.shape, initial.shape) if isinstance(a, int) and isinstance(b, int))
    if not same:
        raise OpError(f"{op_name}: body output %{out.name} is {t}, its state starts as {initial}")


def _drop(t: TensorType, axis: int) -> TensorType:
    return TensorType(t.dtype, t.shape[:axis] + t.shape[axis + 1:])


def _insert(t: TensorType, length, axis: int) -> TensorType:
    axis = normalize_axis(axis, t.rank + 1)
    return TensorType(t.dtype, t.shape[:axis] + (length,) + t.shape[axis:])


# -- reference ---------------------------------------------------------------------------------

@scan.reference
def _(attrs, *arrays):
    layout = scan_layout(attrs, len(arrays))
    body = attrs["body"]
    states, scans, captured = layout.split(list(arrays))
    axes = [normalize_axis(a, x.ndim) for a, x in zip(layout.input_axes, scans)]
    lengths = {x.shape[a] for x, a in zip(scans, axes)}
    if len(lengths) != 1:
        raise ValueError(f"Scan: scan inputs differ in length along their scan axes: "
                         f"{[x.shape for x in scans]}, axes {axes}")
    length = lengths.pop()
    if length == 0:
        return tuple(states) + _empty_outputs(body, layout, states, scans, axes, captured)
    steps = []
    for t in range(length):
        slices = [np.take(x, length - 1 - t if rev else t, axis=a)
                  for x, a, rev in zip(scans, axes, layout.input_reverse)]
        outs = _run_body(body, states + slices + captured)
        states, slice_outs = outs[:layout.states], outs[layout.states:]
        steps.append(slice_outs)
    stacked = []
    for k, (axis, rev) in enumerate(zip(layout.output_axes, layout.output_reverse)):
        items = [step[k] for step in steps]
        stacked.append(np.stack(items[::-1] if rev else items,
                                axis=normalize_axis(axis, items[0].ndim + 1)))
    return tuple(states) + tuple(stacked)


def _run_body(body, args: list) -> list[np.ndarray]:
    from sbc.ir.interpreter import run  # (the interpreter imports the registry: no cycle here)
    result = run(body, {v.name: a for v, a in zip(body.inputs, args)})
    return [result[name] for name in body.output_names]


def _empty_outputs(body, layout: ScanLayout, states, scans, axes, captured) -> tuple:
    """Zero-length scan outputs: their other dims come from the body's output types, with
    the body's symbols bound by the shapes its inputs would have."""
    slices = [np.empty(x.shape[:a] + x.shape[a + 1:], x.dtype) for x, a in zip(scans, axes)]
    args = states + slices + captured
    env = bind_symbols([(v.name, v.type) for v in body.inputs],
                       {v.name: a for v, a in zip(body.inputs, args)})
    outs = []
    for o, axis in zip(body.outputs[layout.states:], layout.output_axes):
        shape = [evaluate(d, env) for d in o.shape]
        shape.insert(normalize_axis(axis, len(shape) + 1), 0)
        outs.append(np.empty(shape, numpy_dtype(o.dtype)))
    return tuple(outs)


# -- Loop --------------------------------------------------------------------------------------

ITER_NUM, CONDITION = TensorType("i64", ()), TensorType("bool", ())


@dataclass(frozen=True)
class LoopLayout:
    """How a Loop node's inputs and its body's outputs split up."""
    states: int  # N, the loop-carried values
    captured: int  # C
    outputs: int  # K, the scan outputs

    def split(self, items: list) -> tuple:
        """Node inputs -> (trip count, condition, states, captured)."""
        n = self.states
        return items[0], items[1], list(items[2:2 + n]), list(items[2 + n:])


def loop_layout(attrs: dict, n_inputs: int) -> LoopLayout:
    """The checked layout of a Loop with these (normalized) attributes and input count."""
    body, c = attrs["body"], attrs["num_captured"]
    n = n_inputs - 2 - c
    if c < 0 or n < 0:
        raise OpError(f"Loop: {n_inputs} inputs cannot hold the trip count, the condition and "
                      f"num_captured={c} captured values")
    if len(body.inputs) != 2 + n + c:
        raise OpError(f"Loop: the body takes {len(body.inputs)} inputs, the node gives the "
                      f"iteration number, the condition, {n} loop-carried value(s) and {c} "
                      f"captured")
    k = len(body.outputs) - 1 - n
    if k < 0:
        raise OpError(f"Loop: the body returns {len(body.outputs)} outputs, fewer than the "
                      f"condition and {n} loop-carried value(s)")
    return LoopLayout(n, c, k)


# foldable: a Loop computed from constants alone (ONNX's function body of Range, with its bounds
# known) folds to its values like any op; it has no lowering to run otherwise.
@op("Loop", inputs=["inputs*"], outputs=["outputs*"], foldable=True, attrs={
    "body": Attr("graph"),
    "num_captured": Attr("int", 0),
})
def loop(node):
    """Final loop-carried values (typed like the initial ones) and the scan outputs (the
    body's slices stacked along a new axis 0, as long as the trip count)."""
    if len(node.inputs) < 2:
        raise OpError("Loop: takes the trip count and the condition (either may be omitted) "
                      "before the loop-carried values")
    layout = loop_layout(node.attrs, len(node.inputs))
    body = node.attrs["body"]
    trip, cond, states, captured = layout.split(node.inputs)
    if any(v is None for v in states + captured):
        raise OpError("Loop: only the trip count and the condition may be omitted")
    _check_scalar(trip, "i64", "trip count")
    _check_scalar(cond, "bool", "condition")
    expected = [ITER_NUM, CONDITION] + [v.type for v in states + captured]
    for i, (b, want) in enumerate(zip(body.inputs, expected)):
        if b.type != want:
            raise OpError(f"Loop: body input {i} %{b.name} is {b.type}, the node gives {want}")
    cond_out = body.outputs[0]
    if cond_out.dtype != "bool" or cond_out.type.numel != 1:
        raise OpError(f"Loop: the body's first output %{cond_out.name} is {cond_out.type}, "
                      f"not the condition (one bool)")
    for s, out in zip(states, body.outputs[1:]):
        _check_state("Loop", s.type, out)
    slices = body.outputs[1 + layout.states:]
    if not slices:
        return [v.type for v in states]
    length = trip_count(node)
    if isinstance(length, str):
        raise OpError(f"Loop: its scan outputs need a length known at compile time, but {length}")
    return [v.type for v in states] + [_insert(o.type, length, 0) for o in slices]


def _check_scalar(v, dtype: str, what: str) -> None:
    if v is not None and (v.dtype != dtype or v.type.numel != 1):
        raise OpError(f"Loop: the {what} %{v.name} is {v.type}, not one {dtype}")


def trip_count(node) -> Dim | str:
    """How often the Loop's body runs, as a dim known at compile time; else why it is not."""
    trip, cond = node.inputs[0], node.inputs[1]
    if trip is None:
        return "it has no trip count (it runs until its condition turns false)"
    if trip.data is None:
        return f"its trip count %{trip.name} is computed at run time (a dim of an input's " \
               f"Shape, like the sequence length, is known at compile time)"
    if cond is not None and not _all_true(cond.data):
        return f"its initial condition %{cond.name} is not the constant true"
    if not stays_true(node.attrs["body"]):
        return "its body computes the condition, which may end the loop early"
    count = trip.data.reshape(-1)[0]
    if isinstance(count, Sym):
        return count
    if count < 0:
        return f"its trip count is negative ({int(count)})"
    return int(count)


def stays_true(body) -> bool:
    """Whether the body's condition output is its condition input (through Identity) or the
    constant true: then only the trip count ends the loop."""
    v = body.outputs[0]
    while v.producer is not None and v.producer.op == "Identity":
        v = v.producer.inputs[0]
    return v is body.inputs[1] or _all_true(v.data)


def _all_true(data) -> bool:
    return data is not None and data.dtype == bool and bool(np.all(data))


@loop.reference
def _(attrs, *arrays):
    layout = loop_layout(attrs, len(arrays))
    body = attrs["body"]
    trip, cond, states, captured = layout.split(list(arrays))
    limit = None if trip is None else int(np.asarray(trip).reshape(-1)[0])
    going = True if cond is None else bool(np.asarray(cond).reshape(-1)[0])
    steps = []
    while going and (limit is None or len(steps) < limit):
        args = [np.array(len(steps), np.int64), np.array(going)] + states + captured
        outs = _run_body(body, args)
        going = bool(outs[0].reshape(-1)[0])
        states, slices = outs[1:1 + layout.states], outs[1 + layout.states:]
        steps.append(slices)
    if not steps:
        return tuple(states) + _empty_loop_outputs(body, layout, states, captured)
    stacked = [np.stack([step[k] for step in steps]) for k in range(layout.outputs)]
    return tuple(states) + tuple(stacked)


def _empty_loop_outputs(body, layout: LoopLayout, states, captured) -> tuple:
    """Zero-iteration scan outputs [0, ...]: their other dims come from the body's output
    types, with the body's symbols bound by the inputs it would have got."""
    args = [np.array(0, np.int64), np.array(False)] + states + captured
    env = bind_symbols([(v.name, v.type) for v in body.inputs],
                       {v.name: a for v, a in zip(body.inputs, args)})
    return tuple(np.empty([0] + [evaluate(d, env) for d in o.shape], numpy_dtype(o.dtype))
                 for o in body.outputs[1 + layout.states:])
