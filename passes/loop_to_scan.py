"""loop-to-scan: a Loop that walks tensors along one axis -> the equivalent Scan.

    Loop(M = x.shape[a], cond = true, S0..., captured x...)
        body (i, cond, S..., x...) -> (cond, S'..., y_t...), reading x only as Gather(x, i, axis=a)
    -> Scan(S0..., x... scanned along a, the other captured values)
        body (S..., x_t..., others...) -> (S'..., y_t...), scan outputs stacked along axis 0

This is how a recurrence is usually written with Loop (linear attention over [B, H, T, D]:
T = Shape(q)[2], q_t = Gather(q, i, axis=2), ...). The rewrite is exact: iteration i of the
Loop reads slice i of each gathered tensor and stacks its outputs along a new axis 0, which is
what a forward Scan over axis a with scan output axis 0 does.

Why a pass of its own rather than a Loop rule in fuse-linear-attention: the rewrite knows
nothing about attention (any such Loop is a Scan), so the Scan rule — its boundary match and
its numerical classification of the body — then decides about linear attention once for both
forms, and its near misses are explained in one place. A Loop rule there would repeat all of it
with an iteration number in the way. The pass runs right before fuse-linear-attention.

A Loop qualifies when its trip count is known at compile time and is the length of every
gathered axis, nothing can end it early (condition omitted or constant true, passed through by
the body), and the body reads the iteration number only as the index of such Gathers (no
`i + 1`, no condition computed from it). `check` says which of these fails.
"""

from __future__ import annotations

from dataclasses import dataclass

from sbc.ir import Graph, Node, Value
from sbc.ir.ops.common import normalize_axis
from sbc.ir.ops.control_flow import loop_layout, trip_count
from sbc.passes.base import Miss, RewriteRule, RulePass, register_pass


@dataclass
class Walk:
    """What the rewrite needs: the body Gathers that read slice i, grouped by the tensor and
    axis they walk (each pair becomes one scan input)."""
    body: Graph
    states: int
    sequences: list[tuple[Value, int]]  # (captured body input, axis), in first-use order
    gathers: dict[int, int]  # id(Gather node) -> index into sequences
    skipped: set[int]  # ids of the body nodes that compute the (unchanging) condition


def walk_of(node: Node) -> Walk | str:
    """The Loop as a walk over tensors, or why it is not one."""
    layout = loop_layout(node.attrs, len(node.inputs))
    length = trip_count(node)
    if isinstance(length, str):
        return length
    body = node.attrs["body"]
    iter_num, cond_in = body.inputs[0], body.inputs[1]
    captured = body.inputs[2 + layout.states:]
    condition = _condition_nodes(body)
    sequences, gathers = [], {}
    for n in body.nodes:
        if id(n) in condition:
            continue
        if cond_in in n.inputs or any(v.producer is not None and id(v.producer) in condition
                                      for v in n.inputs if v is not None):
            return f"its body reads the loop condition at {n.where()}"
        if iter_num not in n.inputs:
            continue
        if n.op != "Gather" or n.inputs[1] is not iter_num or n.inputs[0] not in captured:
            return f"its body reads the iteration number other than as Gather(x, iteration " \
                   f"number) of a tensor from outside the Loop, at {n.where()}"
        x = n.inputs[0]
        axis = normalize_axis(n.attrs["axis"], x.type.rank)
        if x.shape[axis] != length:
            outer = node.inputs[2 + layout.states + captured.index(x)]
            return f"its trip count {length} is not the length {x.shape[axis]} of axis {axis} " \
                   f"of %{outer.name}, which {n.where()} gathers at the iteration number"
        if (x, axis) not in sequences:
            sequences.append((x, axis))
        gathers[id(n)] = sequences.index((x, axis))
    if iter_num in body.outputs or cond_in in body.outputs[1:]:
        return "its body returns the iteration number or the condition as a value"
    if not sequences:
        return "its body gathers no tensor at the iteration number (a Scan needs a scan input)"
    return Walk(body, layout.states, sequences, gathers, condition)


