"""to-recurrent: a full-sequence model -> a step program with explicit, constant-size state.

    f(ids [B, T]) -> y                       becomes
    f(ids [B, T], position, state...) -> (y, state'...)

- every LinearAttention without past_state reads `state.<node>` [B, H_kv, dk, dv] and writes
  its present_state to the output of the same name;
- every SlidingWindowAttention reads and writes its ring buffers `state.<node>.key|value`
  [B, H_kv, window, D] and the shared `position` (i64 scalar, tokens seen so far);
- positions: Range(0, T) (e.g. RoPE angles, or Hugging Face's cache_position = arange(T) before
  its Unsqueeze/Expand into position_ids) -> Range(0, T) + position. Positions that are a graph
  input (`position_ids`) are left as they are: whoever runs the step program passes absolute
  positions, position .. position + T - 1 (sessions do so for an input named `position_ids`).
With zero state and position 0 the program computes exactly what it did before; run on
consecutive chunks of a sequence it computes the same as on the whole sequence, so one program
serves prefill (any T, streamed in chunks) and decode (T = 1).

T is whatever symbol the exporter named the sequence axis (seq, T, sequence_length, dynamo's
s0/s1): `sequence_symbol` finds it from the graph, and the manifest records it.

That holds only if no other node mixes tokens along the sequence axis. The pass proves this
node by node (elementwise ops, row-wise reductions, projections, layout changes that keep each
token's row) and otherwise does nothing, or with `required` fails naming the node. The memory
certificate (`memory_certificate`) then lists every decode-time buffer and shows none depends
on the sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sbc.errors import UnsupportedError
from sbc.ir import Graph, Node, TensorType, Value, numpy_dtype
from sbc.ir.dims import Sym, evaluate, prod, simplify
from sbc.passes.attention_patterns import scalar
from sbc.passes.base import Pass, PassResult, register_pass

POSITION = "position"
STATE_PREFIX = "state."
STATEFUL = ("LinearAttention", "SlidingWindowAttention")
ELEMENTWISE = frozenset("""Abs Acos Add And Asin Atan Cast CastLike Ceil Clip Cos Cosh Div Elu
    Equal Erf Exp Floor Gelu Greater GreaterOrEqual HardSigmoid HardSwish Identity IsInf IsNaN
    LeakyRelu Less LessOrEqual Log Max Mean Min Mish Mod Mul Neg Not Or Pow Reciprocal Relu
    Round Selu Sigmoid Sign Sin Sinh Softplus Softsign Sqrt Sub Sum Tan Tanh Where Xor""".split())
LAYOUT = ("Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose", "Expand")


def sequence_symbol(graph: Graph) -> str | None:
    """The symbol of the sequence axis, found from the graph rather than by name: exporters call
    it seq, T, sequence_length or s0 (and dynamo may call the batch s0). It is the symbol on the
    sequence axis (axis 1 of the packed [B, T, H*D] query) of the token mixers; in a graph
    without mixers, the one symbol on axis 1 of the inputs besides their batch (axis 0) symbols
    (ids [B, T]). None if there is no such symbol, or more than one."""
    mixers = [n.inputs[0] for n in graph.nodes if n.op in STATEFUL]
    if mixers:
        found = {s for v in mixers for s in _dim_symbols(v.shape[1])}
    else:
        rows = [v.shape for v in graph.inputs if v.type.rank >= 2]
        found = {s for shape in rows for s in _dim_symbols(shape[1])}
        found -= {s for shape in rows for s in _dim_symbols(shape[0])}
    return found.pop() if len(found) == 1 else None


def no_sequence_symbol(graph: Graph) -> str:
    """What sequence_symbol looked for, for the error when it finds nothing."""
    ops = " or ".join(STATEFUL)
    mixers = [n for n in graph.nodes if n.op in STATEFUL]
    if mixers:
        dims = sorted({str(n.inputs[0].shape[1]) for n in mixers})
        return (f"found no sequence symbol: the sequence axis (axis 1) of the {ops} inputs "
                f"[B, T, H*D] is {', '.join(dims)}, not one symbolic dim")
    return (f"found no sequence symbol: the graph has no {ops}, and axis 1 of its inputs holds "
            "no single symbolic dim besides the batch")


def _dim_symbols(d) -> set[str]:
    return d.symbols if isinstance(d, Sym) else set()


def _uses(d, seq: str) -> bool:
    return isinstance(d, Sym) and seq in d.symbols


def _seq_axes(v: Value, seq: str) -> list[int]:
    return [i for i, d in enumerate(v.shape) if _uses(d, seq)]


def _axes(node: Node, rank: int) -> list[int] | None:
    """The axes an axis-wise op works along (normalised), None if not an axis-wise op."""
    a = node.attrs
    if node.op.startswith("Reduce"):
        given = node.inputs[1] if len(node.inputs) > 1 else None
        if given is None or given.data is None:
            return list(range(rank))
        return [int(x) % rank for x in np.asarray(given.data).reshape(-1)]
    if node.op in ("Softmax", "LogSoftmax", "Concat", "Split", "ArgMax", "ArgMin", "Gather"):
        return [a["axis"] % rank]
    if node.op == "CumSum":
        return [int(scalar(node.inputs[1])) % rank]
    if node.op in ("LayerNormalization", "RMSNormalization"):
        return list(range(a["axis"] % rank, rank))
    if node.op in ("SpikeEncode", "SpikeMatMul"):  # the neuron's row / the contraction
        return [rank - 1]
    if node.op in ("SpikeExpand", "SpikeCollapse"):  # per neuron; a train's steps lead
        return [] if node.op == "SpikeExpand" else [0]
    if node.op == "Slice":
        given = node.inputs[3] if len(node.inputs) > 3 else None
        return list(range(rank)) if given is None or given.data is None else \
            [int(x) % rank for x in np.asarray(given.data).reshape(-1)]
    return None


def _keeps_rows(node: Node, seq: str) -> bool:
    """A layout op keeps each token's row when seq stays in one dim and what follows that dim
    (the row) has the same size before and after."""
    x, y = node.inputs[0], node.outputs[0]
    if node.op in ("Transpose", "Expand"):
        return len(_seq_axes(y, seq)) == 1
    ax, ay = _seq_axes(x, seq), _seq_axes(y, seq)
    if len(ax) != 1 or len(ay) != 1:
        return False
    return prod(x.shape[ax[0] + 1:]) == prod(y.shape[ay[0] + 1:])


def mixing_reason(node: Node, seq: str) -> str | None:
    """Why `node` may mix tokens along the sequence axis, or None if it provably does not."""
    values = [v for v in node.inputs + node.outputs if v is not None]
    if node.op in STATEFUL or all(v.data is not None for v in node.outputs):
        return None
    if not any(_seq_axes(v, seq) for v in values):
        return None
    for out in node.outputs:
        if len(_seq_axes(out, seq)) > 1 or any(_degree(d, seq) > 1 for d in out.shape):
            return f"it makes {out.type}, a tensor over pairs of positions"
    if node.op in ELEMENTWISE or node.op == "Range":
        return None
    if node.op in ("MatMul", "MatMulPacked", "Gemm", "Einsum"):
        if node.op == "Einsum":
            return "sbc cannot tell which axes an Einsum contracts"
        a = node.inputs[0]
        k = a.shape[0] if node.op == "Gemm" and node.attrs["transA"] else a.shape[-1]
        return "it contracts over the sequence axis" if _uses(k, seq) else None
    if node.op == "Tile":  # copies (GQA's heads, repeat_interleave) keep rows unless along T
        repeats = node.inputs[1].data
        if repeats is None or repeats.dtype == object:
            return "sbc cannot tell what a Tile with run-time repeats copies"
        along = [int(repeats[a]) for a in _seq_axes(node.inputs[0], seq)]
        return None if along == [1] else "it repeats along the sequence axis"
    if node.op in LAYOUT:
        return None if _keeps_rows(node, seq) else "it moves data across positions (a reshape " \
                                                   "that splits or merges token rows)"
    x = node.inputs[0]
    axes = _axes(node, x.type.rank)
    if axes is None:
        return f"sbc cannot prove that {node.op} keeps positions independent"
    if set(axes) & set(_seq_axes(x, seq)):
        return "it works along the sequence axis"
    return None


def why_not_recurrent(graph: Graph, seq: str | None = None) -> str | None:
    """Why to-recurrent would leave `graph` as it is (None: it applies). seq: the sequence
    axis's symbol; None: sequence_symbol(graph)."""
    if not any(n.op in STATEFUL and not ToRecurrent._has_state(n) for n in graph.nodes):
        return f"the graph has no {' or '.join(STATEFUL)} without state to give state to"
    seq = seq or sequence_symbol(graph)
    if seq is None:
        return no_sequence_symbol(graph)
    if not any(seq in v.type.symbols for v in graph.inputs):
        return f"no input has a '{seq}' axis"
    for node in graph.nodes:
        why = mixing_reason(node, seq)
        if why:
            return (f"{node.where()} prevents constant-memory decoding: {why}; only "
                    f"LinearAttention and SlidingWindowAttention may mix positions")
    return None


