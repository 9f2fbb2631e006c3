"""Pass infrastructure.

- `Pass`: a small class with a `name`, an `Options` dataclass of typed options and
  `run(graph) -> PassResult(graph, modified)`. A pass may mutate the graph in place; it must
  leave it topologically sorted and verifiable.
- A lazy registry: `register_pass` (a class decorator), `get_pass(name)`, `available_passes()`.
  The built-in passes are imported on first lookup, so importing `sbc.passes` stays cheap.
- `RewriteRule`: pattern (`ops`, the root op names) + `match(node) -> Match | Miss` (the
  bindings the rewrite needs, or why not: `explain` lists these near misses) +
  `rewrite(graph, node, match)`. `apply_rules` applies rules to every node until nothing
  matches; `RulePass` is a pass that does only that.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import ClassVar

from sbc.errors import UnsupportedError
from sbc.ir import Graph, Node, Value
from sbc.ir.ops.nn import NARROW_FLOATS


@dataclass
class PassResult:
    """What a pass returns: the graph (usually the same object), whether it changed, and the
    facts it learned on the way (spike-sparsity's kernel choices...), which the manager
    collects by pass name."""
    graph: Graph
    modified: bool
    facts: dict = dataclasses.field(default_factory=dict)

    def __iter__(self):  # `graph, modified = p.run(g)` reads naturally
        return iter((self.graph, self.modified))


class Pass:
    """Subclasses set `name`, optionally an `Options` dataclass, and implement `run`.

    Options are given as keyword arguments, by field name (`max_elements`) or by the spelling
    pipeline strings use (`max-elements`); strings are converted to the field's type.
    """
    name: ClassVar[str] = ""
    # passes that must run before this one when both are in a pipeline (checked by the manager)
    runs_after: ClassVar[tuple[str, ...]] = ()

    @dataclass
    class Options:
        pass

    def __init__(self, **options):
        fields = _option_fields(self.Options)
        kwargs = {}
        for key, value in options.items():
            spelling = key.replace("_", "-")
            if spelling not in fields:
                raise UnsupportedError(f"pass '{self.name}' has no option '{spelling}'; "
                                       f"options: {self.describe_options() or 'none'}")
            field, kind = fields[spelling]
            kwargs[field.name] = _convert(value, kind, f"{self.name}{{{spelling}}}")
        self.options = self.Options(**kwargs)

    def run(self, graph: Graph) -> PassResult:
        raise NotImplementedError

    @classmethod
    def describe_options(cls) -> str:
        """`max-elements: int = 1048576, ...`, for error messages and help."""
        return ", ".join(f"{spelling}: {kind.__name__} = {_default(f)}"
                         for spelling, (f, kind) in _option_fields(cls.Options).items())

    def __str__(self):
        """The pipeline spelling of this pass with its non-default options."""
        changed = [f"{f.name.replace('_', '-')}={getattr(self.options, f.name)}"
                   for f in dataclasses.fields(self.options)
                   if getattr(self.options, f.name) != _default(f)]
        return self.name + ("{" + ",".join(changed) + "}" if changed else "")

    __repr__ = __str__


class RulePass(Pass):
    """A pass that applies its rewrite rules until none fires; the first rule that matches a
    node wins, so `rules` are listed cheapest result first."""
    RULES: ClassVar[list[RewriteRule]] = []

    def rules(self) -> list[RewriteRule]:
        return self.RULES

    def run(self, graph: Graph) -> PassResult:
        return PassResult(graph, apply_rules(graph, self.rules()))


def _option_fields(options_cls) -> dict[str, tuple[dataclasses.Field, type]]:
    """Option spelling -> (field, resolved type); resolves `from __future__` string types."""
    hints = typing.get_type_hints(options_cls)
    return {f.name.replace("_", "-"): (f, hints[f.name]) for f in dataclasses.fields(options_cls)}


def _default(field: dataclasses.Field):
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _convert(value, kind: type, where: str):
    """A pipeline string (or Python value) as an option of type `kind`."""
    if not isinstance(value, str) or kind is str:
        return value
    text = value.strip().lower()
    if kind is bool and text in _TRUE + _FALSE:
        return text in _TRUE
    try:
        if kind is int:
            return int(text, 0)  # 65536, 0x10000, 1_000_000
        if kind is float:
            return float(text)
    except ValueError:
        pass
    raise UnsupportedError(f"{where}: cannot read {value!r} as {kind.__name__}")


# -- registry ------------------------------------------------------------------------------

_PASSES: dict[str, type[Pass]] = {}

# Imported on first lookup; each module registers its pass with @register_pass.
_BUILTIN_MODULES = ("cse", "dce", "fold_constants", "fold_reshape_transpose",
                    "fuse_linear_attention", "fuse_sliding_window_attention", "last_position",
                    "pack_matmul_weights", "to_recurrent", "fuse_spike_neurons",
                    "quantize_weights_int8", "spike_matmul", "spike_sparsity",
                    "loop_to_scan", "recognise_mixers")


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make `cls` available by `cls.name` in pipelines."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no pass name")
    old = _PASSES.get(cls.name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"pass name '{cls.name}' is taken by {old.__module__}.{old.__qualname__}")
    _PASSES[cls.name] = cls
    return cls


def _load_passes() -> None:
    import importlib
    for module in _BUILTIN_MODULES:
        importlib.import_module(f"sbc.passes.{module}")


def available_passes() -> list[str]:
    _load_passes()
    return sorted(_PASSES)


def get_pass(name: str) -> type[Pass]:
    """The pass class registered as `name`; UnsupportedError lists the available ones."""
    _load_passes()
    if name not in _PASSES:
        raise UnsupportedError(f"unknown pass '{name}'; available: {', '.join(sorted(_PASSES))}")
    return _PASSES[name]


# -- rewrite rules -------------------------------------------------------------------------

@dataclass
class Miss:
    """Why a rule does not apply at a node, in words, and the value at fault when there is one."""
    reason: str
    value: Value | None = None

    def __str__(self):
        return self.reason if self.value is None else f"{self.reason} (%{self.value.name})"


class Match(dict):
    """What a rule found at its root: named bindings, read as `m["x"]` or `m.x`."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class RewriteRule:
    """One local rewrite rooted at a node whose op is in `ops` (the pattern).

    `match(node)` returns what the rewrite needs (a Match, or any object holding the pieces)
    or a Miss saying why the rule does not apply; `rewrite(graph, node, match)` builds the
    replacement from that match and points the uses of the node's outputs at it
    (Graph.replace_uses); `apply_rules` then removes the node and re-sorts the graph.
    `check` and `explain` are derived from `match`.
    """
    ops: ClassVar[tuple[str, ...]] = ()

    def matches(self, node: Node) -> bool:
        return node.op in self.ops

    def match(self, node: Node) -> object | Miss:
        raise NotImplementedError

    def rewrite(self, graph: Graph, node: Node, match) -> None:
        raise NotImplementedError

    def check(self, node: Node) -> str | None:
        """None when the rule applies at `node`, else why not."""
        found = self.match(node)
        return str(found) if isinstance(found, Miss) else None


MAX_SWEEPS = 16  # a bound on apply_rules' sweeps; every built-in rule shrinks the graph


def apply_rules(graph: Graph, rules: list[RewriteRule], max_sweeps: int = MAX_SWEEPS) -> bool:
    """Apply `rules` to every node, sweeping until none fires; return whether any fired.

    The first matching rule wins. After each sweep, rewritten nodes whose outputs are no
    longer used are removed (so they cannot match again) and the graph is re-sorted; nodes a
    rewrite created are visited in the next sweep.
    """
    modified = False
    for _ in range(max_sweeps):
        rewritten = []
        for node in list(graph.nodes):
            for rule in rules:
                found = rule.match(node) if rule.matches(node) else None
                if found is not None and not isinstance(found, Miss):
                    rule.rewrite(graph, node, found)
                    rewritten.append(node)
                    break
        if not rewritten:
            break
        _remove_dead(graph, rewritten)
        graph.toposort()  # rewrites append their new nodes at the end
        modified = True
    return modified


def stored_weight(w: Value) -> Value | None:
    """The param holding weight `w`: w itself, or the bf16/f16 param an f32 Cast widens (a
    weight kept in the dtype it was stored in); None when `w` is not a weight."""
    cast = w.producer
    if cast is not None and cast.op == "Cast" and w.dtype == "f32":
        w = cast.inputs[0]
        if w.dtype not in NARROW_FLOATS:
            return None
    return w if w.producer is None and w.data is not None else None


def drop_replaced(graph: Graph, node: Node) -> None:
    """Remove `node`, whose outputs a rewrite no longer uses, and going up every node and param
    that only it read; a dropped param's data is freed at once. A rewrite that re-lays out
    weights calls it: the sweep's list of nodes would otherwise keep each old weight alive
    beside its new copy until the pass ends (a whole model's weights twice)."""
    uses: dict[int, int] = {}
    for v in [v for n in graph.nodes for v in n.inputs] + graph.outputs:
        if v is not None:
            uses[id(v)] = uses.get(id(v), 0) + 1
    params = {id(p) for p in graph.params}
    dead, freed, stack = set(), [], [node]
    while stack:
        n = stack.pop()
        if id(n) in dead or any(uses.get(id(v)) for v in n.outputs):
            continue
        dead.add(id(n))
        for v in n.inputs:
            if v is None or uses.get(id(v)) is None:
                continue
            uses[id(v)] -= 1
            if uses[id(v)] == 0 and v.producer is not None:
                stack.append(v.producer)
            elif uses[id(v)] == 0 and id(v) in params:
                freed.append(v)
    graph.nodes = [n for n in graph.nodes if id(n) not in dead]
    graph.params = [p for p in graph.params if id(p) not in {id(f) for f in freed}]
    for v in freed:
        v.data = None


def _remove_dead(graph: Graph, candidates: list[Node]) -> None:
    """Drop the candidates whose outputs nothing uses any more (one scan for all of them)."""
    used = {id(v) for n in graph.nodes for v in n.inputs if v is not None}
    used |= {id(v) for v in graph.outputs}
    dead = {id(n) for n in candidates if not any(id(v) in used for v in n.outputs)}
    graph.nodes = [n for n in graph.nodes if id(n) not in dead]


def explain(graph: Graph, rules: list[RewriteRule]) -> list[str]:
    """Near misses: for each node a rule's pattern matches but its check rejects, why."""
    notes = []
    for node in graph.nodes:
        for rule in rules:
            if rule.matches(node):
                why = rule.check(node)
                if why is not None:
                    notes.append(f"{type(rule).__name__} at {node.where()}: {why}")
    return notes


# -- pattern helpers shared by rules ------------------------------------------------------------

def producer(v: Value | None, *ops: str) -> Node | None:
    """The node that produced v if its op is one of `ops`."""
    node = None if v is None else v.producer
    return node if node is not None and node.op in ops else None


def scalar(v: Value | None) -> float | None:
    """The value of a compile-time scalar (any shape with one element), else None."""
    if v is None or v.data is None or v.data.dtype == object or v.data.size != 1:
        return None
    return float(v.data.reshape(-1)[0])
