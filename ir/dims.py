"""Symbolic dimensions: `batch`, `seq`, `batch*seq`, `past + seq`.

A dimension is either a plain `int` or a `Sym`, a polynomial with integer coefficients over
named symbols kept in canonical form, so `seq*batch == batch*seq` and `seq + 1 - 1 == seq`.
Sym overloads + - * // so that NumPy object arrays of dims do shape arithmetic: the same
reference implementation that computes `Gather(Shape(x), 1)` on real data computes it on
symbolic shapes, which is how shape folding works.
"""

from __future__ import annotations

import ast

import numpy as np

from sbc.errors import CompileError
from typing import Union

Monomial = tuple[str, ...]  # sorted symbol names, repeated for powers; () is the constant term


class Sym:
    __slots__ = ("terms",)

    def __init__(self, terms: dict[Monomial, int]):
        self.terms = {m: c for m, c in sorted(terms.items()) if c != 0}

    @staticmethod
    def var(name: str) -> "Sym":
        return Sym({(name,): 1})

    # -- arithmetic ---------------------------------------------------------------------
    def __add__(self, other):
        other = _as_terms(other)
        if other is None:
            return NotImplemented
        terms = dict(self.terms)
        for m, c in other.items():
            terms[m] = terms.get(m, 0) + c
        return simplify(Sym(terms))

    __radd__ = __add__

    def __neg__(self):
        return Sym({m: -c for m, c in self.terms.items()})

    def __sub__(self, other):
        return self + (-as_dim(other))

    def __rsub__(self, other):
        return as_dim(other) + (-self)

    def __mul__(self, other):
        other = _as_terms(other)
        if other is None:
            return NotImplemented
        terms: dict[Monomial, int] = {}
        for m1, c1 in self.terms.items():
            for m2, c2 in other.items():
                m = tuple(sorted(m1 + m2))
                terms[m] = terms.get(m, 0) + c1 * c2
        return simplify(Sym(terms))

    __rmul__ = __mul__

    def __floordiv__(self, other):
        """Exact division only: by an int dividing every coefficient, or by a symbolic factor."""
        other = as_dim(other)
        if isinstance(other, int):
            if other != 0 and all(c % other == 0 for c in self.terms.values()):
                return simplify(Sym({m: c // other for m, c in self.terms.items()}))
        elif len(other.terms) == 1:
            (dm, dc), = other.terms.items()
            out = {}
            for m, c in self.terms.items():
                rest = list(m)
                try:
                    for s in dm:
                        rest.remove(s)
                except ValueError:
                    break
                if c % dc:
                    break
                out[tuple(rest)] = c // dc
            else:
                return simplify(Sym(out))
        raise SymbolicError(f"cannot divide {self} by {other} exactly")

    __truediv__ = __floordiv__

    def __rfloordiv__(self, other):
        raise SymbolicError(f"cannot divide {other} by symbolic {self}")

    __rtruediv__ = __rfloordiv__

    def __mod__(self, other):
        try:
            self // other
            return 0
        except SymbolicError:
            raise SymbolicError(f"{self} mod {other} is not known at compile time") from None

    # -- comparison: only what is provable ---------------------------------------------
    def __eq__(self, other):
        other_terms = _as_terms(other)
        return other_terms is not None and self.terms == {m: c for m, c in other_terms.items() if c}

    def __hash__(self):
        return hash(tuple(self.terms.items()))

    def __lt__(self, other):
        raise SymbolicError(f"cannot compare symbolic {self} with {other} at compile time")

    __le__ = __gt__ = __ge__ = __lt__

    def __bool__(self):
        return bool(self.terms)

    def __index__(self):
        raise SymbolicError(f"symbolic dim {self} used where a constant is required")

    def __int__(self):
        raise SymbolicError(f"symbolic dim {self} used where a constant is required")

    @property
    def symbols(self) -> set[str]:
        return {s for m in self.terms for s in m}

    def __str__(self):
        parts = []
        for m, c in self.terms.items():
            body = "*".join(m)
            if not m:
                text = str(abs(c))
            elif abs(c) == 1:
                text = body
            else:
                text = f"{abs(c)}*{body}"
            sign = "-" if c < 0 else "+"
            parts.append((sign, text))
        out = ("-" if parts[0][0] == "-" else "") + parts[0][1]
        for sign, text in parts[1:]:
            out += f" {sign} {text}"
        return out

    __repr__ = __str__


Dim = Union[int, Sym]


class SymbolicError(CompileError, ValueError):
    """A symbolic dimension was used where the compiler needs a known value."""


def _as_terms(x) -> dict[Monomial, int] | None:
    if isinstance(x, Sym):
        return x.terms
    if isinstance(x, bool):
        return None
    try:
        return {(): int(x)} if int(x) == x else None
    except (TypeError, ValueError):
        return None


def simplify(d: Sym) -> Dim:
    """A Sym with only a constant term is an int."""
    if not d.terms:
        return 0
    if set(d.terms) == {()}:
        return d.terms[()]
    return d


def as_dim(x) -> Dim:
    if isinstance(x, Sym):
        return x
    if isinstance(x, str):
        return parse_dim(x)
    return int(x)


def is_static(d) -> bool:
    return not isinstance(d, Sym)


def parse_dim(text: str) -> Dim:
    """Parse `batch`, `2*seq + 1`, `batch*seq` (the printer's output) into a Dim."""

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            return Sym.var(node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp):
            ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
                   ast.Mult: lambda a, b: a * b, ast.FloorDiv: lambda a, b: a // b}
            if type(node.op) in ops:
                return ops[type(node.op)](ev(node.left), ev(node.right))
        raise SymbolicError(f"not a dimension expression: {text!r}")

    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise SymbolicError(f"not a dimension expression: {text!r}") from None
    return as_dim(ev(tree))


def dims_str(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def prod(dims) -> Dim:
    out: Dim = 1
    for d in dims:
        out = out * d
    return out


def evaluate(d: Dim, env: dict[str, int]) -> int:
    """Value of a dim once its symbols are bound."""
    if not isinstance(d, Sym):
        return int(d)
    total = 0
    for m, c in d.terms.items():
        term = c
        for s in m:
            if s not in env:
                raise SymbolicError(f"symbol '{s}' is not bound")
            term *= env[s]
        total += term
    return total


def concretize(x, env: dict[str, int]):
    """Replace symbolic dims in an attribute value or object array by their values."""
    if isinstance(x, Sym):
        return evaluate(x, env)
    if isinstance(x, np.ndarray) and x.dtype == object:
        return np.array([evaluate(d, env) for d in x.reshape(-1)], dtype=np.int64).reshape(x.shape)
    if isinstance(x, (list, tuple)):
        return type(x)(concretize(v, env) for v in x)
    return x
