"""The pass manager: runs a pipeline of passes by name with the debugging switches the CLI
exposes (--passes, --print-after, --time-passes, --verify-each, --dump-dir)."""

from __future__ import annotations

import os
import re
import sys
import time

from sbc.errors import SbcError
from sbc.ir import Graph
from sbc.ir.printer import print_graph
from sbc.ir.verifier import VerificationError, verify
from sbc.passes.base import Pass, get_pass

DEFAULT_PIPELINE = ["fold-constants", "fold-reshape-transpose", "cse", "pack-matmul-weights", "dce"]
MAX_ROUNDS = 4  # the default pipeline runs to a fixed point, bounded

_SPEC = re.compile(r"^\s*([\w-]+)\s*(?:\{(.*)\})?\s*$")


def parse_pipeline(spec: str | list[str]) -> list[Pass]:
    """'fold-constants{max-elements=1024},dce' -> pass instances."""
    items = spec if isinstance(spec, list) else _split_top_level(spec)
    passes = []
    for item in items:
        m = _SPEC.match(item)
        if not m:
            raise SbcError(f"cannot read pass '{item}' (expected name or name{{option=value,...}})")
        options = dict(kv.split("=", 1) for kv in (m.group(2) or "").split(",") if kv.strip())
        passes.append(get_pass(m.group(1))(**{k.strip(): v.strip() for k, v in options.items()}))
    return passes


def _split_top_level(spec: str) -> list[str]:
    items, depth, current = [], 0, ""
    for ch in spec:
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    return [i for i in items + [current] if i.strip()]


class PassManager:
    def __init__(self, pipeline=None, *, print_after=(), time_passes=False, verify_each=False,
                 dump_dir=None, out=None):
        self.fixed_point = pipeline is None
        self.passes = parse_pipeline(DEFAULT_PIPELINE if pipeline is None else pipeline)
        self.print_after = {print_after} if isinstance(print_after, str) else set(print_after)
        self.time_passes = time_passes
        self.verify_each = verify_each
        self.dump_dir = dump_dir
        self.out = out or sys.stderr
        self.times: dict[str, float] = {}
        self.step = 0

    def run(self, graph: Graph) -> Graph:
        for _ in range(MAX_ROUNDS if self.fixed_point else 1):
            changed = False
            for p in self.passes:
                graph, modified = self.run_one(p, graph)
                changed |= modified
            if not changed:
                break
        if self.time_passes:
            self.report_times()
        return graph

    def run_one(self, p: Pass, graph: Graph) -> tuple[Graph, bool]:
        start = time.perf_counter()
        result = p.run(graph)
        self.times[p.name] = self.times.get(p.name, 0.0) + time.perf_counter() - start
        self.step += 1
        if self.verify_each:
            try:
                verify(result.graph)
            except VerificationError as e:
                raise VerificationError(f"after pass '{p.name}': {e}") from e
        if "all" in self.print_after or p.name in self.print_after:
            print(f"// ----- IR after {p.name} -----", file=self.out)
            print(print_graph(result.graph), file=self.out)
        if self.dump_dir:
            os.makedirs(self.dump_dir, exist_ok=True)
            with open(os.path.join(self.dump_dir, f"{self.step:02d}-{p.name}.sbcir"), "w") as f:
                f.write(print_graph(result.graph))
        return result.graph, result.modified

    def report_times(self) -> None:
        total = sum(self.times.values()) or 1e-9
        print("pass                          time (ms)   share", file=self.out)
        for name, t in sorted(self.times.items(), key=lambda kv: -kv[1]):
            print(f"{name:<28} {t * 1e3:10.2f}   {t / total:5.1%}", file=self.out)


def run_passes(graph: Graph, pipeline=None, *, print_after=(), time_passes=False,
               verify_each=False, dump_dir=None, out=None) -> Graph:
    """Run `pipeline` (names, a comma-separated string, or None for DEFAULT_PIPELINE)."""
    return PassManager(pipeline, print_after=print_after, time_passes=time_passes,
                       verify_each=verify_each, dump_dir=dump_dir, out=out).run(graph)
