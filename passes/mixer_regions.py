"""Token-mixing regions of a graph, found by dataflow rather than by spelling.

A token mixer is where the rows of different positions meet. Exporters spell it in many ways
(MatMul or Einsum, masks by Where, Trilu, multiplication or additive biases, decays as pairs of
exponentials or as a pairwise tensor), but every spelling builds values over *pairs* of
positions: a tensor with the sequence symbol T on two axes. A region is cut around them:

    boundary values (one T axis, computed from the model's inputs)      q, k, v, g ...
        -> pairwise values [.., T, .., T, ..] and what feeds back into them
           (CumSum along T, row maxima, q * exp(b), ...)
        -> root: the first node that is position-wise again               o [.., T, ..]

Compile-time values over pairs (masks: bands, biases, multipliers) are kept as `masks`, so a
band can be read at lengths where evaluating the whole region would be too big. What a region
computes is decided elsewhere (recognise_mixers.py), by running it.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from sbc.ir import Graph, Node, Value
from sbc.ir.dims import Sym
from sbc.passes.attention_patterns import upstream_symbols
from sbc.passes.base import scalar
from sbc.passes.to_recurrent import ELEMENTWISE, LAYOUT

# ops through which a position-wise value flows unchanged in kind into a pairwise one
# (q * exp(b) -> MatMul; rowmax -> Sub): such values belong to the region that consumes them
PASS_THROUGH = ELEMENTWISE | set(LAYOUT) | {"Slice", "Concat", "Tile", "Trilu", "Softmax"}


def pairwise_symbols(v: Value | None) -> set[Sym]:
    """The symbolic dims on two or more axes of v (T for a [.., T, T] score matrix)."""
    if v is None:
        return set()
    counts = Counter(d for d in v.shape if isinstance(d, Sym))
    return {d for d, n in counts.items() if n >= 2}


def seq_axes(v: Value, seq: Sym) -> list[int]:
    return [i for i, d in enumerate(v.shape) if isinstance(d, Sym) and d == seq]


@dataclass
class Layout:
    """How a position-wise tensor lays out batch, heads, positions and features: `batch` the
    batch axis, `seq` the position axis, `feature` the contracted/carried axis (None: one value
    per head), the other axes are heads (flattened in order, so a [B, Hkv, G, T, D] query's
    head hkv * G + g reads KV head hkv)."""
    shape: tuple
    batch: int
    seq: int
    heads: tuple[int, ...]
    feature: int | None

    @property
    def packed_order(self) -> list[int]:  # [B, T, heads..., D]
        return [self.batch, self.seq, *self.heads] + ([] if self.feature is None else [self.feature])

    @property
    def head_sizes(self) -> tuple[int, ...]:
        return tuple(self.shape[a] for a in self.heads)

    @property
    def num_heads(self) -> int:
        return math.prod(self.head_sizes)

    @property
    def width(self) -> int:
        return 1 if self.feature is None else self.shape[self.feature]

    def canonical(self, x: np.ndarray) -> np.ndarray:
        """x -> [B, H, T, D] (float64)."""
        y = np.transpose(x, self.packed_order).astype(np.float64)
        b, t = y.shape[:2]
        return y.reshape(b, t, self.num_heads, self.width).transpose(0, 2, 1, 3)

    def from_canonical(self, y: np.ndarray, dtype) -> np.ndarray:
        """[B, H, T, D] -> an array of this layout."""
        b, _, t, _ = y.shape
        packed = y.transpose(0, 2, 1, 3).reshape(b, t, *self.head_sizes,
                                                  *([] if self.feature is None else [self.width]))
        return np.transpose(packed, np.argsort(self.packed_order)).astype(dtype)


def layout_of(v: Value, seq: Sym, feature: bool = True) -> Layout | str:
    """v's layout (Layout's docstring) or why it has none: one T axis; the batch is the first
    other symbolic axis (else axis 0, or axis 1 when T is first: [T, B, ...] as time-major code
    writes it); heads and features static; the feature axis is the last of the rest (the one
    before T when T is last: a key already transposed)."""
    axes = seq_axes(v, seq)
    rank = v.type.rank
    if len(axes) != 1 or rank < 2:
        return f"%{v.name} {v.type} has not one {seq} axis"
    t = axes[0]
    symbolic = [a for a, d in enumerate(v.shape) if a != t and not isinstance(d, int)]
    batch = symbolic[0] if symbolic else int(t == 0)
    rest = [a for a in range(rank) if a not in (t, batch)]
    f = rest[-1] if feature and rest else None
    if feature and f is None:
        return f"%{v.name} {v.type} has no feature axis"
    heads = tuple(a for a in rest if a != f)
    if any(not isinstance(v.shape[a], int) for a in rest):
        return f"%{v.name} {v.type}: heads and features must be static (one batch axis)"
    return Layout(tuple(v.shape), batch, t, heads, f)


@dataclass
class Region:
    seq: Sym
    root: Node
    inputs: list[Value]  # boundary values: position-wise, computed from the model's inputs
    masks: list[Value]  # compile-time pairwise values (bands, biases, multiplied masks)
    nodes: list[Node] = field(default_factory=list)
    memo: dict = field(default_factory=dict)  # shared by a graph's regions (layers share masks)

    @property
    def output(self) -> Value:
        return self.root.outputs[0]

    @cached_property
    def symbols(self) -> set[str]:
        """The symbols evaluating the region needs a size for (one walk, whatever asks)."""
        return upstream_symbols(self.output)


class Analysis:
    """Per graph: which values depend on the model's inputs, which feed pairwise values, and
    which are mixed (computed from pairwise values or a scan along T inside a region)."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.data_dependent: dict[int, bool] = {}
        for v in graph.inputs:
            self.data_dependent[id(v)] = True
        for node in graph.nodes:
            dependent = any(self.data_dependent.get(id(x), False) for x in node.inputs if x is not None)
            for out in node.outputs:
                self.data_dependent[id(out)] = dependent and out.data is None
        self.feeds_pairwise = self._feeds_pairwise(graph)
        self.roots: list[tuple[Node, Sym]] = []
        self.mixed: dict[int, bool] = {}
        self.memo: dict = {}
        for node in graph.nodes:
            self._classify(node)

    def _feeds_pairwise(self, graph: Graph) -> set[int]:
        """Values that reach a pairwise value through pass-through ops only."""
        feeds: set[int] = set()
        for node in reversed(graph.nodes):
            out = node.outputs[0] if node.outputs else None
            if out is None:
                continue
            if pairwise_symbols(out) or (node.op in PASS_THROUGH and id(out) in feeds):
                feeds.update(id(x) for x in node.inputs if x is not None)
        return feeds

    def _classify(self, node: Node) -> None:
        ins = [x for x in node.inputs if x is not None]
        out = node.outputs[0] if node.outputs else None
        pairwise_in = set().union(*(pairwise_symbols(x) for x in ins)) if ins else set()
        is_root = out is not None and len(node.outputs) == 1 and not pairwise_symbols(out) \
            and id(out) not in self.feeds_pairwise \
            and any(len(seq_axes(out, s)) == 1 for s in pairwise_in)
        if is_root:
            seq = next(s for s in pairwise_in if len(seq_axes(out, s)) == 1)
            if self.data_dependent[id(out)]:
                self.roots.append((node, seq))
        for o in node.outputs:
            self.mixed[id(o)] = not is_root and (
                bool(pairwise_symbols(o)) or _scans_symbolic_axis(node)
                or any(self.mixed.get(id(x), False) for x in ins))

    def region(self, root: Node, seq: Sym) -> Region | str:
        """The region ending at `root`, or why it is not a self-contained mixer."""
        region = Region(seq, root, [], [], memo=self.memo)
        seen: set[int] = set()
        todo = [x for x in root.inputs if x is not None]
        region.nodes.append(root)
        while todo:
            x = todo.pop()
            if id(x) in seen or x.data is not None:
                continue
            seen.add(id(x))
            if not self.data_dependent[id(x)]:
                if pairwise_symbols(x):
                    region.masks.append(x)
                continue
            if self.mixed.get(id(x), False) and x.producer is not None:
                region.nodes.append(x.producer)
                todo.extend(i for i in x.producer.inputs if i is not None)
                continue
            if pairwise_symbols(x):
                return f"it reads %{x.name} {x.type}, a pairwise input of the model"
            region.inputs.append(x)
        _merge_copies(region)
        region.inputs.sort(key=lambda v: v.name)
        return region


def _scans_symbolic_axis(node: Node) -> bool:
    """CumSum along a symbolic axis: a running sum over positions (a decay's log, b = cumsum g)."""
    if node.op != "CumSum":
        return False
    axis = scalar(node.inputs[1])
    shape = node.inputs[0].shape
    return axis is not None and isinstance(shape[int(axis) % len(shape)], Sym)


# ops that copy values around without computing (repeat_kv, repeat_interleave, einops repeat)
COPY_OPS = ("Reshape", "Expand", "Unsqueeze", "Squeeze", "Tile", "Transpose", "Identity",
            "Flatten", "Gather", "Slice", "Concat")


def _merge_copies(region: Region) -> None:
    """A boundary value that only re-lays out another one (g repeated for the query side and
    plain for the key side) is not an input of its own: its copy chain joins the region."""
    inputs = {id(x): x for x in region.inputs}
    for x in list(region.inputs):
        chain, y = [], x
        while y.producer is not None and y.producer.op in COPY_OPS and y.producer.inputs:
            chain.append(y.producer)
            y = y.producer.inputs[0]
            if id(y) in inputs and y is not x:
                region.inputs.remove(x)
                del inputs[id(x)]
                region.nodes.extend(chain)
                break
