"""The Scan rule of fuse-linear-attention: a step-by-step recurrence -> LinearAttention.

    Scan(S0, x_1 .. x_M, captured constants) -> (S_T, o)      x_i: q, k, v [, decay] [, beta]
        -> LinearAttention(pack(q), pack(k), pack(v), S0 (omitted when zero), pack(decay),
                           pack(beta)) -> (unpack(o), S_T)

It covers ONNX's own function-expanded LinearAttention (a Scan over [T, B, H, D]) and bodies
people write for the same recurrences. The Scan is matched structurally only at its boundary:
one loop-carried state [B, H, dk, dv], 3 to 5 forward scan inputs whose slices are [B, H, D]
or [B, H], one scan output [B, Hq, dv], captured values known at compile time, and only
smooth and layout ops in the body (SMOOTH_OPS says why). Which recurrence the body computes is
then decided by running one step of it (the interpreter, on random inputs and a random state)
against LinearAttention's reference, for every update rule and every assignment of the scan
inputs to the roles query/key/value/decay/beta that the shapes allow (at most 4 * 120, usually
a handful); the output scale is fitted. Exporters and people write these bodies in many ways;
what a body computes is what matters.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from sbc.ir import Graph, Node, TensorType, Value
from sbc.ir.interpreter import evaluate
from sbc.ir.ops.common import normalize_axis
from sbc.ir.ops.control_flow import scan_layout
from sbc.ir.registry import get_op
from sbc.passes.attention_patterns import producer, upstream_symbols
from sbc.passes.base import Miss, RewriteRule
from sbc.passes.trials import FLOATS, draw, relative_error, remember, run_body, sizes, tolerance

ROLES = {"linear": ("q", "k", "v"), "gated": ("q", "k", "v", "g"),
         "delta": ("q", "k", "v", "beta"), "gated_delta": ("q", "k", "v", "g", "beta")}
ROLE_NAMES = {"q": "query", "k": "key", "v": "value", "g": "decay", "beta": "beta"}
TRIAL_SEEDS = (1, 2)  # two random steps: a chance agreement on both is out of the question
# relative: a fitted scale this close to a constant of the body is that one (f16 outputs are
# rounded to 3 digits, so their fit is only that good)
SCALE_MATCH = {"f16": 2e-3}
SCALE_MATCH_DEFAULT = 1e-5
# The ops a body may use. Agreeing with the reference on random inputs proves something only
# for smooth functions; a piecewise op (Clip, Relu, Where, Max, a comparison, an integer Cast)
# may agree on small samples and differ elsewhere, so a body with one is not fused.
SMOOTH_OPS = {"Add", "Sub", "Mul", "Div", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Pow",
              "Sigmoid", "Tanh", "Softplus", "Erf", "Sin", "Cos", "Softmax", "LogSoftmax",
              "MatMul", "Einsum", "Gemm", "ReduceSum", "ReduceMean", "Sum", "Mean"}
LAYOUT_OPS = {"Unsqueeze", "Squeeze", "Reshape", "Transpose", "Expand", "Concat", "Slice",
              "Gather", "Split", "Flatten", "Tile", "Identity", "Constant", "ConstantOfShape",
              "Shape", "Size", "Cast", "CastLike"}


@dataclass
class Boundary:
    """What the Scan looks like from outside: the pieces the rewrite needs."""
    state: Value  # S0 [B, H, dk, dv]
    sequences: list[Value]  # the scan inputs
    axes: list[int]  # their scan axes (normalized)
    out_axis: int  # the scan output's stacking axis (normalized)
    body: Graph
    captured: list[np.ndarray]
    heads: int
    dk: int
    dv: int
    q_heads: int  # of the scan output slice [B, Hq, dv] (or grouped [B, H, Hq / H, dv])
    out_slice: tuple  # the scan output slice's dims after B


@dataclass
class Recurrence:
    """What the body computes: a LinearAttention update rule with these inputs in these roles."""
    rule: str
    roles: dict[str, int]  # role -> index of the scan input
    scale: float  # 0.0: the default 1/sqrt(dk)
    error: float


# -- the boundary ------------------------------------------------------------------------------

def scan_boundary(node: Node) -> Boundary | str:
    """The Scan's boundary if it can be a linear attention, else why not."""
    layout = scan_layout(node.attrs, len(node.inputs))
    states, sequences, captured = layout.split(node.inputs)
    if layout.states != 1:
        return f"the Scan carries {layout.states} states; linear attention carries one " \
               f"[B, H, dk, dv]"
    state = states[0]
    if state.type.rank != 4 or not all(isinstance(d, int) for d in state.shape[1:]):
        return f"its state {state.type} is not [B, H, dk, dv] with static H, dk, dv"
    if layout.outputs != 1:
        return f"the Scan has {layout.outputs} scan outputs; linear attention has one (o_t)"
    if not 3 <= layout.scans <= 5:
        return f"the Scan has {layout.scans} scan inputs; linear attention reads 3 to 5 " \
               f"(q, k, v, decay, beta)"
    if any(layout.input_reverse) or any(layout.output_reverse):
        return "the Scan runs backwards over some of its inputs or outputs"
    body = node.attrs["body"]
    out = body.outputs[1].type
    grouped = out.rank == 4 and out.shape[1] == state.shape[1]  # GQA as [B, H_kv, groups, dv]
    if out.rank not in (3, 4) or out.rank == 4 and not grouped \
            or not all(isinstance(d, int) for d in out.shape[1:]) or out.shape[-1] != state.shape[3]:
        return f"its scan output slice {out} is not [B, Hq, dv] or [B, H, Hq / H, dv] with " \
               f"dv = {state.shape[3]}"
    unvouched = _piecewise_ops(body)
    if unvouched:
        return f"its body uses {', '.join(unvouched)}: piecewise ops that a numerical match " \
               f"on sample inputs cannot vouch for"
    constants = _captured_constants(captured)
    if isinstance(constants, str):
        return constants
    _, h, dk, dv = state.shape
    return Boundary(state, sequences,
                    [normalize_axis(a, v.type.rank) for a, v in zip(layout.input_axes, sequences)],
                    normalize_axis(layout.output_axes[0], out.rank + 1), body, constants, h, dk, dv,
                    int(np.prod(out.shape[1:-1])), tuple(out.shape[1:]))


