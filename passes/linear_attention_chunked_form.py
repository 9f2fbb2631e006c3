"""The chunked-form rule of fuse-linear-attention: GLA computed chunk by chunk -> LinearAttention.

    Gather(flat chunks [B, H, N*C, dv], arange(T), axis 2)    (or Slice [0, T) on axis 2)
        of a region computed from q, k, v, g [B, H, T, D] only (plus constants and shapes)
        -> LinearAttention(pack(q), pack(k), pack(v), decay = pack(g), update_rule = gated)

This is what fast prefill kernels and `sbc export --form chunked` write (models.spikingbrain
gla_chunked): the sequence is cut into N chunks of C tokens with a gather (Where(pos < T,
Gather(x, clamp(pos)), 0)), each chunk adds its own masked scores to what the states of earlier
chunks contribute, and the op above keeps the first T positions. Chunk sizes, sub-chunk
reference points and the way the inter-chunk states are formed vary between writers, so the
region is matched at its boundary only: walking up from the op that restores T, every value
read is either a constant, the shape of an input, or one of four [B, H, T, D] tensors (the
leaves). The decay g is the leaf the CumSums read; which of the other three are q, k and v is
decided by running the region (the interpreter) on random leaves at a few lengths, some
crossing chunk boundaries, against LinearAttention's reference. Data-dependent piecewise ops
(a Relu on q, a Where on data) would make sample agreement prove nothing, so the region may
use them only on positions (masks, gather indices), which the trials cover at each length.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from sbc.ir import Graph, Node, Value
from sbc.ir.dims import Sym
from sbc.ir.interpreter import evaluate
from sbc.ir.ops.common import normalize_axis
from sbc.ir.registry import get_op
from sbc.passes.attention_patterns import (pack_heads, unpack_heads, unrepeat_all,
                                           upstream_symbols)
from sbc.passes.base import Miss, RewriteRule, scalar
from sbc.passes.linear_attention_scan import LAYOUT_OPS, SMOOTH_OPS
from sbc.passes.trials import (FLOATS, draw, evaluate_from, relative_error, remember, sizes,
                               tolerance)

# Sequence lengths of the trials: a single partial chunk, and lengths that cross the chunk
# boundaries of the usual chunk sizes (64, 128, 256).
TRIAL_LENGTHS = (5, 70, 300)
TRIAL_SEED = 3
# The ops the region may apply to data read from the leaves (any op may compute positions).
# Where, Gather and GatherND only with position-only conditions / indices (see _piecewise_use).
DATA_OPS = SMOOTH_OPS | LAYOUT_OPS | {"CumSum", "Where", "GatherND"}
SHAPE_OPS = ("Shape", "Size")  # read only their input's type: shape-of-leaf chains are fine


@dataclass
class Region:
    """The chunked computation between the leaves and the op that restores T."""
    anchor: Node
    seq: Sym
    leaves: list[Value]  # the [B, H, T, D] tensors it reads, in the order found
    nodes: list[Node]  # in graph order, the anchor last
    depends: dict[int, frozenset[int]]  # id(value) -> indices of the leaves it is computed from


@dataclass
class Roles:
    q: Value
    k: Value
    v: Value
    g: Value


# -- the op that restores T ----------------------------------------------------------------------

def restored_length(node: Node) -> Sym | None:
    """T if the node keeps the first T positions of axis 2 of a longer [B, H, M, D] tensor
    (Gather with indices [T], or Slice), else None. Only the shapes: cheap, for matches()."""
    x, out = node.inputs[0], node.outputs[0]
    if x.type.rank != 4 or x.dtype not in FLOATS:
        return None
    seq, longer = out.shape[2], x.shape[2]
    if not isinstance(seq, Sym) or not isinstance(longer, Sym) or seq == longer:
        return None
    if node.op == "Gather":
        ok = normalize_axis(node.attrs["axis"], 4) == 2 and node.inputs[1].shape == (seq,)
    else:
        ok = out.shape[:2] + out.shape[3:] == x.shape[:2] + x.shape[3:]
    return seq if ok else None


def first_positions(node: Node, seq: Sym) -> str | None:
    """None if the node picks positions 0 .. T-1 in order, else why not."""
    if node.op == "Slice":
        starts, axes = node.inputs[1], node.inputs[3] if len(node.inputs) > 3 else None
        steps = node.inputs[4] if len(node.inputs) > 4 else None
        if scalar(starts) != 0 or (steps is not None and scalar(steps) != 1) \
                or (axes is not None and scalar(axes) not in (2, -2)):
            return "the Slice does not keep positions 0 .. T-1 of axis 2"
        return None
    indices = node.inputs[1]
    if indices.data is None and indices.producer is None:
        return "the positions the Gather keeps are a run-time input"
    for n in TRIAL_LENGTHS:
        picked = evaluate(indices, sizes(upstream_symbols(indices), seq, n))
        if picked is None:
            return "the positions the Gather keeps depend on run-time data"
        if not np.array_equal(picked, np.arange(n)):
            return f"the Gather does not keep positions 0 .. T-1 in order (at T={n})"
    return None


# -- the region ----------------------------------------------------------------------------------

def chunked_region(anchor: Node, seq: Sym) -> Region | str:
    """Walk up from the anchor to the [B, H, T, D] leaves; why not if something else is read."""
    leaves: list[Value] = []
    nodes: dict[int, Node] = {id(anchor): anchor}
    seen: set[int] = set()
    todo = [anchor.inputs[0]]
    while todo:
        v = todo.pop()
        if v is None or id(v) in seen or v.data is not None:
            continue
        seen.add(id(v))
        if seq in v.shape:
            leaf = _leaf(v, seq, nodes)
            if isinstance(leaf, str):
                return leaf
            if all(leaf is not x for x in leaves):
                leaves.append(leaf)
            continue
        if v.producer is None:
            return f"the chunked region reads the run-time input %{v.name} {v.type}"
        nodes[id(v.producer)] = v.producer
        if v.producer.op not in SHAPE_OPS:
            todo.extend(v.producer.inputs)
    order = {id(n): i for i, n in enumerate(_graph_order(anchor, nodes))}
    ordered = sorted(nodes.values(), key=lambda n: order[id(n)])
    return Region(anchor, seq, leaves, ordered, _dependencies(ordered, leaves))


def _leaf(v: Value, seq: Sym, nodes: dict[int, Node]) -> Value | str:
    """v itself if it is [B, H, T, D], or the [B, H, T, D] tensor a Transpose laid out as v
    (the Transpose joins the region), else why not."""
    node = v.producer
    if not _heads_layout(v, seq) and node is not None and node.op == "Transpose" \
            and _heads_layout(node.inputs[0], seq):
        nodes[id(node)] = node
        v = node.inputs[0]
    if not _heads_layout(v, seq):
        return f"the chunked region reads %{v.name} {v.type}, not a [B, H, T, D] tensor " \
               f"with static H and D"
    return v


def _heads_layout(v: Value, seq: Sym) -> bool:
    return v.type.rank == 4 and v.shape[2] == seq and v.dtype in FLOATS \
        and all(isinstance(d, int) for d in (v.shape[1], v.shape[3]))


def _graph_order(anchor: Node, nodes: dict[int, Node]) -> list[Node]:
    """The region's nodes in an order that computes every value before its use (the graph's
    own order is one; the walk found them in reverse)."""
    done: set[int] = set()
    out: list[Node] = []
    stack = [(anchor, False)]
    while stack:
        node, expanded = stack.pop()
        if id(node) in done:
            continue
        if expanded:
            done.add(id(node))
            out.append(node)
            continue
        stack.append((node, True))
        if node.op in SHAPE_OPS:
            continue
        for x in node.inputs:
            if x is not None and x.producer is not None and id(x.producer) in nodes \
                    and id(x.producer) not in done:
                stack.append((x.producer, False))
    return out


def _dependencies(nodes: list[Node], leaves: list[Value]) -> dict[int, frozenset[int]]:
    """Which leaves each value of the region is computed from (a Shape reads none)."""
    deps = {id(x): frozenset([i]) for i, x in enumerate(leaves)}
    for node in nodes:
        found = frozenset() if node.op in SHAPE_OPS else frozenset().union(
            *(deps.get(id(x), frozenset()) for x in node.inputs if x is not None))
        deps.update({id(o): found for o in node.outputs})
    return deps


def _piecewise_use(region: Region) -> str | None:
    """Why the region's data path uses an op that sample agreement cannot vouch for, or None."""
    for node in region.nodes:
        reads = [bool(x is not None and region.depends.get(id(x))) for x in node.inputs]
        if not any(reads) or node.op in SHAPE_OPS:
            continue  # positions, masks, shapes: the trials cover them at every length tried
        if not _smooth_in_data(node, reads):
            sources = ", ".join(f"%{region.leaves[i].name}"
                                for i in sorted(_reads_all(node, region)))
            return f"the chunked region applies {node.op} ({node.where()}) to data from " \
                   f"{sources}: a piecewise op that a numerical match on sample inputs cannot " \
                   f"vouch for"
    return None


