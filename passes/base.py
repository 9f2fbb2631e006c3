"""Pass infrastructure: passes are small classes with a name and typed options, registered by
name; a pass returns PassResult(graph, modified). Rewrite rules are pattern + check + rewrite,
where `check` returns None on a match or says in words why the candidate does not match."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from sbc.errors import UnsupportedError
from sbc.ir import Graph, Node


@dataclass
class PassResult:
    graph: Graph
    modified: bool


class Pass:
    """Subclasses set `name`, optionally an `Options` dataclass, and implement `run`."""
    name: ClassVar[str]

    @dataclass
    class Options:
        pass

    def __init__(self, **options):
        fields = {f.name.replace("_", "-"): f for f in dataclasses.fields(self.Options)}
        kwargs = {}
        for key, text in options.items():
            field = fields.get(key.replace("_", "-"))
            if field is None:
                raise UnsupportedError(f"pass '{self.name}' has no option '{key}'; options: "
                                       f"{', '.join(fields) or 'none'}")
            kwargs[field.name] = _convert(text, field.type, f"{self.name}{{{key}}}")
        self.options = self.Options(**kwargs)

    def run(self, graph: Graph) -> PassResult:
        raise NotImplementedError


def _convert(text, type_name, where):
    if not isinstance(text, str):
        return text
    try:
        return {"int": int, "float": float, "bool": lambda s: s.lower() in ("1", "true", "yes"),
                "str": str}[str(type_name)](text)
    except (KeyError, ValueError):
        raise UnsupportedError(f"{where}: cannot read {text!r} as {type_name}") from None


_PASSES: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    _PASSES[cls.name] = cls
    return cls


def _load_passes() -> None:
    import sbc.passes.cse  # noqa: F401  (importing registers)
    import sbc.passes.dce  # noqa: F401
    import sbc.passes.fold_constants  # noqa: F401
    import sbc.passes.fold_reshape_transpose  # noqa: F401
    import sbc.passes.pack_matmul_weights  # noqa: F401


def available_passes() -> list[str]:
    _load_passes()
    return sorted(_PASSES)


def get_pass(name: str) -> type[Pass]:
    _load_passes()
    if name not in _PASSES:
        raise UnsupportedError(f"unknown pass '{name}'; available: {', '.join(sorted(_PASSES))}")
    return _PASSES[name]


class RewriteRule:
    """One local rewrite: `check(node)` -> None when it applies, else the reason it does not;
    `rewrite(graph, node)` replaces the node's uses."""
    ops: ClassVar[tuple[str, ...]] = ()

    def check(self, node: Node) -> str | None:
        raise NotImplementedError

    def rewrite(self, graph: Graph, node: Node) -> None:
        raise NotImplementedError


def apply_rules(graph: Graph, rules: list[RewriteRule]) -> bool:
    """Apply rules to every matching node once; returns whether anything changed."""
    modified = False
    for node in list(graph.nodes):
        for rule in rules:
            if node.op in rule.ops and rule.check(node) is None:
                rule.rewrite(graph, node)
                modified = True
                break
    return modified


def explain(graph: Graph, rules: list[RewriteRule]) -> list[str]:
    """Why each candidate node (right op, no match) was not rewritten."""
    notes = []
    for node in graph.nodes:
        for rule in rules:
            if node.op in rule.ops:
                why = rule.check(node)
                if why is not None:
                    notes.append(f"{type(rule).__name__} at {node.where()}: {why}")
    return notes
