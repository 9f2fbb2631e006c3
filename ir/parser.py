"""Text -> IR: reads what sbc.ir.printer writes.

`parse_graph(text, params={name: array})` rebuilds the graph; node output types are inferred
again and compared with the text, so a hand-edited type mismatch is reported. A graph
attribute (a Scan body) is a nested `graph ... { ... }` with its own names.

A param's data comes from `params=` (which wins) or from an initialiser in the text, so that
a hand-written file (a pass test, `sbc opt`) is self-contained:

    param %w: f32[64, 64] = random(7)              seeded N(0, 1); random(7, 0.1): N(0, 0.1^2)
    param %k: f32[] = tensor<f32[]>[3.0]           a literal, as attributes are written

random(seed) depends on the seed alone (not on the param's name or place): floats are
normal, integers uniform in [0, 5), booleans fair coins. Lines whose first non-blank
characters are `//` are comments (not `//` after text: `(seq + 63) // 64` is a dim).
"""

from __future__ import annotations

import json
import re

import numpy as np

from sbc.errors import SbcError
from sbc.ir.dims import parse_dim
from sbc.ir.graph import Graph, Value
from sbc.ir.registry import get_op
from sbc.ir.types import FLOAT_DTYPES, TensorType, numpy_dtype

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<value>%(?:"(?:[^"\\]|\\.)*"|[A-Za-z0-9_.][A-Za-z0-9_./\-]*))
  | (?P<number>\d+\.\d*(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\d+)
  | (?P<arrow>->)
  | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[()\[\]{}<>,:=*+\-/])
