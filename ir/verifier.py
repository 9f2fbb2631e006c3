"""The IR verifier: what every pass must preserve.

- SSA: every value is defined once (input, param or one node output) and before its uses;
- every op is declared, arity and attributes match its declaration;
- each node's output types equal what its declaration infers from its inputs now;
- params carry data of their declared type; graph outputs are defined and uniquely named;
- a graph attribute (a Scan body) passes all of the above on its own: it is closed (it uses
  only its own inputs and nodes) and holds no params (weights are passed in as inputs).
"""

from __future__ import annotations

from sbc.errors import SbcError
from sbc.ir.graph import Graph
from sbc.ir.registry import OpError, get_op, infer_node
from sbc.ir.types import type_of


class VerificationError(SbcError, ValueError):
    pass


def verify(graph: Graph) -> None:
    """Raise VerificationError listing every problem found."""
    problems = list(_problems(graph))
    if problems:
        raise VerificationError(f"IR verification failed ({len(problems)} problem(s)):\n  "
                                + "\n  ".join(problems))


def _problems(graph: Graph):
    defined: set[int] = set()
    names: set[str] = set()

    def define(v, what):
        if id(v) in defined:
            yield f"{what} %{v.name} is defined twice"
        if v.name in names:
            yield f"name %{v.name} is used by two values"
        defined.add(id(v))
        names.add(v.name)

    for v in graph.inputs:
        yield from define(v, "input")
    for p in graph.params:
        yield from define(p, "param")
        if p.data is None:
            yield f"param %{p.name} has no data"
        elif type_of(p.data) != p.type:
            yield f"param %{p.name}: declared {p.type}, data is {type_of(p.data)}"

    for node in graph.nodes:
        for i, v in enumerate(node.inputs):
            if v is not None and id(v) not in defined:
                yield f"{node.where()}: input {i} %{v.name} is not defined before use"
        yield from _check_node(node)
        yield from _check_subgraphs(node)
        for v in node.outputs:
            if v.producer is not node:
                yield f"{node.where()}: output %{v.name} does not point back to its node"
            yield from define(v, "value")

    for v in graph.outputs:
        if id(v) not in defined:
            yield f"graph output %{v.name} is not defined"
    if len(graph.outputs) != len(graph.output_names):
        yield "graph outputs and output names differ in number"
    if len(set(graph.output_names)) != len(graph.output_names):
        yield f"graph output names are not unique: {graph.output_names}"


def _check_node(node):
    if get_op(node.op) is None:
        yield f"{node.where()}: op '{node.op}' is not declared"
        return
    stored = [v.type for v in node.outputs]
    try:
        inferred, _ = infer_node(node)
    except OpError as e:
        yield str(e)
        return
    if inferred != stored:
        yield (f"{node.where()}: output types {[str(t) for t in stored]} differ from inferred "
               f"{[str(t) for t in inferred]}")


def _check_subgraphs(node):
    """Problems of the node's graph attributes, each prefixed by where it lies."""
    for key, value in node.attrs.items():
        if not isinstance(value, Graph):
            continue
        where = f"{node.where()}, attribute '{key}'"
        if value.params:
            yield f"{where}: a nested graph holds no params (%{value.params[0].name})"
        for problem in _problems(value):
            yield f"{where}: {problem}"
