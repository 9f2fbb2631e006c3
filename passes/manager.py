"""The pass manager: runs a pipeline of passes by name, with the debugging switches the CLI
exposes 1:1 (--passes, --print-after, --time-passes, --verify-each, --dump-dir).

Pipeline syntax: comma-separated pass names, each optionally followed by options in braces,
separated by commas or spaces:

    fold-constants{max-elements=65536},fold-reshape-transpose,cse,dce

The default pipeline runs to a fixed point (at most MAX_ROUNDS rounds while a pass changed
something); an explicit pipeline runs once, in the order given.
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import TextIO

from sbc.errors import UnsupportedError
from sbc.ir import Graph
from sbc.ir.printer import print_graph
from sbc.ir.verifier import VerificationError, verify
from sbc.passes.base import Pass, get_pass

# loop-to-scan turns Loops that walk tensors along an axis into Scans, which
# fuse-linear-attention then raises like any other Scan.
# recognise-mixers takes the token mixers the two syntactic fusions left, whatever their
# spelling, and decides what they compute by running them (slower, so it goes second).
# pack-matmul-weights (added with the MatMulPacked kernel) runs after folding, so weights
# that fold-constants produced (e.g. transposed) are packed too.
# fuse-spike-neurons (exact) and spike-matmul (integer matmuls where weights are int8; with
# f32 weights it does nothing unless told to) run before to-recurrent, which knows their ops;
# `--quantize w8` adds quantize-weights-int8 right before spike-matmul.
DEFAULT_PIPELINE = ["fold-constants", "fold-reshape-transpose", "cse", "loop-to-scan",
                    "fuse-linear-attention", "fuse-sliding-window-attention", "recognise-mixers",
                    "fuse-spike-neurons",
                    "spike-matmul", "to-recurrent", "pack-matmul-weights", "dce"]
MAX_ROUNDS = 4

_ITEM = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*(?:\{([^{}]*)\})?\s*$")
_OPTION = re.compile(r"^([A-Za-z0-9_-]+)=(.*)$")


def parse_pipeline(spec: str | list[str | Pass] | tuple[str | Pass, ...]) -> list[Pass]:
    """'fold-constants{max-elements=1024},dce' (or a list of such items, or of Pass
    instances, which are taken as they are) -> pass instances.

    Unknown passes, unknown options and unreadable values raise UnsupportedError saying what
    exists.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    passes = []
    for item in items:
        passes += [item] if isinstance(item, Pass) else [_parse_item(t) for t in _split_top_level(item)]
    return passes


def _parse_item(item: str) -> Pass:
    m = _ITEM.match(item)
    if not m:
        raise UnsupportedError(f"cannot read pass '{item.strip()}' in the pipeline; expected "
                               f"name or name{{option=value,...}}")
    cls = get_pass(m.group(1))
    options = {}
    for word in re.split(r"[,\s]+", (m.group(2) or "").strip()):
        if not word:
            continue
        om = _OPTION.match(word)
        if not om:
            raise UnsupportedError(f"cannot read option '{word}' of pass '{cls.name}'; "
                                   f"expected option=value (options: "
                                   f"{cls.describe_options() or 'none'})")
        options[om.group(1)] = om.group(2)
    return cls(**options)


def check_order(passes: list[Pass]) -> None:
    """Each pass's `runs_after` constraints hold in this pipeline; UnsupportedError says which
    pair is the wrong way round."""
    first_at = {}
    for i, p in enumerate(passes):
        first_at.setdefault(p.name, i)
    for i, p in enumerate(passes):
        for before in p.runs_after:
            if first_at.get(before, -1) > i:
                raise UnsupportedError(f"pass '{p.name}' must run after '{before}' (it works on "
                                       f"what '{before}' produces); put '{before}' first")


def insert_in_order(pipeline: list[str], name: str) -> list[str]:
    """`pipeline` (pass names) with `name` added right after the last pass it must follow
    (its `runs_after`), which check_order then confirms is before every pass that must
    follow it."""
    after = set(get_pass(name).runs_after)
    at = max((i + 1 for i, item in enumerate(pipeline) if _name_of(item) in after), default=0)
    pipeline = pipeline[:at] + [name] + pipeline[at:]
    check_order(parse_pipeline(pipeline))
    return pipeline


def _name_of(item: str) -> str:
    return item.split("{", 1)[0].strip()


def _split_top_level(spec: str) -> list[str]:
    """Split at commas outside braces: 'a{x=1,y=2},b' -> ['a{x=1,y=2}', 'b']."""
    items, depth, current = [], 0, ""
    for ch in spec:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    if depth != 0:
        raise UnsupportedError(f"unbalanced braces in pass pipeline '{spec}'")
    return [i for i in items + [current] if i.strip()]


