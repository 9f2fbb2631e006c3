"""recognise-mixers: a token-mixing region, however it is spelled -> the op it computes.

    region(q, k, v [, g]) -> o           (mixer_regions.py cuts it out by dataflow)
        -> LinearAttention(update_rule linear | gated, decay per key dim or per head, scale)
        -> LinearAttention(update_rule gated, decay = a constant log gamma per head)
           (RetNet's retention: the scores multiplied by gamma_h^(i - j))
        -> SlidingWindowAttention(window, scale)
        -> SlidingWindowAttention(window = max_context, full = 1)     (full causal attention:
           a KV cache of max_context tokens; longer contexts are refused at run time)

The syntactic rules of fuse-linear-attention and fuse-sliding-window-attention run first (they
are fast); this pass takes whatever they left, whatever the spelling, and decides by running
it. The region is evaluated on random boundary values at T = TRIAL_T. Its output is linear in
one boundary value (v): feeding v one-hot over positions reads the mixing weights
W [B, Hq, T, T] directly. W's zero pattern is the mask (causal, a band of w keys, or neither).
Rows that are positive and sum to 1 make a softmax, whose scale is fitted from log W; other
weights are fitted as s * q k^T (linear), s * gamma_h^(i - j) q k^T (decayed) or
s * <q_i e^(b_i - b_j), k_j> with b = cumsum g (gated). A fit is then checked on fresh values of
mixed sign, so a piecewise op inside the region cannot pass by chance. Masks that are
compile-time values are read at 257 and 4097 positions, to find windows wider than the trial
(a linear kind must have none). The trials run on the shared engine in trials.py. The heads follow the boundary layouts: query
head h reads KV head h // (Hq / Hkv). A region that matches nothing stays as it is, and
`explain` says what it came closest to.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from sbc.ir import Graph, Node, Value, numpy_dtype
from sbc.ir.dims import evaluate as evaluate_dim
from sbc.ir.interpreter import evaluate
from sbc.passes.attention_patterns import MASK_SIZES
from sbc.passes.base import Pass, PassResult, register_pass
from sbc.passes.dce import DeadCodeElimination
from sbc.passes.mixer_regions import COPY_OPS, Analysis, Layout, Region, layout_of, seq_axes
from sbc.passes.to_recurrent import ELEMENTWISE
from sbc.passes.trials import FLOATS, TOLERANCE, draw, evaluate_from, normal, relative_error, sizes

TRIAL_T = 17  # positions in a trial: windows up to 16 show directly, wider ones via the masks
OTHER_SIZE = 2  # every other symbolic dim (the batch) in a trial
MAX_MASK_ELEMENTS = 1 << 27  # masks are read at the larger MASK_SIZES only up to this size
UNDERFLOW = 1e-30  # a weight this much below a mask's largest is float underflow's neighbour


@dataclass
class Mixer:
    kind: str  # "softmax", "linear" or "gated"
    roles: dict[str, Value]  # q, k, v [, g]
    layouts: dict[str, Layout]
    window: int  # keys a query sees (itself included); 0: every earlier key
    scale: float
    error: float
    strides: dict[str, int] = field(default_factory=dict)  # read every n-th head (default 1)
    decay: np.ndarray | None = None  # "decayed": log gamma per query head, then per KV head
    repeat_kv: int = 1  # k and v copied to this many query heads each (decays differ in a group)


@dataclass
class Trial:
    """One seeded evaluation setting: symbol sizes and a random array per boundary value."""
    env: dict[str, int]
    arrays: dict[int, np.ndarray]  # id(value) -> array in the value's layout


# -- identification ----------------------------------------------------------------------------

def identify(region: Region) -> Mixer | str:
    """What the region computes, or why none of the references fits (closest first)."""
    out = layout_of(region.output, region.seq)
    if isinstance(out, str):
        return f"its output {out}"
    if region.output.dtype not in FLOATS:
        return f"its output is {region.output.type}"
    if any(x.dtype not in FLOATS for x in region.inputs):
        x = next(x for x in region.inputs if x.dtype not in FLOATS)
        return f"it reads %{x.name} {x.type}, a run-time value that is not a float " \
               "(masks must be compile-time values)"
    if len(region.inputs) not in (3, 4):
        return f"it reads {len(region.inputs)} position-wise values, not q, k, v [, g]: " \
               + ", ".join(f"%{x.name}" for x in region.inputs)
    why = _check_structural_bands(region)
    if why:
        return why
    best = (0, "no boundary value is carried linearly to the output (no v)")
    for v in region.inputs:
        depth, found = _with_value(region, out, v)
        if isinstance(found, Mixer) and found.error <= TOLERANCE[region.output.dtype]:
            return found
        best = max(best, (depth, found), key=_rank)
    found = best[1]
    return found if isinstance(found, str) else \
        f"closest: {_describe(found)}, off by {found.error:.2g} (relative)"


def _rank(attempt) -> tuple:
    """How far an attempt got (a fit beats a mask that is no band, which beats a shape that
    rules the value out), then how close its fit was (a fit that could not be made is last)."""
    depth, found = attempt
    return depth, -found.error if isinstance(found, Mixer) else -np.inf


def _with_value(region: Region, out: Layout, v: Value) -> tuple[int, Mixer | str]:
    """(how far it got, the best fit or why none) with `v` as the value input."""
    v_layout = layout_of(v, region.seq)
    if isinstance(v_layout, str) or v_layout.width != out.width or out.num_heads % v_layout.num_heads:
        return 0, f"%{v.name} cannot be the value: {region.output.type} is not made of its rows"
    trial = _trial(region, seed=1, mixed_sign=False)
    weights = _weights(region, out, v, v_layout, trial)
    if isinstance(weights, str):
        return 1, weights
    window = _window(region, weights, trial)
    if isinstance(window, str):
        return 2, window
    others = [x for x in region.inputs if x is not v]
    best = (2, "no assignment of q, k (and g) fits its shapes")
    for kind in _kinds(weights, len(others)):
        for roles in _assignments(kind, others, v, region.seq):
            found = _fit(kind, roles, region, weights, window, trial)
            if isinstance(found, Mixer) and found.error <= TOLERANCE[region.output.dtype]:
                confirmed = _confirm(found, region, out)
                if isinstance(confirmed, str):
                    return 3, confirmed
                if confirmed.kind != "softmax" and confirmed.window:
                    return 3, f"{_describe(confirmed)}: LinearAttention keeps every earlier " \
                              f"key in its state, it has no window"
                return 3, _per_kv_head(_unrepeat_heads(confirmed, region))
            best = max(best, (3, found), key=_rank)
    return best


def _trial(region: Region, seed: int, mixed_sign: bool) -> Trial:
    """Random boundary values: in (-1, 0) for the fits (stable exponentials of a decay), of
    mixed sign for the confirmation (so relu or max inside the region cannot agree)."""
    env = sizes(region.symbols, region.seq, TRIAL_T, OTHER_SIZE)
    sample = normal(0.6) if mixed_sign else lambda rng, shape, _: -rng.random(shape)
    return Trial(env, draw(region.inputs, env, seed, sample))


def _size(d, env) -> int:
    return d if isinstance(d, int) else evaluate_dim(d, env)


def _run(region: Region, trial: Trial, replace: dict[int, np.ndarray] | None = None) -> np.ndarray | str:
    arrays = {**trial.arrays, **(replace or {})}
    return evaluate_from(region.output, trial.env, {x: arrays[id(x)] for x in region.inputs})


def _weights(region: Region, out: Layout, v: Value, v_layout: Layout,
             trial: Trial) -> np.ndarray | str:
    """W [B, Hq, T, T] read by feeding v one-hot positions (a block of D positions per run);
    checked against the output on the trial's own v (the output must be W v)."""
    t = TRIAL_T
    b = trial.arrays[id(v)].shape[v_layout.batch]
    groups = out.num_heads // v_layout.num_heads
    weights = np.zeros((b, out.num_heads, t, t))
    for start in range(0, t, out.width):
        onehot = np.zeros((b, v_layout.num_heads, t, out.width))
        for d in range(min(out.width, t - start)):
            onehot[:, :, start + d, d] = 1.0
        probe = v_layout.from_canonical(onehot, trial.arrays[id(v)].dtype)
        o = _run(region, trial, {id(v): probe})
        if isinstance(o, str):
            return o
        block = out.canonical(o)[..., : min(out.width, t - start)]
        weights[..., start:start + block.shape[-1]] = block
    o = _run(region, trial)
    if isinstance(o, str):
        return o
    v_rep = np.repeat(v_layout.canonical(trial.arrays[id(v)]), groups, axis=1)
    if not np.all(np.isfinite(weights)) or relative_error(out.canonical(o), weights @ v_rep) > 1e-3:
        return f"the output is not a mixture of the rows of %{v.name}"
    return weights