""", re.VERBOSE)


class ParseError(SbcError, ValueError):
    pass


_COMMENT_LINE = re.compile(r"^[ \t]*//[^\n]*", re.MULTILINE)


def _blank_comments(text: str) -> str:
    """Comment lines as spaces: offsets in error messages still point into the text."""
    return _COMMENT_LINE.sub(lambda m: " " * len(m.group()), text)


class _Tokens:
    def __init__(self, text: str):
        self.toks: list[tuple[str, str]] = []
        text = _blank_comments(text)
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m:
                raise ParseError(f"unexpected character {text[pos]!r} at offset {pos}")
            if m.lastgroup != "ws":
                self.toks.append((m.lastgroup, m.group()))
            pos = m.end()
        self.i = 0

    def peek(self, k: int = 0) -> tuple[str, str]:
        return self.toks[self.i + k] if self.i + k < len(self.toks) else ("eof", "")

    def next(self) -> tuple[str, str]:
        tok = self.peek()
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        kind, got = self.next()
        if got != text:
            found = "the end of the text" if kind == "eof" else repr(got)
            raise ParseError(f"expected {text!r}, got {found} (token {self.i})")

    def accept(self, text: str) -> bool:
        if self.peek()[1] == text:
            self.i += 1
            return True
        return False

    def until(self, stops: set[str]) -> list[tuple[str, str]]:
        """Tokens up to (not including) a stop at bracket depth 0."""
        out, depth = [], 0
        while True:
            kind, text = self.peek()
            if kind == "eof" or (depth == 0 and text in stops):
                return out
            depth += text in "([{<"
            depth -= text in ")]}>"
            out.append(self.next())


def _value_name(tok: str) -> str:
    body = tok[1:]
    return json.loads(body) if body.startswith('"') else body


def _parse_type(toks: _Tokens) -> TensorType:
    _, dtype = toks.next()
    toks.expect("[")
    dims = []
    while not toks.accept("]"):
        dims.append(parse_dim("".join(t for _, t in toks.until({",", "]"}))))
        toks.accept(",")
    encoding = None
    if toks.peek()[1] == "{" and toks.peek(1)[1] == "spike":  # {spike=count}
        toks.next(), toks.next()
        toks.expect("=")
        encoding = toks.next()[1]
        toks.expect("}")
    try:
        return TensorType(dtype, tuple(dims), encoding)
    except TypeError as e:
        raise ParseError(str(e)) from None


def _parse_scalar(tokens: list[tuple[str, str]]):
    if len(tokens) == 1 and tokens[0][0] == "string":
        return json.loads(tokens[0][1])
    text = "".join(t for _, t in tokens)
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return parse_dim(text)


def _parse_attr_value(toks: _Tokens):
    kind, text = toks.peek()
    if text == "graph":  # a nested graph (a Scan body): closed, and holds no params
        return _parse_graph(toks, {})
    if text == "tensor":
        toks.next()
        toks.expect("<")
        ttype = _parse_type(toks)
        toks.expect(">")
        items = _parse_attr_value(toks)
        if ttype.dtype.startswith("f"):
            items = [float(x) for x in items]
        try:
            dtype = numpy_dtype(ttype.dtype)
            return np.array(items, dtype=dtype).reshape(ttype.shape)
        except (TypeError, ValueError):  # symbolic entries (int(Sym) raises SymbolicError): dims
            return np.array(items, dtype=object).reshape(ttype.shape)
    if text == "[":
        toks.next()
        items = []
        while not toks.accept("]"):
            items.append(_parse_attr_value(toks))
            toks.accept(",")
        return items
    return _parse_scalar(toks.until({",", "]", "}"}))


def _coerce(kind: str, value):
    if kind == "float":
        return float(value)
    if kind == "floats":
        return [float(v) for v in value]
    if kind == "tensor":
        return value if isinstance(value, np.ndarray) else np.array(value)
    return value


def parse_graph(text: str, params: dict[str, np.ndarray] | None = None) -> Graph:
    toks = _Tokens(text)
    graph = _parse_graph(toks, params or {})
    if toks.peek()[0] != "eof":
        raise ParseError(f"unexpected {toks.peek()[1]!r} after the graph")
    return graph


def _parse_graph(toks: _Tokens, params: dict[str, np.ndarray]) -> Graph:
    """One `graph ... { ... }`, through its closing brace; it sees only its own values."""
    toks.expect("graph")
    graph = Graph(toks.next()[1])
    env: dict[str, Value] = {}

    toks.expect("(")
    while not toks.accept(")"):
        name = _value_name(toks.next()[1])
        toks.expect(":")
        env[name] = graph.add_input(name, _parse_type(toks))
        toks.accept(",")
    toks.expect("->")
    toks.expect("(")
    toks.until({")"})  # output types are re-derived from the values returned
    toks.expect(")")
    toks.expect("{")

    while True:
        kind, text_ = toks.peek()
        if text_ == "param":
            toks.next()
            name = _value_name(toks.next()[1])
            toks.expect(":")
            ptype = _parse_type(toks)
            initial = _param_initialiser(toks, name, ptype) if toks.accept("=") else None
            data = params[name] if name in params else initial
            if data is None:
                raise ParseError(f"no data given for param %{name}: pass it in params= or "
                                 f"write `= random(SEED)` or `= tensor<TYPE>[...]` after its type")
            value = graph.add_param(name, data)
            if value.type != ptype:
                raise ParseError(f"param %{name}: text says {ptype}, data is {value.type}")
            env[name] = value
        elif text_ == "return":
            toks.next()
            values, names = [], []
            while not toks.accept("}"):
                v = _defined(env, toks.next()[1])
                toks.expect("as")
                kind, out_name = toks.next()
                values.append(v)
                names.append(json.loads(out_name) if kind == "string" else out_name)
                toks.accept(",")
            graph.set_outputs(values, names)
            return graph
        elif kind == "value":
            _parse_node(toks, graph, env)
        else:
            raise ParseError(f"unexpected {text_!r} in graph body")


def _defined(env: dict[str, Value], tok: str) -> Value:
    name = _value_name(tok)
    if name not in env:
        raise ParseError(f"%{name} used before it is defined")
    return env[name]


def _param_initialiser(toks: _Tokens, name: str, ptype: TensorType) -> np.ndarray:
    """What follows `param %name: TYPE =`: a tensor literal or random(seed[, scale])."""
    text = toks.peek()[1]
    if text == "tensor":
        return _parse_attr_value(toks)
    if text != "random":
        raise ParseError(f"param %{name}: expected random(SEED) or tensor<TYPE>[...] after '=', "
                         f"got {text!r}")
    toks.next()
    toks.expect("(")
    args = []
    while not toks.accept(")"):
        args.append(_parse_scalar(toks.until({",", ")"})))
        toks.accept(",")
    return random_param(name, ptype, *args)


RANDOM_INT_BOUND = 5  # integers are uniform in [0, 5): valid indices into most small tables


def random_param(name: str, ptype: TensorType, seed=None, scale=1.0, *extra) -> np.ndarray:
    """The data of `random(seed[, scale])` for a param of type `ptype`; the seed alone fixes it."""
    if not isinstance(seed, int) or seed < 0 or not isinstance(scale, (int, float)) or extra:
        raise ParseError(f"param %{name}: write random(SEED) or random(SEED, SCALE), SEED a "
                         f"non-negative integer and SCALE a number")
    if not ptype.is_static:
        raise ParseError(f"param %{name}: random() needs a static shape, got {ptype}")
    dtype, is_float = numpy_dtype(ptype.dtype), ptype.dtype in FLOAT_DTYPES
    if not is_float and scale != 1.0:
        raise ParseError(f"param %{name}: a scale applies to float params only, not {ptype.dtype}")
    rng = np.random.default_rng(seed)
    shape = tuple(int(d) for d in ptype.shape)
    if is_float:
        return (rng.standard_normal(shape) * scale).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    return rng.integers(0, RANDOM_INT_BOUND, shape).astype(dtype)


def _parse_node(toks: _Tokens, graph: Graph, env: dict[str, Value]) -> None:
    outs: list[tuple[str, TensorType]] = []
    while not toks.accept("="):
        name = _value_name(toks.next()[1])
        toks.expect(":")
        outs.append((name, _parse_type(toks)))
        toks.accept(",")
    _, op_name = toks.next()
    opdef = get_op(op_name)
    if opdef is None:
        raise ParseError(f"unknown op {op_name!r}")
    toks.expect("(")
    inputs = []
    while not toks.accept(")"):
        _, tok = toks.next()
        if tok == "none":
            inputs.append(None)
        else:
            inputs.append(_defined(env, tok))
        toks.accept(",")
    attrs = {}
    if toks.accept("{"):
        while not toks.accept("}"):
            key = toks.next()[1]
            toks.expect("=")
            spec = opdef.attrs.get(key)
            raw = _parse_attr_value(toks)
            attrs[key] = _coerce(spec.kind, raw) if spec else raw
            toks.accept(",")
    loc = ""
    if toks.accept("loc"):
        toks.expect("(")
        loc = json.loads(toks.next()[1])
        toks.expect(")")
    node = graph.add(op_name, inputs, attrs, name=loc, outputs=[n for n, _ in outs])
    for v, (name, text_type) in zip(node.outputs, outs):
        if v.type != text_type:
            raise ParseError(f"%{name}: text says {text_type}, {op_name} infers {v.type}")
        env[v.name] = v