def _smooth_in_data(node: Node, reads: list[bool]) -> bool:
    """Whether the node is smooth in the inputs that carry data (reads[i]): Where only picks
    by a position mask, Gather only at positions, a Cast stays in floats."""
    if node.op not in DATA_OPS:
        return False
    if node.op in ("Cast", "CastLike"):
        return node.outputs[0].dtype in FLOATS
    if node.op == "Where":
        return not reads[0]
    if node.op in ("Gather", "GatherND"):
        return not reads[1]
    return True


def _reads_all(node: Node, region: Region) -> frozenset[int]:
    return frozenset().union(*(region.depends.get(id(x), frozenset())
                               for x in node.inputs if x is not None))


# -- roles ---------------------------------------------------------------------------------------

def decay_leaf(region: Region) -> int | str:
    """The index of the leaf the CumSums read (the log decay g), or why there is none."""
    cumsums = [n for n in region.nodes if n.op == "CumSum"]
    if not cumsums:
        return "the chunked region has no CumSum: no cumulative decay (not gated linear attention)"
    read = frozenset().union(*(region.depends.get(id(n.inputs[0]), frozenset()) for n in cumsums))
    if len(read) != 1:
        names = ", ".join(f"%{region.leaves[i].name}" for i in sorted(read)) or "no input"
        return f"the chunked region's CumSums read {names}; a decay is one tensor"
    return next(iter(read))