def _window(region: Region, weights: np.ndarray, trial: Trial) -> int | str:
    """The keys a query sees, from W's zero pattern (and the masks at larger T): 0 for every
    earlier key, w for itself and the w - 1 before it."""
    allowed = weights != 0
    if not np.all(allowed == allowed[:1, :1]):
        return "the mask differs between heads or batch rows"
    allowed = allowed[0, 0]
    width = _band_width(allowed)
    if isinstance(width, str):
        return width
    if width < TRIAL_T:
        return width
    key = (tuple(id(m) for m in region.masks), allowed.tobytes())  # layers share their masks
    if key not in region.memo:
        region.memo[key] = _wider_window(region, allowed, trial)
    return region.memo[key]


def _band_width(allowed: np.ndarray) -> int | str:
    n = allowed.shape[0]
    width = int(allowed[-1].sum())
    band = _band(n, width)
    if not np.array_equal(allowed, band):
        i, j = np.argwhere(allowed != band)[0]
        kind = "allowed" if allowed[i, j] else "hidden"
        return f"the mask is not a causal band: at T={n}, query {i} / key {j} is {kind}"
    return width


def _wider_window(region: Region, allowed: np.ndarray, trial: Trial) -> int | str:
    """Band width read from the compile-time masks at MASK_SIZES beyond the trial. Each mask
    selects keys either by one value where they are seen (a bool band, 0 in an additive mask,
    1 in a multiplied one) or, weighting them (a decay matrix gamma^(i-j) per head), by not
    being the one value where they are hidden; their conjunction must explain the trial's
    pattern, and then tells the pattern at any length."""
    selectors = []
    for mask in region.masks:
        value = _pairs(mask, region, trial.env)
        if value is None:
            return f"the mask %{mask.name} is not [T, T] over queries and keys"
        selector = _selector(value, allowed)
        if isinstance(selector, str):
            return f"%{mask.name} {selector}"
        if selector is not None:
            selectors.append((mask, selector))
    if not selectors:
        return 0
    if not np.array_equal(_seen(selectors, region, trial.env), allowed):
        return "the compile-time masks do not explain which keys a query sees"
    for n in (n for n in MASK_SIZES if n > TRIAL_T):
        env = {**{s: 1 for s in trial.env}, **{s: n for s in region.seq.symbols}}
        if any(_elements(m, env) > MAX_MASK_ELEMENTS for m, _ in selectors):
            break  # a per-head mask this long would not fit in memory: trust the last size
        big = _seen(selectors, region, env)
        if isinstance(big, str):
            return big
        width = _band_width(big)
        if isinstance(width, str) or width < n:
            return width
    return 0


