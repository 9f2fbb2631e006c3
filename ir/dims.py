"""Symbolic dimensions: `batch`, `seq`, `batch*seq`, `past + seq`, `(seq + 63) // 64 + 1`.

A dimension is either a plain `int` or a `Sym`, a polynomial with integer coefficients over
atoms kept in canonical form, so `seq*batch == batch*seq` and `seq + 1 - 1 == seq`. An atom is
a symbol name (a size, so never negative) or a `FloorDiv`: floor(p / c) of a polynomial p by a
positive int c, which is what a chunk count such as ceil(seq / 64) = (seq + 63) // 64 needs.
Sym overloads + - * // % so that NumPy object arrays of dims do shape arithmetic: the same
reference implementation that computes `Gather(Shape(x), 1)` on real data computes it on
symbolic shapes, which is how shape folding works.
"""

from __future__ import annotations

import ast

import numpy as np

import math
from typing import Union

from sbc.errors import CompileError

Atom = Union[str, "FloorDiv"]
Monomial = tuple[Atom, ...]  # sorted atoms, repeated for powers; () is the constant term


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
        """Floor division by a nonzero int (a `FloorDiv` atom where it is not exact), or exact
        division by a symbolic factor."""
        other = as_dim(other)
        if isinstance(other, int):
            if other < 0:
                return (-self) // -other
            if other > 0:
                return _floor_div(self, other)
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
        """Python's %: p - c * floor(p / c), so the remainder has the divisor's sign."""
        try:
            return self - other * (self // other)
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
        """The symbol names the dim depends on (also those inside FloorDiv atoms)."""
        return {s for m in self.terms for a in m for s in _atom_symbols(a)}

    @property
    def nonnegative(self) -> bool:
        """Provably >= 0: symbols and FloorDiv atoms are, so all coefficients >= 0 is enough."""
        return all(c >= 0 for c in self.terms.values())

    def __str__(self):
        parts = []
        # the constant term last: `seq + 1`, `(seq + 63) // 64 + 1`
        for m, c in sorted(self.terms.items(), key=lambda mc: not mc[0]):
            body = "*".join(_atom_text(a, alone=len(m) == 1 and c == 1) for a in m)
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


class FloorDiv:
    """The atom floor(num / den): num a Sym in canonical form (every coefficient in [0, den),
    no factor shared by all of them and den; see _floor_div), den an int >= 2. Equal when
    num and den are (structurally: the only equality sbc can prove without knowing symbols)."""

    __slots__ = ("num", "den")

    def __init__(self, num: Sym, den: int):
        self.num, self.den = num, den

    def _key(self):
        return (self.den, str(self.num))

    def __eq__(self, other):
        return isinstance(other, FloorDiv) and (self.num, self.den) == (other.num, other.den)

    def __hash__(self):
        return hash((self.num, self.den))

    # Atoms are sorted inside monomials: symbol names first, then FloorDivs by (den, text).
    def __lt__(self, other):
        return isinstance(other, FloorDiv) and self._key() < other._key()

    def __gt__(self, other):
        if isinstance(other, FloorDiv):
            return self._key() > other._key()
        return isinstance(other, str)

    def __le__(self, other):
        return self == other or self < other

    def __ge__(self, other):
        return self == other or self > other

    def __str__(self):
        num = str(self.num)
        return f"{num} // {self.den}" if num.isidentifier() else f"({num}) // {self.den}"

    __repr__ = __str__


def _floor_div(p: Sym, c: int) -> Dim:
    """floor(p / c) for c > 0. Every term's coefficient splits as c * q + r with 0 <= r < c;
    the q parts divide exactly (p takes integer values), so floor(p / c) = Q + floor(R / c).
    R is then reduced by the gcd of its coefficients and c, so equal quotients look equal."""
    whole = Sym({m: coef // c for m, coef in p.terms.items()})
    rest = {m: coef % c for m, coef in p.terms.items() if coef % c}
    if set(rest) <= {()}:  # R is a constant in [0, c): its floor is 0
        return simplify(whole)
    common = math.gcd(c, *rest.values())
    rest_sym = Sym({m: r // common for m, r in rest.items()})
    return whole + Sym({(FloorDiv(rest_sym, c // common),): 1})


def _atom_symbols(atom: Atom) -> set[str]:
    return atom.num.symbols if isinstance(atom, FloorDiv) else {atom}


def _atom_text(atom: Atom, alone: bool) -> str:
    """A FloorDiv multiplied by anything (-1 included) goes in parentheses, as Python parses
    `64*(seq + 63) // 64` and `-(seq + 63) // 64` otherwise: `64*((seq + 63) // 64)`."""
    if isinstance(atom, FloorDiv) and not alone:
        return f"({atom})"
    return str(atom)


def _atom_value(atom: Atom, env: dict[str, int]) -> int:
    if isinstance(atom, FloorDiv):
        return evaluate(atom.num, env) // atom.den
    if atom not in env:
        raise SymbolicError(f"symbol '{atom}' is not bound")
    return env[atom]


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
    """Parse `batch`, `2*seq + 1`, `batch*seq`, `(seq + 63) // 64` (the printer's output) into
    a Dim."""

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
                   ast.Mult: lambda a, b: a * b, ast.FloorDiv: lambda a, b: a // b,
                   ast.Mod: lambda a, b: a % b}
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
        for atom in m:
            term *= _atom_value(atom, env)
        total += term
    return total


def trunc_div(a: Dim, b: Dim) -> Dim:
    """ONNX's integer Div (truncating toward zero) on dims: floor division where it is exact
    or where both sides are provably nonnegative (sizes), since then the two agree."""
    a, b = as_dim(a), as_dim(b)
    if isinstance(a, int) and isinstance(b, int):
        q = abs(a) // abs(b)
        return q if (a >= 0) == (b >= 0) else -q
    if isinstance(b, int) and b > 0 and (isinstance(a, int) or a.nonnegative):
        return a // b
    try:
        return _exact(a, b)
    except SymbolicError:
        raise SymbolicError(f"{a} / {b} (truncating) is not known at compile time: the sign "
                            "of the dividend is unknown") from None


def _exact(a: Dim, b: Dim) -> Dim:
    q = as_dim(a) // b
    if as_dim(q) * b != a:
        raise SymbolicError(f"cannot divide {a} by {b} exactly")
    return q


def concretize(x, env: dict[str, int]):
    """Replace symbolic dims in an attribute value or object array by their values."""
    if isinstance(x, Sym):
        return evaluate(x, env)
    if isinstance(x, np.ndarray) and x.dtype == object:
        return np.array([evaluate(d, env) for d in x.reshape(-1)], dtype=np.int64).reshape(x.shape)
    if isinstance(x, (list, tuple)):
        return type(x)(concretize(v, env) for v in x)
    return x