@register_pass
class ToRecurrent(Pass):
    name = "to-recurrent"
    # the state it makes lives in the fused ops: a mixer fused after it stays stateless
    runs_after = ("fuse-linear-attention", "fuse-sliding-window-attention", "recognise-mixers",
                  "fuse-spike-neurons", "spike-matmul")

    @dataclass
    class Options:
        seq: str = ""  # the symbol of the sequence axis; "": found (sequence_symbol)
        required: bool = False  # fail (naming the node) instead of leaving the graph as it is

    def run(self, graph: Graph) -> PassResult:
        seq = self.options.seq or sequence_symbol(graph)
        why = why_not_recurrent(graph, seq)
        if why:
            if self.options.required:
                raise UnsupportedError(f"cannot make the model recurrent: {why}")
            return PassResult(graph, False)
        stateful = [n for n in graph.nodes if n.op in STATEFUL and not self._has_state(n)]
        position = graph.add_input(POSITION, TensorType("i64", ()))
        for node in stateful:
            self._add_state(graph, node, position)
        self._offset_positions(graph, position, seq)
        graph.toposort()
        return PassResult(graph, True)

    @staticmethod
    def _has_state(node: Node) -> bool:
        return len(node.inputs) > 3 and node.inputs[3] is not None

    @staticmethod
    def _add_state(graph: Graph, node: Node, position: Value) -> None:
        """Wire the node's past-state inputs to new graph inputs and its present state to
        outputs of the same names."""
        if node.op == "LinearAttention":
            names = [f"{STATE_PREFIX}{node.name}"]
            past = [graph.add_input(names[0], node.outputs[1].type)]
            extra = node.inputs[4:]
            node.inputs = node.inputs[:3] + past + extra
        else:
            names = [f"{STATE_PREFIX}{node.name}.key", f"{STATE_PREFIX}{node.name}.value"]
            past = [graph.add_input(n, v.type) for n, v in zip(names, node.outputs[1:])]
            node.inputs = node.inputs[:3] + past + [position]
        present = node.outputs[1:]
        graph.set_outputs(graph.outputs + present, graph.output_names + [p.name for p in past])

    @staticmethod
    def _offset_positions(graph: Graph, position: Value, seq: str) -> None:
        """Range(0, T) -> Range(0, T) + position, for every such range over the sequence."""
        for node in list(graph.nodes):
            out = node.outputs[0] if node.op == "Range" else None
            if out is None or len(out.shape) != 1 or not _uses(out.shape[0], seq):
                continue
            if scalar(node.inputs[0]) != 0:
                raise UnsupportedError(f"{node.where()}: a position range must start at 0")
            users = [n for n in graph.nodes if out in n.inputs]
            offset = graph.add1("Cast", position, name=f"{node.name}_position", to=out.dtype)
            shifted = graph.add1("Add", out, offset, name=f"{node.name}_absolute")
            for user in users:
                user.inputs = [shifted if v is out else v for v in user.inputs]
            graph.outputs = [shifted if v is out else v for v in graph.outputs]