def _selector(value: np.ndarray, allowed: np.ndarray) -> tuple[str, float] | str | None:
    """How a mask [N, T, T] selects the seen keys: ("==", a), ("!=", z), None when it is the
    same everywhere (a zeros_like: selects nothing), or why it is no mask."""
    seen, hidden = np.unique(value[:, allowed]), np.unique(value[:, ~allowed])
    if seen.size == 1 and not np.isin(seen, hidden).any():
        return "==", seen[0]
    if hidden.size == 1 and not np.isin(hidden, seen).any():
        return "!=", hidden[0]
    if seen.size == 1 and hidden.size <= 1:
        return None
    return "takes several values where keys are seen and where they are hidden"


def _seen(selectors, region: Region, env: dict[str, int]) -> np.ndarray | str:
    """Where every mask lets a query see a key ([T, T]), the same for every head and row.
    A weighting mask that decays to exactly 0 far from the diagonal (float underflow) still
    sees those keys: their weight is below what any float sum can hold."""
    patterns = []
    for mask, (how, a) in selectors:
        value = _pairs(mask, region, env)
        if value is None:
            return f"the mask %{mask.name} is not [T, T] over queries and keys"
        seen = value == a if how == "==" else value != a
        if how == "!=" and a == 0:
            seen = seen | _faded(value)
        if not np.all(seen == seen[:1]):
            return f"the mask %{mask.name} hides different keys in different heads or rows"
        patterns.append(seen[0])
    return np.logical_and.reduce(patterns)