def candidate_roles(region: Region, g: int) -> list[Roles]:
    """(q, k, v) assignments of the other three leaves that the shapes allow."""
    gv = region.leaves[g]
    others = [x for i, x in enumerate(region.leaves) if i != g]
    found = []
    for q, k, v in itertools.permutations(others):
        dk = k.shape[3]
        if k.shape[:3] != gv.shape[:3] or gv.shape[3] not in (1, dk) or q.shape[3] != dk \
                or v.shape[:3] != k.shape[:3] or q.shape[0] != k.shape[0] \
                or q.shape[1] % k.shape[1]:
            continue
        found.append(Roles(q, k, v, gv))
    return found


# -- the trials ----------------------------------------------------------------------------------

@dataclass
class Trial:
    leaves: dict[int, np.ndarray]  # id(leaf) -> its random value
    output: np.ndarray


def run_region(region: Region, leaves: dict[int, np.ndarray], env: dict[str, int]) -> np.ndarray | str:
    """The anchor's output computed from the given leaf values."""
    return evaluate_from(region.anchor.outputs[0], env,
                         {x: leaves[id(x)] for x in region.leaves})


def trial_env(region: Region, n: int) -> dict[str, int]:
    symbols = {s for node in region.nodes for x in [*node.inputs, *node.outputs]
               if x is not None for s in x.type.symbols}
    return sizes(symbols, region.seq, n)


def random_leaves(region: Region, g: int, env: dict[str, int], seed: int) -> dict[int, np.ndarray]:
    """q, k, v ~ N(0, 0.5); g in [-0.05, -0.005]: gentle enough that the decay negated (the
    usual slip) stays finite over the longest trial, so that it can be named."""
    return draw(region.leaves, env, seed, lambda rng, shape, i: -rng.uniform(0.005, 0.05, shape)
                if i == g else 0.5 * rng.normal(size=shape))


def run_trials(region: Region, g: int) -> list[Trial] | str:
    trials = []
    for n in TRIAL_LENGTHS:
        env = trial_env(region, n)
        leaves = random_leaves(region, g, env, TRIAL_SEED + n)
        output = run_region(region, leaves, env)
        if isinstance(output, str):
            return f"the chunked region at T={n}: {output}"
        trials.append(Trial(leaves, output))
    return trials


def reference(roles: Roles, trial: Trial, negate_decay: bool = False) -> np.ndarray:
    """LinearAttention (gated, scale 1) on the trial's leaves in these roles: [B, Hq, T, dv]."""
    pack = lambda x: x.transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[2], -1)
    q, k, v, g = (trial.leaves[id(x)] for x in (roles.q, roles.k, roles.v, roles.g))
    attrs = {"q_num_heads": q.shape[1], "kv_num_heads": k.shape[1], "scale": 1.0,
             "update_rule": "gated"}
    out, _ = get_op("LinearAttention").ref(attrs, pack(q), pack(k), pack(v), None,
                                           pack(-g if negate_decay else g), None)
    return out.reshape(q.shape[0], q.shape[2], q.shape[1], -1).transpose(0, 2, 1, 3)


def own_key_term(roles: Roles, trial: Trial) -> np.ndarray:
    """What each query gets from its own key: (q_t . k_t) v_t per head ([B, Hq, T, dv])."""
    q, k, v = (trial.leaves[id(x)] for x in (roles.q, roles.k, roles.v))
    groups = q.shape[1] // k.shape[1]
    k, v = (np.repeat(x, groups, axis=1) for x in (k, v))
    return (q * k).sum(-1, keepdims=True) * v


def error(trials: list[Trial], want) -> float:
    """Max error relative to the largest reference value, over all trials."""
    return max(relative_error(trial.output, want(trial)) for trial in trials)


