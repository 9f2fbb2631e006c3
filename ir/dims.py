"""Symbolic dimensions: `batch`, `seq`, `batch*seq`, `past + seq`, `(seq + 63) // 64 + 1`,
`min(seq, 8)`.

A dimension is either a plain `int` or a `Sym`, a polynomial with integer coefficients over
atoms kept in canonical form, so `seq*batch == batch*seq` and `seq + 1 - 1 == seq`. An atom is
a symbol name (a size, so never negative), a `FloorDiv`: floor(p / c) of a polynomial p by a
positive int c, which is what a chunk count such as ceil(seq / 64) = (seq + 63) // 64 needs, or
a `MinMax`: min(a, b) or max(a, b), which is what ONNX's clamped Slice bounds need (`x[:, :8]`
has min(seq, 8) rows). `dim_min` / `dim_max` build the latter and drop them where one side is
provably the answer (`max(seq, 0)` is `seq`), using `nonnegative`, a small prover.
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

Atom = Union[str, "FloorDiv", "MinMax"]
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
                m = tuple(sorted(m1 + m2, key=_atom_key))
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
        """The symbol names the dim depends on (also those inside FloorDiv and MinMax atoms)."""
        return {s for m in self.terms for a in m for s in _atom_symbols(a)}

    @property
    def nonnegative(self) -> bool:
        """Provably >= 0 for every value of the symbols (see `nonnegative`)."""
        return nonnegative(self)

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


def _atom_key(atom) -> tuple:
    """Atoms are sorted inside monomials (and monomials inside a Sym): symbol names first,
    then FloorDivs by (den, text), then MinMaxes by text."""
    if isinstance(atom, str):
        return (0, atom)
    return atom.key()


class _Compound:
    """An atom built from dims (FloorDiv, MinMax): ordered after symbol names, by key()."""

    __slots__ = ()

    def key(self) -> tuple:
        raise NotImplementedError

    def __lt__(self, other):
        return _atom_key(self) < _atom_key(other)

    def __gt__(self, other):
        return _atom_key(self) > _atom_key(other)

    def __le__(self, other):
        return self == other or self < other

    def __ge__(self, other):
        return self == other or self > other

    def __repr__(self):
        return str(self)


class FloorDiv(_Compound):
    """The atom floor(num / den): num a Sym in canonical form (every coefficient in [0, den),
    no factor shared by all of them and den; see _floor_div), den an int >= 2. Equal when
    num and den are (structurally: the only equality sbc can prove without knowing symbols)."""

    __slots__ = ("num", "den")

    def __init__(self, num: Sym, den: int):
        self.num, self.den = num, den

    def key(self):
        return (1, self.den, str(self.num))

    def __eq__(self, other):
        return isinstance(other, FloorDiv) and (self.num, self.den) == (other.num, other.den)

    def __hash__(self):
        return hash((self.num, self.den))

    def __str__(self):
        num = str(self.num)
        return f"{num} // {self.den}" if num.isidentifier() else f"({num}) // {self.den}"


class MinMax(_Compound):
    """The atom min(a, b) or max(a, b) (fn "min" or "max") of two dims neither of which is
    provably the answer (dim_min and dim_max decide that). The arguments are sorted, symbolic
    before constant, so min(8, seq) and min(seq, 8) are the same atom."""

    __slots__ = ("fn", "args")

    def __init__(self, fn: str, a: "Dim", b: "Dim"):
        self.fn = fn
        self.args = tuple(sorted((a, b), key=lambda d: (isinstance(d, int), str(d))))

    def key(self):
        return (2, self.fn, *map(str, self.args))

    def __eq__(self, other):
        return isinstance(other, MinMax) and (self.fn, self.args) == (other.fn, other.args)

    def __hash__(self):
        return hash((self.fn, self.args))

    def __str__(self):
        return f"{self.fn}({self.args[0]}, {self.args[1]})"


def dim_min(a, b) -> "Dim":
    """min(a, b) of two dims: one of them where that is provable, else a MinMax atom."""
    return _extremum("min", as_dim(a), as_dim(b))


def dim_max(a, b) -> "Dim":
    """max(a, b) of two dims: one of them where that is provable, else a MinMax atom."""
    return _extremum("max", as_dim(a), as_dim(b))


def difference(a, b) -> "Dim":
    """a - b, with a lone min / max on one side taken apart where the other side has none,
    so that it can simplify: seq - max(seq - 3, 0) is min(3, seq) = min(seq, 3)."""
    a, b = as_dim(a), as_dim(b)
    if _lone_min_max(b) and not _has_min_max(a):
        x, y = _lone_min_max(b).args  # a - max(x, y) = min(a - x, a - y), and vice versa
        return (dim_max if _lone_min_max(b).fn == "min" else dim_min)(a - x, a - y)
    if _lone_min_max(a) and not _has_min_max(b):
        x, y = _lone_min_max(a).args
        return (dim_min if _lone_min_max(a).fn == "min" else dim_max)(x - b, y - b)
    return a - b


def _lone_min_max(d: "Dim") -> "MinMax | None":
    """The MinMax atom that d is, if it is one (coefficient 1, nothing added)."""
    if isinstance(d, Sym) and len(d.terms) == 1:
        (m, c), = d.terms.items()
        if c == 1 and len(m) == 1 and isinstance(m[0], MinMax):
            return m[0]
    return None


def _has_min_max(d: "Dim") -> bool:
    return isinstance(d, Sym) and any(isinstance(a, MinMax) for m in d.terms for a in m)


def _extremum(fn: str, a: "Dim", b: "Dim") -> "Dim":
    if nonnegative(b - a):  # a <= b
        return a if fn == "min" else b
    if nonnegative(a - b):
        return b if fn == "min" else a
    return Sym({(MinMax(fn, a, b),): 1})


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
    if isinstance(atom, FloorDiv):
        return atom.num.symbols
    if isinstance(atom, MinMax):
        return {s for d in atom.args if isinstance(d, Sym) for s in d.symbols}
    return {atom}


def _atom_text(atom: Atom, alone: bool) -> str:
    """A FloorDiv multiplied by anything (-1 included) goes in parentheses, as Python parses
    `64*(seq + 63) // 64` and `-(seq + 63) // 64` otherwise: `64*((seq + 63) // 64)`."""
    if isinstance(atom, FloorDiv) and not alone:
        return f"({atom})"
    return str(atom)


def _atom_value(atom: Atom, env: dict[str, int]) -> int:
    if isinstance(atom, FloorDiv):
        return evaluate(atom.num, env) // atom.den
    if isinstance(atom, MinMax):
        return {"min": min, "max": max}[atom.fn](evaluate(d, env) for d in atom.args)
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


def nonnegative(d: Dim) -> bool:
    """Provably >= 0 for every value of the symbols (sizes, so >= 0). False means "not
    proven". A polynomial whose coefficients and atoms are all >= 0 is; otherwise one compound
    atom is taken out: a MinMax is one of its two arguments (a max with a positive coefficient
    needs only one of them to do, a min all of them), and a FloorDiv f = floor(n / k) alone in
    its monomial lies in [(n - k + 1) / k, n / k]. So `64*((seq + 63) // 64) - seq` and
    `max(seq - 6, 0) - seq + 6` are proven nonnegative."""
    if not isinstance(d, Sym):
        return d >= 0
    atoms = [a for m in d.terms for a in m]
    if all(c >= 0 for c in d.terms.values()) and all(map(_atom_nonnegative, atoms)):
        return True
    for m, c in d.terms.items():
        for atom in m:
            if isinstance(atom, MinMax):
                return _nonnegative_either_way(d, m, c, atom)
            if isinstance(atom, FloorDiv) and m == (atom,):
                rest = d - Sym({m: c})
                slack = atom.den - 1 if c > 0 else 0  # the remainder that makes d smallest
                return nonnegative(atom.den * rest + c * (atom.num - slack))
    return False


def _nonnegative_either_way(d: Sym, m: Monomial, c: int, atom: "MinMax") -> bool:
    """d >= 0 with `atom` (in monomial m, coefficient c) replaced by each of its arguments."""
    cases = [nonnegative(_substitute(d, atom, arg)) for arg in atom.args]
    linear = m == (atom,) and sum(atom in mono for mono in d.terms) == 1
    any_will_do = linear and (atom.fn == "max") == (c > 0)  # d is then the max of the cases
    return any(cases) if any_will_do else all(cases)


def _atom_nonnegative(atom: Atom) -> bool:
    if isinstance(atom, FloorDiv):
        return nonnegative(atom.num)
    if isinstance(atom, MinMax):
        found = [nonnegative(a) for a in atom.args]
        return all(found) if atom.fn == "min" else any(found)
    return True  # a symbol is a size


def _substitute(d: Sym, atom: Atom, value: Dim) -> Dim:
    """d with every occurrence of `atom` replaced by `value`."""
    total: Dim = 0
    for m, c in d.terms.items():
        term: Dim = c
        for a in m:
            term = term * (value if a == atom else Sym({(a,): 1}))
        total = total + term
    return total


def as_dim(x) -> Dim:
    if isinstance(x, Sym):
        return x
    if isinstance(x, str):
        return parse_dim(x)
    return int(x)


def is_static(d) -> bool:
    return not isinstance(d, Sym)


def parse_dim(text: str) -> Dim:
    """Parse `batch`, `2*seq + 1`, `batch*seq`, `(seq + 63) // 64`, `max(seq - 2, 0)` (the
    printer's output) into a Dim."""

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            return Sym.var(node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("min", "max") and len(node.args) == 2 and not node.keywords:
            return (dim_min if node.func.id == "min" else dim_max)(*map(ev, node.args))
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