def _faded(value: np.ndarray) -> np.ndarray:
    """Causal zeros of a weighting mask that are underflow, not a band edge: in their row, the
    entry nearer the diagonal than the last zero is already a subnormal-sized weight."""
    n = value.shape[-1]
    causal = np.tri(n, dtype=bool)
    zero = (value == 0) & causal
    last_zero = np.where(zero.any(-1), n - 1 - np.argmax(zero[..., ::-1], -1), -1)  # [N, T]
    rows = np.arange(n)
    edge = np.minimum(last_zero + 1, n - 1)
    neighbour = np.take_along_axis(value, edge[..., None], -1)[..., 0]
    scale = np.maximum(np.abs(value).max(axis=(-1, -2), keepdims=True)[..., 0], 1e-300)
    underflow = (last_zero >= 0) & (last_zero < rows) & (np.abs(neighbour) < UNDERFLOW * scale)
    return causal & (np.arange(n) <= np.where(underflow, last_zero, -1)[..., None])


def _elements(mask: Value, env: dict[str, int]) -> int:
    return math.prod(_size(d, env) for d in mask.shape)


def _pairs(mask: Value, region: Region, env: dict[str, int]) -> np.ndarray | None:
    """A compile-time pairwise value as [N, T, T] (query, key; N its other axes)."""
    with np.errstate(all="ignore"):  # gamma^(i - j) overflows where j > i, masked out later
        value = evaluate(mask, env)
    if value is None:
        return None
    i, j = seq_axes(mask, region.seq)[:2]
    value = np.moveaxis(np.broadcast_to(value, value.shape), (i, j), (-2, -1))
    return value.reshape(-1, *value.shape[-2:])


def _check_structural_bands(region: Region) -> str | None:
    """A Trilu on run-time values draws a band no compile-time mask shows: trust it only when
    the trial is long enough to see it."""
    for node in region.nodes:
        if node.op == "Trilu" and len(node.inputs) > 1 and node.inputs[1] is not None:
            k = node.inputs[1].data
            if k is None or abs(int(np.asarray(k).reshape(-1)[0])) >= TRIAL_T - 1:
                return f"{node.where()} draws a band the trial cannot see"
    return None


def _kinds(weights: np.ndarray, others: int) -> list[str]:
    stochastic = np.all(weights >= 0) and np.allclose(weights.sum(-1), 1.0, atol=1e-4)
    if others == 2:
        return ["softmax"] if stochastic else ["linear", "decayed"]
    return ["gated"] if others == 3 and not stochastic else []


def _assignments(kind: str, others: list[Value], v: Value, seq) -> list[tuple[dict, dict]]:
    """(roles, layouts) for each way of giving the other boundary values the roles of `kind`
    that their shapes allow."""
    names = ("q", "k") if kind != "gated" else ("q", "k", "g")
    found = []
    for order in itertools.permutations(others):
        roles = dict(zip(names, order)) | {"v": v}
        layouts = _role_layouts(roles, seq)
        if layouts is not None:
            found.append((roles, layouts))
    return found


def _role_layouts(roles: dict, seq) -> dict | None:
    """Layouts for an assignment, or None if the shapes rule it out."""
    layouts = {r: layout_of(x, seq) for r, x in roles.items()}
    if "g" in roles and not isinstance(layouts["g"], str) and isinstance(layouts["k"], Layout) \
            and layouts["g"].width not in (1, layouts["k"].width):
        layouts["g"] = layout_of(roles["g"], seq, feature=False)  # [B, H, T]: one per head
    if any(isinstance(x, str) for x in layouts.values()):
        return None
    q, k, v = layouts["q"], layouts["k"], layouts["v"]
    if q.width != k.width or k.num_heads != v.num_heads or q.num_heads % k.num_heads:
        return None
    if "g" in layouts and (layouts["g"].num_heads != k.num_heads
                           or layouts["g"].width not in (1, k.width)):
        return None
    return layouts


