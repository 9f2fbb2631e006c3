"""Pattern helpers shared by the attention fusion passes: walking producers, undoing GQA's
repeat_kv, packing heads for the packed [B, T, H*D] attention ops, and reading what a mask
computes (by evaluating it, since exporters build masks in many ways)."""

from __future__ import annotations

import weakref

import numpy as np

from sbc.ir import Graph, Node, Value
from sbc.ir.dims import Sym
from sbc.ir.interpreter import evaluate
from sbc.passes.base import RewriteRule, producer, scalar  # noqa: F401  (re-exported)

MASK_SIZES = (17, 257, 4097)  # seq lengths at which a mask is evaluated to find its band


class AttentionRule(RewriteRule):
    """A rule rooted at `MatMul(weights [.., T, T], v)`, T symbolic: the attention candidates."""
    ops = ("MatMul",)

    def matches(self, node: Node) -> bool:
        shape = node.inputs[0].shape if node.op == "MatMul" else ()
        return len(shape) >= 2 and shape[-1] == shape[-2] and not isinstance(shape[-1], int)


def other_operand(node: Node, v: Value) -> Value:
    return node.inputs[1] if node.inputs[0] is v else node.inputs[0]


def split_mul(node: Node | None, test) -> tuple[Value, Node] | None:
    """For Mul(a, b) where test(b's producer) holds (either order): (a, b's producer)."""
    if node is None or node.op != "Mul":
        return None
    for mine, other in ((0, 1), (1, 0)):
        found = test(node.inputs[other])
        if found is not None:
            return node.inputs[mine], found
    return None


def unrepeat_kv(v: Value) -> tuple[Value, int]:
    """repeat_kv undone: Reshape(Expand(Unsqueeze(x [B, H, T, D], axis 2) to [B, H, G, T, D])
    to [B, H*G, T, D]) -> (x, G); anything else -> (v, 1)."""
    reshape = producer(v, "Reshape")
    expand = producer(reshape.inputs[0], "Expand") if reshape else None
    unsqueeze = producer(expand.inputs[0], "Unsqueeze") if expand else None
    if unsqueeze is None:
        return v, 1
    x = unsqueeze.inputs[0]
    if x.type.rank != 4 or unsqueeze.outputs[0].type.rank != 5:
        return v, 1
    b, h, t, d = x.shape
    grouped = expand.outputs[0].shape
    if unsqueeze.outputs[0].shape != (b, h, 1, t, d) or grouped[:2] != (b, h) \
            or grouped[3:] != (t, d) or not isinstance(grouped[2], int):
        return v, 1
    if v.shape != (b, h * grouped[2], t, d):
        return v, 1
    return x, grouped[2]


def unrepeat_all(parts: dict, names) -> dict:
    """parts with repeat_kv undone on parts[n] for n in names, when all were repeated alike
    (else unchanged: undoing it on some would leave their head counts disagreeing)."""
    unrepeated = {n: unrepeat_kv(parts[n]) for n in names if parts[n] is not None}
    if len({groups for _, groups in unrepeated.values()}) == 1:
        return {**parts, **{n: x for n, (x, _) in unrepeated.items()}}
    return parts


def pack_heads(graph: Graph, v: Value, name: str) -> Value:
    """[B, H, T, D] -> [B, T, H*D] (what the packed attention ops take)."""
    t = graph.add1("Transpose", v, name=f"{name}_bthd", perm=[0, 2, 1, 3])
    return graph.add1("Reshape", t, _shape(graph, [0, 0, -1], name), name=f"{name}_packed")


def unpack_heads(graph: Graph, v: Value, heads: int, name: str) -> Value:
    """[B, T, H*D] -> [B, H, T, D]."""
    r = graph.add1("Reshape", v, _shape(graph, [0, 0, heads, -1], name), name=f"{name}_bthd")
    return graph.add1("Transpose", r, name=f"{name}_heads", perm=[0, 2, 1, 3])


def _shape(graph: Graph, dims: list[int], name: str) -> Value:
    return graph.add1("Constant", name=f"{name}_shape", value=np.array(dims, np.int64))


_WINDOWS: "weakref.WeakKeyDictionary[Value, tuple]" = weakref.WeakKeyDictionary()


def mask_window(mask: Value, seq: Sym) -> tuple[int | None, str | None]:
    """What a [.., T, T] boolean mask allows, found by evaluating it at a few lengths:
    (w, None) for a band 0 <= i - j < w, (0, None) for the plain causal mask i >= j (no window
    up to the largest size tried), or (None, why not). Values are immutable, so the answer
    is kept per mask value (check and rewrite both ask)."""
    if mask not in _WINDOWS:
        _WINDOWS[mask] = _band(mask, seq, "bool", lambda value: value)
    return _WINDOWS[mask]


