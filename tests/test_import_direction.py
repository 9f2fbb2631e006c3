"""The floors of the pipeline, checked: imports point down, and no module imports itself back.

    sbc.errors, sbc.version                  the ground: import nothing of sbc
    ir                                       the ground only
    frontend, passes, runtimes, models       ir (models: nothing of sbc)
    codegen                                  ir and runtimes (it writes what the runtimes read)
    the API (sbc.api, sbc.cli, sbc.report, ...)   anything

Every import counts, at module level or inside a function (a late import is still a
dependency); only `if TYPE_CHECKING:` blocks, which never run, are left out. Run as a script
(`python tests/test_import_direction.py`) it prints each module's floor and the cycles found.
"""

from __future__ import annotations

import ast
import pathlib

import networkx as nx

ROOT = pathlib.Path(__file__).resolve().parent.parent
# top-level folder -> the package it installs as (pyproject.toml's package-dir)
PACKAGES = {"sbc": "sbc", "frontend": "sbc.frontend", "ir": "sbc.ir", "passes": "sbc.passes",
            "codegen": "sbc.codegen", "runtimes": "sbc.runtimes", "models": "sbc.models"}
GROUND = {"sbc.errors", "sbc.version"}
MAY_IMPORT = {
    "ground": set(),
    "ir": {"ground"},
    "frontend": {"ground", "ir"},
    "passes": {"ground", "ir"},
    "runtimes": {"ground", "ir"},
    "models": {"ground"},
    "codegen": {"ground", "ir", "runtimes"},
    "api": {"ground", "ir", "frontend", "passes", "runtimes", "models", "codegen"},
}


def modules() -> dict[str, pathlib.Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts
                     if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def floor(module: str) -> str:
    if module in GROUND:
        return "ground"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PACKAGES else "api"


def imports(path: pathlib.Path, known: dict) -> set[str]:
    """The sbc modules `path` imports, resolved to the longest known module name."""
    names = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from sbc import version` imports the module sbc.version
            names |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known
                      else node.module for a in node.names}
    resolved = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            resolved.add(name)
    return resolved


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:` (annotations only)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> nx.DiGraph:
    known = modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(known)
    for module, path in known.items():
        graph.add_edges_from((module, target) for target in imports(path, known) if target != module)
    return graph


def test_imports_point_down():
    graph = import_graph()
    upward = [f"{a} ({floor(a)}) imports {b} ({floor(b)})" for a, b in graph.edges
              if floor(b) != floor(a) and floor(b) not in MAY_IMPORT[floor(a)]]
    assert not upward, "imports that point up or sideways:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    cycles = [sorted(c) for c in nx.strongly_connected_components(import_graph()) if len(c) > 1]
    assert not cycles, f"modules that import each other: {cycles}"


def test_the_checker_sees_an_upward_import(tmp_path):
    """A pass importing the runtime (an arrow pointing sideways) is caught, even when late."""
    path = tmp_path / "bad_pass.py"
    path.write_text("def f():\n    from sbc.runtimes.artifact import read_artifact\n")
    known = modules()
    (target,) = imports(path, known)
    assert target == "sbc.runtimes.artifact"
    assert floor(target) not in MAY_IMPORT[floor("sbc.passes.bad_pass")]


if __name__ == "__main__":
    g = import_graph()
    for module in sorted(g):
        print(f"{floor(module):<9} {module}")
    print("cycles:", [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1])