def causality(region: Region, g: int, trial: Trial) -> str | None:
    """Why not causal, if changing the inputs from position t on changes an output before t."""
    t = trial.output.shape[2] // 2
    env = trial_env(region, trial.output.shape[2])
    other = random_leaves(region, g, env, TRIAL_SEED + 1)
    changed = {k: np.concatenate([a[:, :, :t], other[k][:, :, t:]], axis=2)
               for k, a in trial.leaves.items()}
    moved = np.abs(run_region(region, changed, env)[:, :, :t] - trial.output[:, :, :t]).max()
    if moved > 1e-6 * max(np.abs(trial.output).max(), 1e-12):
        return f"is not causal: outputs before position {t} change with inputs after it"
    return None


# -- the match -----------------------------------------------------------------------------------

def classify(region: Region) -> Roles | str:
    why = _piecewise_use(region)
    if why:
        return why
    if len(region.leaves) != 4:
        names = ", ".join(f"%{x.name} {x.type}" for x in region.leaves)
        return f"the chunked region reads {len(region.leaves)} [B, H, T, D] tensors ({names}); " \
               f"gated linear attention reads 4 (q, k, v, g)"
    g = decay_leaf(region)
    if isinstance(g, str):
        return g
    candidates = candidate_roles(region, g)
    if not candidates:
        shapes = ", ".join(str(x.type) for x in region.leaves)
        return f"no assignment of the leaves ({shapes}) to q, k, v fits the decay " \
               f"%{region.leaves[g].name}: mismatched heads or head sizes"
    trials = run_trials(region, g)
    if isinstance(trials, str):
        return trials
    limit = tolerance(region.anchor.outputs[0].dtype)
    scored = sorted(((error(trials, lambda t, r=r: reference(r, t)), i, r)
                     for i, r in enumerate(candidates)), key=lambda e: e[:2])
    best_error, _, best = scored[0]
    if best_error <= limit:
        return best
    return _why_not(region, g, candidates, trials, best, best_error, limit)


def _why_not(region, g, candidates, trials, best: Roles, best_error, tolerance) -> str:
    """The near miss in words: negated decay, own key missing, not causal, or just the error."""
    name = lambda x: f"%{x.name}"
    for r in candidates:
        if error(trials, lambda t: reference(r, t, negate_decay=True)) <= tolerance:
            return f"the chunked region decays by exp(-{name(r.g)}), LinearAttention by " \
                   f"exp(decay): it computes gated linear attention with the decay's sign wrong"
        if error(trials, lambda t: reference(r, t) - own_key_term(r, t)) <= tolerance:
            return "each query misses its own key: the chunk mask is off by one (j < i where " \
                   "gated linear attention has j <= i)"
    acausal = causality(region, g, trials[-1])
    if acausal:
        return f"the chunked region {acausal}"
    return f"the chunked region computes something other than gated linear attention: closest " \
           f"q {name(best.q)}, k {name(best.k)}, v {name(best.v)}, decay {name(best.g)}, " \
           f"max relative error {best_error:.2g}"


class ChunkedLinearAttention(RewriteRule):
    """Gather/Slice restoring T from a chunked gated linear attention -> LinearAttention."""
    ops = ("Gather", "Slice")

    def matches(self, node: Node) -> bool:
        return node.op in self.ops and restored_length(node) is not None

    def match(self, node: Node) -> tuple[Region, Roles] | Miss:
        seq = restored_length(node)
        why = first_positions(node, seq)
        if why:
            return Miss(why)
        region = chunked_region(node, seq)
        if isinstance(region, str):
            return Miss(region)
        # the trials run once per region (the fixed-point rounds and explain ask again);
        # Values, unlike Nodes, take weak references
        key = tuple(id(n) for n in region.nodes) + tuple(id(x) for x in region.leaves)
        found = remember(node.outputs[0], key, lambda: classify(region))
        return Miss(found) if isinstance(found, str) else (region, found)

    def rewrite(self, graph: Graph, node: Node, match: tuple[Region, Roles]) -> None:
        _, roles = match
        parts = unrepeat_all({"q": roles.q, "k": roles.k, "v": roles.v, "g": roles.g},
                             ("k", "v", "g"))
        hq, hkv = parts["q"].shape[1], parts["k"].shape[1]
        name = node.name or "linear_attention"
        inputs = [pack_heads(graph, parts[r], f"{name}_{r}") for r in ("q", "k", "v")]
        inputs += [None, pack_heads(graph, parts["g"], f"{name}_g")]
        la = graph.add("LinearAttention", inputs, {
            "q_num_heads": hq, "kv_num_heads": hkv, "scale": 1.0, "update_rule": "gated"},
            name=name)
        graph.replace_uses(node.outputs[0], unpack_heads(graph, la.outputs[0], hq, f"{name}_o"))