def bias_window(bias: Value, seq: Sym) -> tuple[int | None, str | None]:
    """mask_window for an additive float mask: 0 where allowed, -inf where not."""
    if bias not in _WINDOWS:
        _WINDOWS[bias] = _band(bias, seq, "float", _allowed_by_bias)
    return _WINDOWS[bias]


def _allowed_by_bias(value: np.ndarray) -> np.ndarray | str:
    if not np.all((value == 0) | (value == -np.inf)):
        return "the additive mask holds values other than 0 and -inf"
    return value == 0


def _band(mask: Value, seq: Sym, kind: str, allowed_of) -> tuple[int | None, str | None]:
    if mask.dtype != "bool" if kind == "bool" else mask.dtype not in ("f16", "f32", "f64"):
        return None, f"the mask is {mask.type}, not {kind}"
    if tuple(mask.shape[-2:]) != (seq, seq) or any(d != 1 for d in mask.shape[:-2]):
        return None, f"the mask is {mask.type}, not [seq, seq] (leading 1s allowed)"
    for n in MASK_SIZES:
        value = evaluate_at(mask, seq, n)
        if value is None:
            return None, "the mask depends on run-time inputs"
        allowed = allowed_of(value.reshape(n, n))
        if isinstance(allowed, str):
            return None, allowed
        if allowed.all():
            return None, "the attention is not masked: every query sees every key"
        offset = np.arange(n)[:, None] - np.arange(n)[None, :]
        width = int(allowed[-1].sum())
        if not np.array_equal(allowed, (offset >= 0) & (offset < width)):
            return None, f"the mask is not causal: at seq={n} it allows " \
                         f"{_first_difference(allowed, offset, width)}"
        if width < n:
            return width, None
    return 0, None


def evaluate_at(v: Value, seq: Sym, n: int) -> np.ndarray | None:
    """v computed at compile time with seq = n (other symbols 1), None if it needs inputs."""
    others = {s: 1 for s in upstream_symbols(v)}  # evaluation needs every symbol bound
    return evaluate(v, {**others, **{s: n for s in seq.symbols}})


def never_true(cond: Value, seq: Sym, window: int) -> str | None:
    """None if the boolean `cond` is false everywhere at the lengths a band of `window` was
    checked at (a window of 0: all of them), else why not."""
    for n in MASK_SIZES:
        value = evaluate_at(cond, seq, n)
        if value is None:
            return f"%{cond.name} depends on run-time inputs"
        if value.any():
            return f"%{cond.name} holds at seq={n}"
        if 0 < window < n:
            return None
    return None


def const_scalar(v: Value | None) -> float | None:
    """The value of a one-element value known at compile time (a constant, or computed from
    constants and shapes alone, the same at two lengths), else None."""
    v = through_casts(v)  # CastLike(c, x) would make c look like it depends on x
    value = scalar(v)
    if value is not None or v is None or v.type.numel != 1:
        return value
    symbols = upstream_symbols(v)
    values = [evaluate(v, {s: n for s in symbols}) for n in (2, 3)]
    if any(x is None for x in values) or not np.array_equal(values[0], values[1]):
        return None
    return float(values[0].reshape(-1)[0])


def through_casts(v: Value | None) -> Value | None:
    """v with Identity and same-dtype Cast/CastLike (no-ops that function bodies add) peeled."""
    while (node := producer(v, "Identity", "Cast", "CastLike")) is not None \
            and node.inputs[0].dtype == v.dtype:
        v = node.inputs[0]
    return v


def _first_difference(allowed: np.ndarray, offset: np.ndarray, width: int) -> str:
    expected = (offset >= 0) & (offset < width)
    i, j = np.argwhere(allowed != expected)[0]
    return f"(query {i}, key {j}) = {bool(allowed[i, j])}"


def upstream_symbols(v: Value) -> set[str]:
    """The symbols used by v's types and known values and by everything it is computed from
    (evaluating v needs a value for each)."""
    found, seen, todo = set(), set(), [v]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        found |= x.type.symbols
        if x.data is not None and x.data.dtype == object:
            found |= {s for d in x.data.reshape(-1) if isinstance(d, Sym) for s in d.symbols}
        if x.producer is not None:
            todo.extend(x.producer.inputs)
    return found
