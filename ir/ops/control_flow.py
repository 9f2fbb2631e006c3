"""Control flow: ONNX `Scan` (opset 16 semantics) with a closed body graph.

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

Scan has no lowering: a pass raises recognised bodies to dedicated ops (LinearAttention); the
reference runs the body step by step with the IR interpreter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sbc.ir.dims import Sym, evaluate
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
        _check_state(s.type, out)
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


def _check_state(initial: TensorType, out) -> None:
    """A state keeps its dtype, rank and static dims across iterations. (Symbolic dims may be
    spelled differently by the body's inference; the interpreter checks them per step.)"""
    t = out.type
    same = t.dtype == initial.dtype and t.rank == initial.rank and all(
        a == b for a, b in zip(t.shape, initial.shape) if isinstance(a, int) and isinstance(b, int))
    if not same:
        raise OpError(f"Scan: body output %{out.name} is {t}, its state starts as {initial}")


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