def _fit(kind: str, assignment, region: Region, weights: np.ndarray, window: int,
         trial: Trial) -> Mixer | str:
    roles, layouts = assignment
    canon = {r: layouts[r].canonical(trial.arrays[id(x)]) for r, x in roles.items()}
    allowed = _band(TRIAL_T, window)
    decay = _fit_decay(weights, _scores("linear", canon, weights.shape[1]), allowed) \
        if kind == "decayed" else None
    if isinstance(decay, str):
        return decay
    scores = _scores(kind, canon, weights.shape[1], decay)
    if kind == "softmax":
        scale = _fit_softmax_scale(weights, scores, allowed)
        reference = _softmax(scale * scores, allowed)
    else:
        masked = np.where(allowed, scores, 0.0)
        scale = float(np.sum(weights * masked) / max(np.sum(masked * masked), 1e-300))
        reference = scale * masked
    return Mixer(kind, roles, layouts, window, scale, relative_error(weights, reference), decay=decay)


def _scores(kind: str, canon: dict, q_heads: int, decay: np.ndarray | None = None) -> np.ndarray:
    """Unscaled q.k over pairs [B, Hq, T, T] (with the decay e^(b_i - b_j) when gated, or
    gamma_h^(i - j) per head when decayed)."""
    groups = q_heads // canon["k"].shape[1]
    k = np.repeat(canon["k"], groups, axis=1)
    if kind == "decayed":
        return (canon["q"] @ k.swapaxes(-1, -2)) * _decay_matrix(decay, canon["q"].shape[2])
    if kind != "gated":
        return canon["q"] @ k.swapaxes(-1, -2)
    b = np.repeat(np.cumsum(canon["g"], axis=2), groups, axis=1)  # [B, Hq, T, dk or 1]
    causal = _band(b.shape[2], 0)[:, :, None]  # the upper triangle would overflow unmasked
    decay = np.exp(np.where(causal, b[:, :, :, None, :] - b[:, :, None, :, :], 0.0))
    return np.einsum("bhic,bhjc,bhijc->bhij", canon["q"], k, decay)


def _decay_matrix(log_gamma: np.ndarray, n: int) -> np.ndarray:
    """[Hq, n, n]: gamma_h^(i - j) for j <= i, else 0."""
    distance = np.arange(n)[:, None] - np.arange(n)[None, :]
    causal = distance >= 0
    return np.where(causal, np.exp(log_gamma[:, None, None] * np.where(causal, distance, 0)), 0.0)


def _fit_decay(weights, scores, allowed) -> np.ndarray | str:
    """log gamma_h in W_ij = s * gamma_h^(i - j) * q_i.k_j (RetNet's constant per-head decay),
    least squares on log(W / q.k) over the seen pairs whose q.k is not near 0."""
    n = allowed.shape[0]
    distance = np.broadcast_to(np.arange(n)[:, None] - np.arange(n)[None, :], weights.shape)
    usable = allowed & (np.abs(scores) > 1e-3 * np.abs(scores).max())
    ratio = weights[usable] / scores[usable]
    if ratio.size == 0 or np.any(ratio <= 0):
        return "the weights are not q.k times a positive decay"
    heads = np.broadcast_to(np.arange(weights.shape[1])[:, None, None], weights.shape)[usable]
    log_gamma = np.zeros(weights.shape[1])
    for h in range(weights.shape[1]):
        x, y = distance[usable][heads == h], np.log(ratio[heads == h])
        if np.ptp(x) > 0:
            log_gamma[h] = np.polyfit(x, y, 1)[0]
    return log_gamma