class PassManager:
    """Runs passes over a graph; see run_passes for the switches."""

    def __init__(self, pipeline: str | list[str] | None = None, *,
                 print_after: str | list[str] | tuple[str, ...] = (), time_passes: bool = False,
                 verify_each: bool = False, dump_dir: str | os.PathLike | None = None,
                 out: TextIO | None = None, max_rounds: int = MAX_ROUNDS,
                 fixed_point: bool | None = None):
        self.passes = parse_pipeline(DEFAULT_PIPELINE if pipeline is None else pipeline)
        check_order(self.passes)
        fixed_point = pipeline is None if fixed_point is None else fixed_point
        self.rounds = max_rounds if fixed_point else 1
        self.print_after = _print_after_set(print_after, self.passes)
        self.time_passes = time_passes
        self.verify_each = verify_each
        self.dump_dir = dump_dir
        self.out = out
        self.times: dict[str, list[float]] = {}  # pass name -> wall time of each run
        self.facts: dict[str, dict] = {}  # pass name -> the facts its runs reported
        self.step = 0

    def run(self, graph: Graph) -> Graph:
        if self.verify_each:
            self._verify(graph, "IR is invalid before the first pass (as imported)")
        for _ in range(self.rounds):
            changed = False
            for p in self.passes:
                graph, modified = self.run_one(p, graph)
                changed |= modified
            if not changed:
                break  # a fixed point: another round would change nothing
        if self.time_passes:
            self.report_times()
        return graph

    def run_one(self, p: Pass, graph: Graph) -> tuple[Graph, bool]:
        start = time.perf_counter()
        result = p.run(graph)
        self.times.setdefault(p.name, []).append(time.perf_counter() - start)
        if result.facts:
            self.facts.setdefault(p.name, {}).update(result.facts)
        self.step += 1
        if self.verify_each:
            self._verify(result.graph, f"after pass '{p}' (step {self.step})")
        if "all" in self.print_after or p.name in self.print_after:
            changed = "" if result.modified else " (unchanged)"
            self._print(f"// ----- IR after {p} (step {self.step}){changed} -----")
            self._print(print_graph(result.graph), end="")
        self._dump(result.graph, p.name)
        return result.graph, result.modified

    def _verify(self, graph: Graph, where: str) -> None:
        try:
            verify(graph)
        except VerificationError as e:
            raise VerificationError(f"{where}: {e}") from e

    def _dump(self, graph: Graph, label: str) -> None:
        """NN-<label>.sbcir: the IR text after step NN (01 is the first pass)."""
        if not self.dump_dir:
            return
        os.makedirs(self.dump_dir, exist_ok=True)
        path = os.path.join(self.dump_dir, f"{self.step:02d}-{label}.sbcir")
        with open(path, "w") as f:
            f.write(print_graph(graph))

    def _print(self, text: str, end: str = "\n") -> None:
        print(text, file=self.out or sys.stderr, end=end)  # stderr looked up now: capture-safe

    def report_times(self) -> None:
        """A table of wall time per pass, largest first, with a total."""
        total = sum(sum(ts) for ts in self.times.values())
        self._print(f"{'pass':<28} {'runs':>4} {'time (ms)':>10} {'share':>7}")
        for name, ts in sorted(self.times.items(), key=lambda kv: -sum(kv[1])):
            share = sum(ts) / total if total else 0.0
            self._print(f"{name:<28} {len(ts):>4} {sum(ts) * 1e3:>10.2f} {share:>7.1%}")
        self._print(f"{'total':<28} {self.step:>4} {total * 1e3:>10.2f} {1:>7.1%}")


def _print_after_set(print_after, passes: list[Pass]) -> set[str]:
    """Names to print after: 'all', names, or comma-separated names; unknown names raise."""
    items = [print_after] if isinstance(print_after, str) else list(print_after or ())
    names = {n.strip() for item in items for n in item.split(",") if n.strip()}
    in_pipeline = {p.name for p in passes}
    unknown = names - in_pipeline - {"all"}
    if unknown:
        raise UnsupportedError(f"--print-after: {', '.join(sorted(unknown))} not in the pipeline; "
                               f"use 'all' or one of: {', '.join(p.name for p in passes)}")
    return names


def run_passes(graph: Graph, pipeline: str | list[str] | None = None, *,
               print_after: str | list[str] | tuple[str, ...] = (), time_passes: bool = False,
               verify_each: bool = False, dump_dir: str | os.PathLike | None = None,
               out: TextIO | None = None, fixed_point: bool | None = None) -> Graph:
    """Run `pipeline` on `graph` and return the result (the same graph object, mutated).

    pipeline: None for DEFAULT_PIPELINE (to a fixed point), else a pipeline string or a list
    of items, run once (fixed_point: to a fixed point like the default). print_after: 'all' or pass names: print the IR after those passes.
    time_passes: print a table of per-pass wall times at the end. verify_each: verify the IR
    before the first pass and after each, naming the pass that broke it. dump_dir: write
    NN-<pass>.sbcir after each pass (NN counts from 01). out: where printing goes (stderr).
    """
    return PassManager(pipeline, print_after=print_after, time_passes=time_passes,
                       verify_each=verify_each, dump_dir=dump_dir, out=out,
                       fixed_point=fixed_point).run(graph)