def _piecewise_ops(body: Graph) -> list[str]:
    """The body's ops outside SMOOTH_OPS and LAYOUT_OPS (a Cast counts if to a non-float)."""
    found = {n.op for n in body.nodes if n.op not in SMOOTH_OPS | LAYOUT_OPS}
    found |= {f"{n.op} to {n.outputs[0].dtype}" for n in body.nodes
              if n.op in ("Cast", "CastLike") and n.outputs[0].dtype not in FLOATS}
    return sorted(found)


def _captured_constants(captured: list[Value]) -> list[np.ndarray] | str:
    """The captured values, which must be known at compile time and the same at any length
    (LinearAttention has no run-time scale or other side input)."""
    values = []
    for v in captured:
        symbols = upstream_symbols(v)
        at = [evaluate(v, sizes(symbols, other=n)) for n in (2, 3)]
        if at[0] is None:
            return f"its body reads %{v.name}, a run-time value from outside the Scan"
        if not np.array_equal(at[0], at[1]):
            return f"its body reads %{v.name}, which depends on the input sizes"
        values.append(at[0])
    return values


# -- which inputs can play which role ----------------------------------------------------------

def _fits(role: str, t: TensorType, b: Boundary) -> bool:
    """Whether a slice of type t can be this role's [B, ...] slice (batch checked apart)."""
    h, rest = b.heads, tuple(t.shape[1:])
    allowed = {"q": [(b.q_heads, b.dk), (h, b.q_heads // h, b.dk)], "k": [(h, b.dk)], "v": [(h, b.dv)],
               "g": [(h, b.dk), (h, 1), (h,)], "beta": [(h, 1), (1, 1), (h,), (1,)]}[role]
    if role == "q" and b.q_heads % h:
        return False
    return rest in allowed


def assignments(b: Boundary):
    """(rule, {role: scan input index}) for every rule and role assignment the shapes allow.
    Rules with fewer roles than scan inputs are tried too (an unused input is harmless)."""
    slices = b.body.inputs[1:1 + len(b.sequences)]
    batch = b.state.shape[0]
    usable = [i for i, s in enumerate(slices) if s.type.rank in (2, 3, 4) and s.shape[0] == batch]
    for rule, roles in ROLES.items():
        for chosen in itertools.permutations(usable, len(roles)):
            if all(_fits(r, slices[i].type, b) for r, i in zip(roles, chosen)):
                yield rule, dict(zip(roles, chosen))


def describe_shapes(b: Boundary) -> str:
    """Why no assignment fits: the slices next to what the roles need."""
    slices = ", ".join(str(s.type) for s in b.body.inputs[1:1 + len(b.sequences)])
    return f"no assignment of the scan input slices ({slices}) to query [B, {b.q_heads}, " \
           f"{b.dk}], key [B, {b.heads}, {b.dk}], value [B, {b.heads}, {b.dv}] (and decay, " \
           f"beta) fits the state {b.state.type} and output [B, {b.q_heads}, {b.dv}]: " \
           f"mismatched heads or head sizes"


# -- what the body computes --------------------------------------------------------------------

@dataclass
class Trial:
    """One random step: the body's inputs and what it returned."""
    state: np.ndarray
    slices: list[np.ndarray]
    next_state: np.ndarray
    output: np.ndarray


def run_trials(b: Boundary) -> list[Trial] | str:
    """Run one step of the body on random inputs, once per seed (or say why it cannot). The
    values are moderate, N(0, 0.5): good as q, k, v, a log decay or a beta alike (the roles
    are not known yet, so one array must serve all of them)."""
    stepped = b.body.inputs[:1 + len(b.sequences)]
    env = sizes({s for v in b.body.inputs for s in v.type.symbols})
    trials = []
    for seed in TRIAL_SEEDS:
        chosen = draw(stepped, env, seed)
        arrays = [chosen[id(v)] for v in stepped]
        feeds = {v.name: a for v, a in zip(b.body.inputs, arrays + b.captured)}
        result = run_body(b.body, feeds)
        if isinstance(result, str):
            return f"its body: {result}"
        state, output = (result[n] for n in b.body.output_names)
        trials.append(Trial(arrays[0], arrays[1:], state, output))
    return trials


def reference_step(rule: str, roles: dict[str, int], trial: Trial, b: Boundary,
                   negate_decay: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """LinearAttention's reference for this step (scale 1): (output [B, 1, Hq*dv], state)."""
    batch = trial.state.shape[0]
    packed = {r: trial.slices[i].reshape(batch, 1, -1) for r, i in roles.items()}
    if negate_decay and "g" in packed:
        packed["g"] = -packed["g"]
    attrs = {"q_num_heads": b.q_heads, "kv_num_heads": b.heads, "scale": 1.0,
             "update_rule": rule}
    return get_op("LinearAttention").ref(attrs, packed["q"], packed["k"], packed["v"],
                                         trial.state, packed.get("g"), packed.get("beta"))


def compare(rule: str, roles: dict[str, int], trials: list[Trial], b: Boundary,
            negate_decay: bool = False) -> tuple[float, float]:
    """(max relative error, fitted output scale) of the body against the reference."""
    got_s, want_s, got_o, want_o = [], [], [], []
    for trial in trials:
        out, state = reference_step(rule, roles, trial, b, negate_decay)
        if trial.next_state.shape != state.shape or trial.output.size != out.size:
            return np.inf, 0.0
        got_s.append(trial.next_state.ravel()), want_s.append(state.ravel())
        got_o.append(trial.output.ravel()), want_o.append(out.ravel())
    got_s, want_s, got_o, want_o = (np.concatenate(x).astype(np.float64)
                                    for x in (got_s, want_s, got_o, want_o))
    power = float(want_o @ want_o)
    scale = float(got_o @ want_o) / power if power > 0 else 0.0
    if scale == 0.0:
        return np.inf, 0.0
    error = max(relative_error(got_s, want_s), relative_error(got_o, scale * want_o))
    return error, scale


def classify(b: Boundary) -> Recurrence | str:
    """The recurrence the body computes, or why none (naming the closest candidate)."""
    candidates = list(assignments(b))
    if not candidates:
        return describe_shapes(b)
    trials = run_trials(b)
    if isinstance(trials, str):
        return trials
    limit = tolerance(b.body.outputs[1].dtype)
    best = None
    for rule, roles in candidates:
        error, scale = compare(rule, roles, trials, b)
        if best is None or error < best.error:
            best = Recurrence(rule, roles, scale, error)
    if best.error <= limit:
        best.scale = exact_scale(best.scale, b, SCALE_MATCH.get(b.body.outputs[1].dtype,
                                                                SCALE_MATCH_DEFAULT))
        return best
    return _why_not(best, candidates, trials, b, limit)


def _why_not(best: Recurrence, candidates, trials, b: Boundary, tolerance: float) -> str:
    names = [v.name for v in b.body.inputs[1:1 + len(b.sequences)]]
    for rule, roles in candidates:  # the usual slip: a decay of exp(-g) instead of exp(g)
        if "g" in roles and compare(rule, roles, trials, b, negate_decay=True)[0] <= tolerance:
            return f"the Scan body decays the state by exp(-{names[roles['g']]}), " \
                   f"LinearAttention by exp(decay): it computes {rule} with the decay negated"
    assigned = ", ".join(f"{ROLE_NAMES[r]} %{names[i]}" for r, i in best.roles.items())
    return f"the Scan body computes none of {'/'.join(ROLES)}: closest {best.rule} " \
           f"({assigned}), max error {best.error:.2g}{_unfit_note(b)}"


def _unfit_note(b: Boundary) -> str:
    """The slices no role can take (often the real reason: a head mismatch)."""
    slices = b.body.inputs[1:1 + len(b.sequences)]
    unfit = [s for s in slices if s.shape[:1] != b.state.shape[:1]
             or not any(_fits(r, s.type, b) for r in ROLE_NAMES)]
    if not unfit:
        return ""
    return "; " + ", ".join(f"%{s.name} {s.type}" for s in unfit) + \
           f" fits no role: mismatched heads or head size for the state {b.state.type}"


def exact_scale(fitted: float, b: Boundary, within: float) -> float:
    """The scale as the body spells it: 0.0 (the default 1/sqrt(dk)), or the scalar constant
    of the body (or its reciprocal) the fit lands on, else the fitted value itself."""
    if abs(fitted - 1.0 / np.sqrt(b.dk)) <= within / np.sqrt(b.dk):
        return 0.0
    for c in [1.0] + _scalar_constants(b):
        for candidate in (c, 1.0 / c if c else 0.0):
            if abs(fitted - candidate) <= within * abs(candidate):
                return float(candidate)
    return float(np.float32(fitted))


def _scalar_constants(b: Boundary) -> list[float]:
    arrays = [n.attrs["value"] for n in b.body.nodes if n.op == "Constant"]
    arrays += [p.data for p in b.body.params] + list(b.captured)
    return [float(np.asarray(a).reshape(-1)[0]) for a in arrays
            if a is not None and np.asarray(a).size == 1 and np.asarray(a).dtype.kind == "f"]


# -- the rule ----------------------------------------------------------------------------------

class ScanLinearAttention(RewriteRule):
    """Scan(S0, q, k, v [, decay] [, beta]) whose body is one linear-attention step."""
    ops = ("Scan",)

    def match(self, node: Node) -> tuple[Boundary, Recurrence] | Miss:
        b = scan_boundary(node)
        if isinstance(b, str):
            return Miss(b)
        # the body runs once per body and captured values (the fixed-point rounds and explain
        # ask again)
        found = remember(b.body, tuple(id(v) for v in node.inputs), lambda: classify(b))
        return Miss(found) if isinstance(found, str) else (b, found)

    def rewrite(self, graph: Graph, node: Node, match: tuple[Boundary, Recurrence]) -> None:
        b, rec = match
        name = node.name or "linear_attention"
        packed = {r: pack_sequence(graph, b.sequences[i], b.axes[i], f"{name}_{r}")
                  for r, i in rec.roles.items()}
        q_dtype = packed["q"].dtype
        past = None if is_zero(b.state) and b.state.dtype == q_dtype else b.state
        inputs = [packed["q"], packed["k"], packed["v"], past, packed.get("g"), packed.get("beta")]
        while inputs[-1] is None:
            inputs.pop()
        la = graph.add("LinearAttention", inputs, {
            "q_num_heads": b.q_heads, "kv_num_heads": b.heads, "update_rule": rec.rule,
            "scale": rec.scale}, name=name)
        output, state = la.outputs
        final_state, stacked = node.outputs
        graph.replace_uses(stacked, unpack_output(graph, output, b, stacked.dtype, name))
        graph.replace_uses(final_state, cast_to(graph, state, final_state.dtype, f"{name}_state"))


# -- layout ------------------------------------------------------------------------------------

def pack_sequence(graph: Graph, x: Value, axis: int, name: str) -> Value:
    """A scan input (slice [B, H, D], [B, H, G, D] or [B, H], T on `axis`) -> packed
    [B, T, H*D] / [B, T, H*G*D] / [B, T, H]."""
    rank = x.type.rank
    full = [i if i < axis else i + 1 for i in range(rank - 1)]  # slice dim -> axis of x
    perm = [full[0], axis] + full[1:]
    if perm != list(range(rank)):
        x = graph.add1("Transpose", x, name=f"{name}_bt", perm=perm)
    if rank >= 4:
        x = graph.add1("Reshape", x, _shape(graph, [0, 0, -1], name), name=f"{name}_packed")
    return x


def unpack_output(graph: Graph, o: Value, b: Boundary, dtype: str, name: str) -> Value:
    """[B, T, Hq*dv] -> the Scan's stacked output: its slice [B, ...] with T inserted at out_axis."""
    x = graph.add1("Reshape", o, _shape(graph, [0, 0, *b.out_slice], f"{name}_o"), name=f"{name}_o_bt")
    rank = len(b.out_slice) + 2
    source = [0] + list(range(2, rank))  # slice dim -> axis of [B, T, ...]
    perm = [1 if p == b.out_axis else source[p if p < b.out_axis else p - 1] for p in range(rank)]
    if perm != list(range(rank)):
        x = graph.add1("Transpose", x, name=f"{name}_o_stacked", perm=perm)
    return cast_to(graph, x, dtype, f"{name}_o")


def cast_to(graph: Graph, v: Value, dtype: str, name: str) -> Value:
    return v if v.dtype == dtype else graph.add1("Cast", v, name=f"{name}_cast", to=dtype)


def _shape(graph: Graph, dims: list[int], name: str) -> Value:
    return graph.add1("Constant", name=f"{name}_shape", value=np.array(dims, np.int64))


def is_zero(v: Value) -> bool:
    """Whether v is all zeros by construction (so LinearAttention needs no past_state)."""
    while (node := producer(v, "Cast", "Identity")) is not None:
        v = node.inputs[0]
    if v.data is not None:
        return v.data.dtype != object and not np.any(v.data)
    node = producer(v, "ConstantOfShape", "Constant")
    if node is None:
        return False
    return node.attrs["value"] is None or not np.any(node.attrs["value"])  # (default: 0)