def _fit_softmax_scale(weights, scores, allowed) -> float:
    """s in log W_ij = s * S_ij + c_i, least squares over the seen pairs of each row."""
    rows = allowed.sum(-1, keepdims=True)
    logw = np.log(np.where(allowed, np.maximum(weights, 1e-300), 1.0))
    y = np.where(allowed, logw - (logw * allowed).sum(-1, keepdims=True) / rows, 0.0)
    x = np.where(allowed, scores - (scores * allowed).sum(-1, keepdims=True) / rows, 0.0)
    return float(np.sum(x * y) / max(np.sum(x * x), 1e-300))


def _softmax(scores, allowed) -> np.ndarray:
    s = np.where(allowed, scores, -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _band(n: int, window: int) -> np.ndarray:
    """[n, n]: query i sees key j when 0 <= i - j < window (window 0: every earlier key)."""
    causal = np.tri(n, dtype=bool)
    return causal & ~np.tri(n, k=-window, dtype=bool) if 0 < window < n else causal


def _confirm(mixer: Mixer, region: Region, out: Layout) -> Mixer | str:
    """The fitted op against the region on fresh values of mixed sign (the whole output)."""
    trial = _trial(region, seed=2, mixed_sign=True)
    canon = {r: mixer.layouts[r].canonical(trial.arrays[id(x)]) for r, x in mixer.roles.items()}
    allowed = _band(TRIAL_T, mixer.window)
    scores = mixer.scale * _scores(mixer.kind, canon, out.num_heads, mixer.decay)
    weights = _softmax(scores, allowed) if mixer.kind == "softmax" else np.where(allowed, scores, 0)
    v = np.repeat(canon["v"], out.num_heads // canon["v"].shape[1], axis=1)
    o = _run(region, trial)
    if isinstance(o, str):
        return o
    error = relative_error(out.canonical(o), weights @ v)
    if error > TOLERANCE[region.output.dtype]:
        return f"{_describe(mixer)} fits positive values but not values of mixed sign " \
               f"(off by {error:.2g}): a piecewise op inside?"
    return mixer


def _unrepeat_heads(m: Mixer, region: Region) -> Mixer:
    """k, v (and g) read from the fewest heads they are copies of, when all three are copies
    of that many: the op then keeps one state per KV head, not one per query head."""
    sources = {r: _head_sources(m.roles[r], m.layouts[r], region) for r in m.roles if r != "q"}
    for heads in sorted({h for found in sources.values() for h in found}):
        if heads < m.layouts["k"].num_heads and all(heads in found for found in sources.values()):
            for r, found in sources.items():
                m.roles[r], m.layouts[r], m.strides[r] = found[heads]
            break
    return m


def _per_kv_head(m: Mixer) -> Mixer:
    """A constant decay becomes LinearAttention's per KV head decay. Query heads that share a
    KV head but decay differently need states of their own: k and v are then copied to every
    query head."""
    if m.decay is None:
        return m
    kv_heads = m.layouts["k"].num_heads // m.strides.get("k", 1)
    grouped = m.decay.reshape(kv_heads, -1)
    if np.ptp(grouped, axis=1).max() <= 1e-6 * max(np.abs(grouped).max(), 1e-30):
        m.decay = grouped[:, 0]
    else:
        m.repeat_kv = grouped.shape[1]
    return m


def _head_sources(x: Value, layout: Layout, region: Region) -> dict[int, tuple]:
    """Heads count H -> (value, layout, stride) to read x's distinct heads from, x's head h
    being their head h // G: a value x copies (through COPY_OPS), or x itself read at every
    G-th head when scalar arithmetic on the way (SDPA's sqrt(scale) on a repeated key) keeps
    the copies alike. Each is checked by evaluating x from random values of the source."""
    found, todo = {}, [x]
    trial = _trial(region, seed=3, mixed_sign=True)
    while todo and (y := _head_preserving_input(todo.pop())) is not None:
        todo.append(y)
        y_layout = layout_of(y, region.seq, feature=layout.feature is not None)
        if isinstance(y_layout, str) or y_layout.width != layout.width \
                or layout.num_heads % y_layout.num_heads or y_layout.num_heads in found:
            continue
        x_heads = _heads_from(x, layout, y, trial)
        if x_heads is None:
            continue
        groups = layout.num_heads // y_layout.num_heads
        alike = np.array_equal(x_heads, np.repeat(x_heads[:, ::groups], groups, axis=1))
        if np.array_equal(x_heads, np.repeat(y_layout.canonical(trial.arrays[id(y)]), groups, axis=1)):
            found[y_layout.num_heads] = (y, y_layout, 1)
        elif alike:
            found[y_layout.num_heads] = (x, layout, groups)
    return found


def _head_preserving_input(x: Value) -> Value | None:
    """The input x is made from by copying heads or by arithmetic with scalar constants."""
    node = x.producer
    if node is None or not node.inputs or node.inputs[0] is None:
        return None
    if node.op in COPY_OPS:
        return node.inputs[0]
    variable = [v for v in node.inputs if v is not None and not _scalar_constant(v)]
    if node.op in ELEMENTWISE and len(variable) == 1:
        return variable[0]
    return None


def _scalar_constant(v: Value) -> bool:
    return v.data is not None and v.data.dtype != object and v.data.size == 1


def _heads_from(x: Value, layout: Layout, y: Value, trial: Trial) -> np.ndarray | None:
    """x canonical [B, H, T, D] computed from a random y (stored in the trial), or None."""
    trial.arrays.update(draw([y], trial.env, seed=4, sample=normal(1.0)))
    x_array = evaluate_from(x, trial.env, {y: trial.arrays[id(y)]})
    return None if isinstance(x_array, str) else layout.canonical(x_array)


def _describe(m: Mixer) -> str:
    names = ", ".join(f"{r}=%{x.name}" for r, x in m.roles.items())
    what = {"softmax": "softmax attention", "linear": "linear attention",
            "gated": "gated linear attention", "decayed": "linear attention with a constant "
            "decay per head"}[m.kind]
    reach = f"window {m.window}" if m.window else "causal"
    return f"{what} ({reach}, scale {m.scale:.4g}; {names})"


# -- rewrite ---------------------------------------------------------------------------------

def rewrite(graph: Graph, region: Region, m: Mixer, max_context: int) -> None:
    out = layout_of(region.output, region.seq)
    name = region.root.name or "mixer"
    packed = {r: _pack(graph, x, m.layouts[r], m.strides.get(r, 1), f"{name}_{r}")
              for r, x in m.roles.items()}
    hq, hkv = out.num_heads, m.layouts["k"].num_heads // m.strides.get("k", 1) * m.repeat_kv
    for r in ("k", "v") if m.repeat_kv > 1 else ():
        packed[r] = _repeat_heads(graph, packed[r], m.layouts[r].width, m.repeat_kv, f"{name}_{r}")
    if m.kind == "softmax":  # full causal attention: a window as wide as the KV cache
        op = graph.add("SlidingWindowAttention", [packed["q"], packed["k"], packed["v"]],
                       {"q_num_heads": hq, "kv_num_heads": hkv, "window": m.window or max_context,
                        "scale": _snap(m.scale, m.layouts["q"].width, exact_default=False),
                        "full": int(not m.window)}, name=name)
    else:
        if m.kind == "decayed":
            packed["g"] = _constant_decay(graph, packed["k"], m.decay, f"{name}_g")
        gated = "g" in packed
        inputs = [packed["q"], packed["k"], packed["v"]] + ([None, packed["g"]] if gated else [])
        op = graph.add("LinearAttention", inputs,
                       {"q_num_heads": hq, "kv_num_heads": hkv,
                        "update_rule": "gated" if gated else "linear",
                        "scale": _snap(m.scale, m.layouts["q"].width, exact_default=True)},
                       name=name)
    graph.replace_uses(region.output, _unpack(graph, op.outputs[0], out, f"{name}_o"))


def _snap(scale: float, head_size: int, exact_default: bool) -> float:
    """1/sqrt(d) when the fit is that up to float32 rounding (0.0 says so to LinearAttention);
    else the fitted value rounded as float32 would hold it."""
    if abs(scale * math.sqrt(head_size) - 1.0) <= 1e-5:
        return 0.0 if exact_default else 1.0 / math.sqrt(head_size)
    return float(np.float32(scale))


def _pack(graph: Graph, x: Value, layout: Layout, stride: int, name: str) -> Value:
    """x -> [B, T, H*D], reading every `stride`-th head."""
    order = layout.packed_order
    if order != list(range(len(order))):
        x = graph.add1("Transpose", x, name=f"{name}_bt", perm=order)
    if stride > 1:
        grouped = [0, 0, layout.num_heads // stride, stride] + ([layout.width] if layout.feature is not None else [])
        x = graph.add1("Reshape", x, _const(graph, grouped, f"{name}_groups"), name=f"{name}_groups")
        x = graph.add1("Gather", x, _const(graph, 0, f"{name}_first"), name=f"{name}_first", axis=3)
    return graph.add1("Reshape", x, _const(graph, [0, 0, -1], name), name=f"{name}_packed")


def _repeat_heads(graph: Graph, x: Value, width: int, copies: int, name: str) -> Value:
    """[B, T, H*D] -> [B, T, H*copies*D]: each head repeated `copies` times in place."""
    x = graph.add1("Reshape", x, _const(graph, [0, 0, -1, 1, width], f"{name}_one"), name=f"{name}_one")
    x = graph.add1("Tile", x, _const(graph, [1, 1, 1, copies, 1], f"{name}_copies"), name=f"{name}_copies")
    return graph.add1("Reshape", x, _const(graph, [0, 0, -1], f"{name}_repeated"), name=f"{name}_repeated")


def _constant_decay(graph: Graph, k: Value, log_gamma: np.ndarray, name: str) -> Value:
    """The log decay per KV head [Hkv], broadcast to [B, T, Hkv] like the packed key's rows."""
    rows = graph.add1("Shape", k, name=f"{name}_rows", start=0, end=2)
    heads = _const(graph, [len(log_gamma)], f"{name}_heads")
    shape = graph.add1("Concat", rows, heads, name=f"{name}_shape", axis=0)
    value = graph.add1("Constant", name=f"{name}_log_gamma",
                       value=log_gamma.astype(numpy_dtype(k.dtype)))
    return graph.add1("Expand", value, shape, name=f"{name}_decay")


def _unpack(graph: Graph, y: Value, layout: Layout, name: str) -> Value:
    """[B, T, H*D] -> the layout of the region's output."""
    dims = [0, 0, *layout.head_sizes, layout.width]
    y = graph.add1("Reshape", y, _const(graph, dims, name), name=f"{name}_heads")
    order = layout.packed_order
    if order == list(range(len(order))):
        return y
    return graph.add1("Transpose", y, name=f"{name}_layout", perm=np.argsort(order).tolist())


def _const(graph: Graph, dims, name: str) -> Value:
    return graph.add1("Constant", name=f"{name}_shape", value=np.array(dims, np.int64))


# -- the pass ----------------------------------------------------------------------------------

def find(graph: Graph) -> list[tuple[Region | Node, Mixer | str]]:
    """Every token-mixing region of the graph with what it computes or why nothing fits."""
    analysis = Analysis(graph)
    found = []
    for root, seq in analysis.roots:
        region = analysis.region(root, seq)
        if isinstance(region, str):
            found.append((root, f"it is not a self-contained mixer: {region}"))
            continue
        found.append((region, identify(region)))
    return found


def explain(graph: Graph) -> list[str]:
    """Why each token-mixing region left in the graph is not fused."""
    notes = []
    for where, m in find(graph):
        root = where.root if isinstance(where, Region) else where
        if isinstance(m, str):
            notes.append(f"recognise-mixers at {root.where()}: {m}")
    return notes


@register_pass
class RecogniseMixers(Pass):
    name = "recognise-mixers"

    @dataclass
    class Options:
        # tokens the KV cache of a full causal attention holds (prompt + generated); longer
        # sequences are refused at run time
        max_context: int = 4096

    def run(self, graph: Graph) -> PassResult:
        modified = False
        for region, m in find(graph):
            if isinstance(m, Mixer):
                rewrite(graph, region, m, self.options.max_context)
                modified = True
        if modified:
            graph.toposort()
            DeadCodeElimination().run(graph)
        return PassResult(graph, modified)
