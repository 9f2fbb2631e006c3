"""Assumptions: relations between symbolic dims that compiled code relies on.

Shape inference cannot always prove what an op needs. `x[2, K] @ W[4, 3]` is typed `[2, 3]`
only if K == 4; `a[n] + b[4]` broadcasts to 4 elements only if n == 4; `x[n - 4:]` counts from
the start only if n >= 4 (a negative start would count from the end). Such a node is compiled as if the relation held, so
it must be checked, once, before any kernel runs: a size that breaks it would otherwise make
the kernel read outside its buffers or return wrong numbers.

Inference states what it relies on with `require(lhs, rel, rhs)`. Outside `collecting` that
is free (inference runs all the time during passes); `registry.collect_assumptions(graph)`
re-infers every node inside it and returns the distinct relations that are not provable at
compile time. The build stores them in the artifact, and `broken` evaluates them with the sizes
bound from the inputs (types.bind_symbols raises what it finds).
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass

from sbc.ir.dims import Dim, Sym, evaluate, parse_dim, SymbolicError

RELATIONS = ("==", ">=", "!=")
_collecting: contextvars.ContextVar[list | None] = contextvars.ContextVar("assumptions", default=None)
_node: contextvars.ContextVar[str] = contextvars.ContextVar("assumption_node", default="a node")


@dataclass(frozen=True)
class Assumption:
    """lhs rel rhs, with rel "==", ">=" or "!=", needed by the node `where` (and `why`)."""
    lhs: Dim
    rel: str
    rhs: Dim
    where: str = ""
    why: str = ""

    def holds(self, env: dict[str, int]) -> bool:
        lhs, rhs = evaluate(self.lhs, env), evaluate(self.rhs, env)
        return {"==": lhs == rhs, ">=": lhs >= rhs, "!=": lhs != rhs}[self.rel]

    @property
    def key(self) -> tuple[str, str, str]:
        return (str(self.lhs), self.rel, str(self.rhs))

    def __str__(self):
        """Symbols on the left, the constant on the right: `seq >= 8`, `N <= 10`, `K == 4`."""
        diff = self.lhs - self.rhs
        if not isinstance(diff, Sym):
            return f"{self.lhs} {self.rel} {self.rhs}"
        const = diff.terms.get((), 0)
        rest, rel = diff - const, self.rel
        if all(c < 0 for c in rest.terms.values()):
            rest, const, rel = -rest, -const, {"==": "==", ">=": "<=", "!=": "!="}[rel]
        return f"{rest} {rel} {-const}"

    def to_json(self) -> dict:
        return {"lhs": str(self.lhs), "rel": self.rel, "rhs": str(self.rhs),
                "where": self.where, "why": self.why}

    @staticmethod
    def from_json(item: dict) -> "Assumption":
        if item.get("rel") not in RELATIONS:
            raise SymbolicError(f"unknown relation {item.get('rel')!r}")
        return Assumption(parse_dim(item["lhs"]), item["rel"], parse_dim(item["rhs"]),
                          str(item.get("where", "")), str(item.get("why", "")))


def provable(lhs: Dim, rel: str, rhs: Dim) -> bool | None:
    """True or False when the relation is decided at compile time, None when it depends on
    the symbols' values. Symbols are sizes (>= 0), so a difference with no negative
    coefficient is >= 0."""
    diff = lhs - rhs
    if not isinstance(diff, Sym):
        return {"==": diff == 0, ">=": diff >= 0, "!=": diff != 0}[rel]
    if rel == ">=" and diff.nonnegative:
        return True
    return None


def require(lhs: Dim, rel: str, rhs: Dim, why: str) -> bool:
    """State that the node being inferred needs `lhs rel rhs`. Returns False when that is
    provably false (the caller raises its own error), else True; an open relation is
    recorded while `collecting` is active."""
    decided = provable(lhs, rel, rhs)
    if decided is not None:
        return decided
    collected = _collecting.get()
    if collected is not None:
        collected.append(Assumption(lhs, rel, rhs, _node.get(), why))
    return True


@contextmanager
def collecting():
    """While active, `require` records the open relations in the list this yields."""
    found: list[Assumption] = []
    token = _collecting.set(found)
    try:
        yield found
    finally:
        _collecting.reset(token)


@contextmanager
def at_node(where: str):
    """Relations recorded while active are attributed to the node `where`."""
    token = _node.set(where)
    try:
        yield
    finally:
        _node.reset(token)


def unique(found: list[Assumption]) -> list[Assumption]:
    """The first of each distinct relation, in order."""
    first: dict[tuple, Assumption] = {}
    for a in found:
        first.setdefault(a.key, a)
    return list(first.values())


def broken(assumptions: list[Assumption], env: dict[str, int],
           bound_by: dict[str, str]) -> str | None:
    """What the first relation the bound sizes break says, in words, or None. bound_by names,
    per symbol, the input (and axis) it was read from, e.g. {"K": "input 'x' axis 1"}."""
    for a in assumptions:
        try:
            ok = a.holds(env)
        except SymbolicError:  # a symbol no input binds: nothing was sized by it either
            continue
        if not ok:
            diff = a.lhs - a.rhs
            symbols = sorted(diff.symbols) if isinstance(diff, Sym) else []
            given = ", ".join(f"{bound_by.get(s, 'the inputs')}: {s} = {env[s]}"
                              for s in symbols if s in env)
            because = f" ({a.why})" if a.why else ""
            return f"{given or 'the input sizes'}, but {a.where} was compiled for {a}{because}"
    return None