def _condition_nodes(body: Graph) -> set[int]:
    """The Identity chain (or the constant) that computes the body's condition output; the
    Scan has no condition, so these nodes go."""
    nodes, v = set(), body.outputs[0]
    while v.producer is not None:
        nodes.add(id(v.producer))
        if v.producer.op != "Identity":
            break
        v = v.producer.inputs[0]
    return nodes


def scan_body(walk: Walk) -> tuple[Graph, list[Value]]:
    """The Scan's body and the captured body inputs it still reads (in order)."""
    old = walk.body
    new = Graph(old.name)
    mapped: dict[int, Value] = {}
    for v in old.inputs[2:2 + walk.states]:
        mapped[id(v)] = new.add_input(v.name, v.type)
    slices = [None] * len(walk.sequences)
    for n in old.nodes:  # the slice input takes the name and type of its first Gather
        k = walk.gathers.get(id(n))
        if k is not None and slices[k] is None:
            slices[k] = new.add_input(n.outputs[0].name, n.outputs[0].type)
    needed = _needed(old, walk)
    kept = [v for v in old.inputs[2 + walk.states:] if id(v) in needed]
    for v in kept:
        mapped[id(v)] = new.add_input(v.name, v.type)
    for n in old.nodes:
        if id(n) in walk.gathers:
            mapped[id(n.outputs[0])] = slices[walk.gathers[id(n)]]
        elif id(n) in needed:
            inputs = [None if v is None else mapped[id(v)] for v in n.inputs]
            copy = new.add(n.op, inputs, dict(n.attrs), name=n.name,
                           outputs=[v.name for v in n.outputs])
            mapped.update({id(a): b for a, b in zip(n.outputs, copy.outputs)})
    outputs = []
    for v in old.outputs[1:]:
        out = mapped[id(v)]
        if out.producer is None:  # an input returned as it is needs its own value
            out = new.add1("Identity", out, name=f"output:{v.name}")
        outputs.append(out)
    new.set_outputs(outputs, old.output_names[1:])
    return new, kept


def _needed(body: Graph, walk: Walk) -> set[int]:
    """Ids of the body nodes and inputs the state and scan outputs depend on, the Gathers
    of slice i being where the walk stops (they become the Scan's slice inputs)."""
    needed, pending = set(), list(body.outputs[1:])
    while pending:
        v = pending.pop()
        n = v.producer
        if n is None:
            needed.add(id(v))
        elif id(n) not in needed and id(n) not in walk.gathers:
            needed.add(id(n))
            pending += [x for x in n.inputs if x is not None]
    return needed


class LoopAsScan(RewriteRule):
    """Loop(M = x.shape[a], true, S0, x...) that gathers slice i of x... -> Scan(S0, x...)."""
    ops = ("Loop",)

    def match(self, node: Node) -> Walk | Miss:
        walk = walk_of(node)
        return Miss(walk) if isinstance(walk, str) else walk

    def rewrite(self, graph: Graph, node: Node, walk: Walk) -> None:
        body, kept = scan_body(walk)
        outer = dict(zip(walk.body.inputs, node.inputs))  # body input -> the Loop's input
        states = node.inputs[2:2 + walk.states]
        sequences = [outer[x] for x, _ in walk.sequences]
        scan = graph.add("Scan", states + sequences + [outer[v] for v in kept], {
            "body": body, "num_scan_inputs": len(sequences), "num_captured": len(kept),
            "scan_input_axes": [axis for _, axis in walk.sequences],
            "scan_output_axes": [0] * (len(body.outputs) - walk.states)},
            name=node.name, outputs=[v.name for v in node.outputs])
        for old, new in zip(node.outputs, scan.outputs):
            graph.replace_uses(old, new)


RULES = [LoopAsScan()]


@register_pass
class LoopToScan(RulePass):
    name = "loop-to-scan"
    RULES = RULES