def state_names(graph: Graph) -> list[str]:
    return [v.name for v in graph.inputs if v.name.startswith(STATE_PREFIX)]


def memory_certificate(graph: Graph, seq: str | None = None) -> dict:
    """Every buffer of the decode step (the recurrent program at T = 1) with its size in bytes,
    and the check that no state depends on the sequence length. seq: the sequence axis's
    symbol; None: sequence_symbol(graph)."""
    seq = seq or sequence_symbol(graph)
    if seq is None:
        raise UnsupportedError(f"no memory certificate: sbc {no_sequence_symbol(graph)}")

    def entry(v: Value) -> dict:
        nbytes = _simple(prod([_at_one(d, seq) for d in v.shape]) * numpy_dtype(v.dtype).itemsize)
        at_batch_1 = evaluate(nbytes, {s: 1 for s in v.type.symbols})
        return {"name": v.name, "type": str(v.type), "bytes": str(nbytes), "bytes_at_batch_1": at_batch_1}

    state = [v for v in graph.inputs if v.name.startswith(STATE_PREFIX) or v.name == POSITION]
    growing = [v.name for v in state if seq in v.type.symbols]
    buffers = [entry(v) for n in graph.nodes for v in n.outputs if v.data is None]
    total = _simple(sum((prod(v.shape) * numpy_dtype(v.dtype).itemsize for v in state), Sym({})))
    capacity = max_context(graph)
    return {
        "sequence_symbol": seq,
        "max_context": capacity,
        "kv_caches": [f"{n.where()}: full causal attention, a KV cache of {n.attrs['window']} "
                      "tokens allocated in full (it holds the context; longer ones are refused)"
                      for n in graph.nodes if n.op == "SlidingWindowAttention" and n.attrs.get("full")],
        "state": [entry(v) for v in state],
        "state_bytes": str(total),
        "decode_buffers": buffers,
        "depends_on_sequence_length": bool(growing),
        "proof": (f"decode runs the step program at {seq} = 1 and no state has a '{seq}' dim, "
                  "so every buffer above is a function of the batch size only") if not growing
        else f"state {growing} grows with '{seq}'",
    }


def max_context(graph: Graph) -> int | None:
    """The most tokens a sequence may hold: the smallest KV cache capacity of the full causal
    attentions (None without them: windows and linear state hold any length)."""
    capacities = [n.attrs["window"] for n in graph.nodes
                  if n.op == "SlidingWindowAttention" and n.attrs.get("full")]
    return min(capacities) if capacities else None


def _at_one(d, seq: str):
    """d with the sequence length set to 1 (other symbols kept)."""
    if not _uses(d, seq):
        return d
    terms: dict = {}
    for mono, coef in d.terms.items():
        rest = tuple(s for s in mono if s != seq)
        terms[rest] = terms.get(rest, 0) + coef
    return _simple(Sym(terms))


def _simple(d):
    return simplify(d) if isinstance(d, Sym) else d


def _degree(d, seq: str) -> int:
    return max((mono.count(seq) for mono in d.terms), default=0) if isinstance(d, Sym) else 0
