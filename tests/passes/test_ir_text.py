"""Pass tests written as IR text: each tests/passes/ir/*.sbcir file is a graph with `// RUN:`
lines, run the way lit runs them (`%s` is the file, `%S` its directory):

    // RUN: sbc opt %s --passes fold-reshape-transpose | filecheck %s

`sbc opt` runs in-process (sbc.cli.main; a new process would spend seconds importing), its
output is piped into FileCheck (the `filecheck` package, LLVM FileCheck's Python port), which
reads the file's `// CHECK:` lines. Each RUN line's pipeline is also checked the way every pass
test must be: the verifier passes before and after, and the graph computes what it did before
(reference interpreter, random inputs; `// TOLERANCE: x` in a file loosens the comparison for a
lossy pass). See docs/WRITING_A_PASS.md.
"""

from __future__ import annotations

import copy
import io
import re
import shlex
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from sbc.cli import _parser, main
from sbc.ir import Graph, numpy_dtype
from sbc.ir.interpreter import run
from sbc.ir.parser import parse_graph
from sbc.ir.verifier import verify
from sbc.passes import available_passes, get_pass, parse_pipeline, run_passes
from tests.passes.helpers import random_feeds

IR_DIR = Path(__file__).parent / "ir"
FILECHECK = Path(sys.executable).parent / "filecheck"  # the venv's, not one on PATH
SIZES = {"batch": 2, "seq": 7}  # of the random inputs' symbolic dims (any other symbol: 3)
TOLERANCE = 1e-5  # passes move work around; a fusion may reorder a sum

RUN = re.compile(r"^[ \t]*//[ \t]*RUN:(.*)$", re.MULTILINE)
TOLERANCE_LINE = re.compile(r"^[ \t]*//[ \t]*TOLERANCE:(.*)$", re.MULTILINE)


def run_lines(path: Path) -> list[tuple[list[str], list[str]]]:
    """Each `// RUN: sbc opt ARGS | filecheck ARGS` as (opt args, filecheck args)."""
    lines = []
    for command in RUN.findall(path.read_text()):
        command = command.replace("%s", shlex.quote(str(path)))
        command = command.replace("%S", shlex.quote(str(path.parent)))
        opt, _, check = command.partition("|")
        opt_args, check_args = shlex.split(opt), shlex.split(check)
        if opt_args[:2] != ["sbc", "opt"] or check_args[:1] != ["filecheck"]:
            raise ValueError(f"{path.name}: a RUN line reads `sbc opt ... | filecheck ...`, "
                             f"not {command.strip()!r}")
        lines.append((opt_args[2:], check_args[1:]))
    return lines


def pipeline_of(opt_args: list[str]) -> str | None:
    """The --passes of an `sbc opt` command line, read as sbc opt reads it."""
    return _parser().parse_args(["opt", *opt_args]).passes


def tolerance_of(text: str) -> float:
    found = TOLERANCE_LINE.findall(text)
    return float(found[-1]) if found else TOLERANCE


RUNS = [(path, i, opt_args, check_args) for path in sorted(IR_DIR.glob("**/*.sbcir"))
        for i, (opt_args, check_args) in enumerate(run_lines(path), start=1)]
CASES = [pytest.param(path, opt_args, check_args, id=f"{path.stem}:{i}")
         for path, i, opt_args, check_args in RUNS]


def sbc_opt(args: list[str]) -> str:
    """`sbc opt ARGS` in-process: its stdout, or the test fails with its one-line error."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["opt", *args])
    if code != 0:
        pytest.fail(f"sbc opt {shlex.join(args)} exited {code}: {err.getvalue().strip()}")
    return out.getvalue()


def filecheck(args: list[str], text: str) -> None:
    proc = subprocess.run([str(FILECHECK), *args], input=text, capture_output=True, text=True,
                          timeout=60)
    if proc.returncode != 0:
        pytest.fail(f"FileCheck failed:\n{proc.stderr}{proc.stdout}", pytrace=False)


@pytest.mark.parametrize("path, opt_args, check_args", CASES)
def test_filecheck(path, opt_args, check_args):
    filecheck(check_args, sbc_opt(opt_args))


@pytest.mark.parametrize("path, opt_args, check_args", CASES)
def test_numerics_and_verifier(path, opt_args, check_args):
    """What the pipeline makes computes what the graph computed before, and both verify."""
    text = path.read_text()
    graph = parse_graph(text)
    before = copy.deepcopy(graph)
    verify(before)
    feeds = random_feeds(before, SIZES)
    expected = run(before, feeds)
    after = run_passes(graph, pipeline_of(opt_args) or [], fixed_point=False)
    verify(after)
    got = run(after, {**feeds, **zero_inputs(after, feeds)})
    assert list(got)[:len(expected)] == list(expected), "the graph's output names changed"
    tolerance = tolerance_of(text)
    for name, want in expected.items():
        assert got[name].dtype == want.dtype, name
        np.testing.assert_allclose(got[name], at_last_position(want, got[name].shape),
                                   rtol=tolerance, atol=tolerance, err_msg=name)


def zero_inputs(graph: Graph, feeds: dict) -> dict:
    """Zeros for the inputs a pass added (to-recurrent's state and position): the step program
    at position 0 from a zero state computes what the whole-sequence graph did."""
    return {v.name: np.zeros([d if isinstance(d, int) else SIZES.get(str(d), 3) for d in v.shape],
                             numpy_dtype(v.dtype))
            for v in graph.inputs if v.name not in feeds}


def at_last_position(want: np.ndarray, shape: tuple) -> np.ndarray:
    """last-position leaves one position where the sequence was: compare it with the last."""
    if want.shape == shape:
        return want
    return want[tuple(slice(-1, None) if n == 1 != m else slice(None)
                      for n, m in zip(shape, want.shape))]


def test_every_pass_has_an_ir_text_test():
    tested = {p.name for _, _, opt_args, _ in RUNS
              for p in parse_pipeline(pipeline_of(opt_args) or [])}
    built_in = {n for n in available_passes() if get_pass(n).__module__.startswith("sbc.passes.")}
    assert built_in - tested == set(), "passes without a tests/passes/ir file"
