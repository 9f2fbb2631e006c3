"""Run one fuzz case through onnxruntime, sbc, sbc's reference interpreter and ONNX's reference
implementation (onnx.reference), and judge it.

The allowed outcomes, with onnxruntime (ORT) as the reference:
  match       ORT runs; sbc compiles and runs and its outputs equal ORT's (floats within
              the rounding error the values they went through allow, see _compare_floats;
              NaN where ORT has NaN, infs equal; integers and bools exactly)
  sbc_error   ORT runs; sbc refuses with its own one-line SbcError (e.g. an unsupported case)
  both_error  ORT fails at run time (e.g. an out-of-range Gather index); sbc raises an SbcError
  ort_reject  ORT refuses to load the model: the example is discarded
  ort_differs sbc differs from ORT (values, or ORT fails at run time) but computes what ONNX's
              reference implementation computes: ORT's own bugs are not sbc's failures
Anything else is a failure: a mismatch, values where ORT failed, another exception type, a
multi-line message, an SbcError wrapping a bug in sbc's code (an AttributeError, IndexError,
...), a crash (the worker process dies) or a hang. The reference interpreter run on the
imported graph is held to the same standard, so a wrong oracle is found too.

Everything runs in a worker process (`Worker`) so that a segfault is an outcome, not the end
of pytest. `python -m tests.fuzz.check case.onnx` replays a saved case (feeds in case.npz).
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from dataclasses import dataclass

import numpy as np

RTOL, ATOL = 1e-4, 1e-4  # float32 (about 800 eps); see _compare_floats
HANG_SECONDS = 300  # compiling a graph of a few ops takes well under a second


@dataclass
class Result:
    """What one engine did with the case."""
    arrays: dict | None = None
    error: str | None = None  # "TypeName: message"
    sbc_error: bool = False    # the error is an sbc.errors.SbcError
    stage: str = ""            # ORT: "load" or "run"; sbc: "compile" or "run"
    seconds: float = 0.0       # sbc: compile time
    cause: str | None = None   # the exception an SbcError wraps (its __cause__ chain's root)
    scales: dict | None = None  # interpreter: output name -> rounding error scale (rounding.py)


@dataclass
class Outcome:
    kind: str          # match, sbc_error, both_error, ort_reject, ort_differs, failure
    message: str = ""
    compile_seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.kind == "failure"


# Python errors that mean a bug in sbc's own code, also when an SbcError wraps them (e.g.
# "CompileError: TVM failed to build the model" caused by an AttributeError in a schedule)
PROGRAMMING_ERRORS = {"AttributeError", "NameError", "TypeError", "KeyError", "IndexError",
                      "AssertionError", "UnboundLocalError", "ZeroDivisionError", "RecursionError"}


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _raised(e: BaseException, **kw) -> Result:
    """The Result of sbc (or its interpreter) raising `e`, with the cause it wraps."""
    from sbc.errors import SbcError
    root = e
    while root.__cause__ is not None:
        root = root.__cause__
    cause = _error(root).splitlines()[0][:300] if root is not e else None
    return Result(error=_error(e), sbc_error=isinstance(e, SbcError), cause=cause, **kw)


def run_ort(model_bytes: bytes, feeds: dict) -> Result:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the machine's other core compiles
    options.log_severity_level = 4  # run-time errors are expected outcomes, not log noise
    try:
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as e:
        return Result(error=_error(e), stage="load")
    try:
        names = [o.name for o in session.get_outputs()]
        return Result(arrays=dict(zip(names, session.run(names, feeds))))
    except Exception as e:
        return Result(error=_error(e), stage="run")


def run_sbc(model_bytes: bytes, feeds: dict) -> Result:
    import onnx

    import sbc
    stage, start, seconds = "compile", time.perf_counter(), 0.0
    try:
        module = sbc.compile(onnx.load_from_string(model_bytes), target="cpu")
        seconds, stage = time.perf_counter() - start, "run"
        return Result(arrays=module.run(feeds), seconds=seconds)
    except Exception as e:
        seconds = seconds or time.perf_counter() - start
        return _raised(e, stage=stage, seconds=seconds)


def run_interpreter(model_bytes: bytes, feeds: dict) -> Result:
    """The reference interpreter on the imported graph (before any pass)."""
    import onnx

    from sbc.frontend import import_onnx
    from sbc.ir.interpreter import run
    try:
        graph = import_onnx(onnx.load_from_string(model_bytes))
    except Exception as e:
        return _raised(e, stage="import")
    try:
        with np.errstate(all="ignore"):  # NaN and inf are part of the fuzzing
            arrays = run(graph, feeds)
    except Exception as e:
        return _raised(e, stage="run")
    return Result(arrays=arrays, scales=_error_scales(graph, feeds))


def _error_scales(graph, feeds: dict) -> dict | None:
    """The rounding error scales of the outputs (tests/fuzz/rounding.py); None if they cannot
    be computed, and the judge then compares with the values alone."""
    from tests.fuzz.rounding import error_scales
    try:
        return error_scales(graph, feeds)
    except Exception:
        return None


def run_onnx_reference(model_bytes: bytes, feeds: dict) -> Result:
    """ONNX's own reference implementation: the second opinion where sbc and ORT differ."""
    import onnx
    from onnx.reference import ReferenceEvaluator
    try:
        with np.errstate(all="ignore"):
            session = ReferenceEvaluator(onnx.load_from_string(model_bytes))
            names = list(session.output_names)
            return Result(arrays=dict(zip(names, session.run(None, feeds))))
    except Exception as e:
        return Result(error=_error(e), stage="run")


def evaluate(model_bytes: bytes, feeds: dict):
    """Yield (engine, Result): ORT first, then (if ORT loads the model) sbc, the interpreter and
    ONNX's reference implementation."""
    ort = run_ort(model_bytes, feeds)
    yield "ort", ort
    if ort.stage == "load":
        return
    yield "sbc", run_sbc(model_bytes, feeds)
    yield "interpreter", run_interpreter(model_bytes, feeds)
    yield "onnx_reference", run_onnx_reference(model_bytes, feeds)


# -- judging -----------------------------------------------------------------------------------

def compare(got: dict, want: dict, scales: dict | None = None) -> str | None:
    """None when `got` equals ORT's `want`, else what differs (one line). `scales`: the
    interpreter's rounding error scales by output name (see _compare_floats)."""
    if sorted(got) != sorted(want):
        return f"outputs {sorted(got)}, ORT has {sorted(want)}"
    for name, w in want.items():
        g = np.asarray(got[name])
        if g.dtype != w.dtype or g.shape != w.shape:
            return f"output {name}: {g.dtype}{list(g.shape)}, ORT gives {w.dtype}{list(w.shape)}"
        if w.dtype.kind == "f":
            problem = _compare_floats(g, w, (scales or {}).get(name))
        else:
            problem = None if np.array_equal(g, w) else \
                f"{int(np.sum(g != w))} of {w.size} elements differ, e.g. {_first_diff(g, w)}"
        if problem:
            return f"output {name}: {problem}"
    return None


def _compare_floats(g: np.ndarray, w: np.ndarray, scale: np.ndarray | None = None) -> str | None:
    """Equal NaNs and infs; finite values within ATOL + RTOL * max(|w|, scale), elementwise.
    `scale` (tests/fuzz/rounding.py) bounds how far rounding can move each value given the
    values it was computed from: a sum of terms of size 1e4 that cancels to 0.01 may be off by
    about eps * 1e4 in any summation order. Without one, |w| alone."""
    nan_g, nan_w = np.isnan(g), np.isnan(w)
    if not np.array_equal(nan_g, nan_w):
        return f"NaN at {int(np.sum(nan_g))} positions, ORT at {int(np.sum(nan_w))}, e.g. {_first_diff(g, w, nan_g != nan_w)}"
    scale = np.zeros(w.shape) if scale is None or np.shape(scale) != w.shape else scale
    g, w, scale = g[~nan_w], w[~nan_w], scale[~nan_w]
    inf = np.isinf(g) | np.isinf(w)
    if not np.array_equal(g[inf], w[inf]):
        return f"inf differs, e.g. {_first_diff(g, w, inf & (g != w))}"
    g, w, scale = g[~inf].astype(np.float64), w[~inf].astype(np.float64), scale[~inf]
    scale = np.where(np.isfinite(scale), scale, 0.0)  # an inf or NaN went through: no bound
    bad = np.abs(g - w) > ATOL + RTOL * np.maximum(np.abs(w), scale)
    if bad.any():
        return f"{int(bad.sum())} of {w.size} values differ, e.g. {_first_diff(g, w, bad)}"
    return None


def _first_diff(g, w, where=None) -> str:
    where = (g != w) if where is None else where
    i = np.flatnonzero(where)[0]
    return f"{g.flat[i]!r} where ORT has {w.flat[i]!r}"


def judge(results: dict[str, Result]) -> Outcome:
    ort = results["ort"]
    if ort.stage == "load":
        return Outcome("ort_reject", ort.error)
    sbc_result, reference = results["sbc"], results["onnx_reference"]
    seconds, scales = sbc_result.seconds, results["interpreter"].scales
    problems = [p for p in (_judge_engine(e, results[e], ort, reference, scales)
                            for e in ("sbc", "interpreter")) if p]
    if problems and all(_agrees(results[e], ort, reference, scales) for e in ("sbc", "interpreter")):
        # ORT is not always right (its ReduceMax skips a NaN unless the NaN comes first, its
        # int64 Clip and Min are wrong past int32, its reductions of empty tensors have wrong
        # shapes, so that a later op fails): where ONNX's reference implementation gives what
        # sbc gives (output by output), the case is not sbc's failure
        return Outcome("ort_differs", "; ".join(problems), seconds)
    if problems:
        if ort.arrays is not None and reference.arrays is not None:
            # say when ORT is not the last word here either
            ref_vs_ort = compare(reference.arrays, ort.arrays, scales)
            problems.append(f"(ONNX's reference differs from ORT too: {ref_vs_ort})" if ref_vs_ort
                            else "(ONNX's reference agrees with ORT)")
        return Outcome("failure", "; ".join(problems), seconds)
    if ort.error:
        return Outcome("both_error", f"ORT: {ort.error.splitlines()[0]}; sbc: {sbc_result.error}", seconds)
    if sbc_result.error:
        return Outcome("sbc_error", sbc_result.error, seconds)
    return Outcome("match", "", seconds)


def _agrees(r: Result, ort: Result, reference: Result, scales: dict | None) -> bool:
    """r computed, output by output, what ORT or ONNX's reference implementation computed (or
    refused properly): each of them has bugs of its own, rarely on the same output."""
    if r.error:
        return _error_problem("", r) is None
    if reference.arrays is None or sorted(r.arrays) != sorted(reference.arrays):
        return False
    others = [x.arrays for x in (ort, reference) if x.arrays is not None and sorted(x.arrays) == sorted(r.arrays)]
    return all(any(compare({n: a}, {n: other[n]}, scales) is None for other in others)
               for n, a in r.arrays.items())


def _judge_engine(engine: str, r: Result, ort: Result, reference: Result,
                  scales: dict | None) -> str | None:
    """Why `r` is not an allowed outcome next to ORT's, or None."""
    if r.error:
        # the interpreter is a NumPy oracle, not what users run: where ORT or ONNX's reference
        # fails too, any exception will do (NumPy's IndexError for an out-of-range index; its
        # ValueError for a Concat of mismatched shapes, which ORT lets through when one is empty)
        if engine == "interpreter" and (ort.error or reference.error):
            return None
        return _error_problem(engine, r)
    if ort.error:
        return f"{engine} returned values; ORT fails at run time: {ort.error.splitlines()[0]}"
    problem = compare(r.arrays, ort.arrays, scales)
    return f"{engine} differs from ORT: {problem}" if problem else None


def _error_problem(engine: str, r: Result) -> str | None:
    """Why r's error is not a proper refusal: not an SbcError, several lines, or a bug in
    sbc's code that an SbcError wraps."""
    if not r.sbc_error:
        return f"{engine} raised {r.error.splitlines()[0]} at {r.stage} (not an SbcError)"
    if "\n" in r.error:
        return f"{engine}'s error message has several lines: {r.error.splitlines()[0]}"
    if r.cause and r.cause.split(":")[0] in PROGRAMMING_ERRORS:
        return f"{engine} raised {r.error} at {r.stage}, caused by a bug: {r.cause}"
    return None


# -- the worker process ------------------------------------------------------------------------

def _serve(conn) -> None:
    """Worker loop: for each (model bytes, feeds) received, send each engine's result."""
    while True:
        try:
            model_bytes, feeds = conn.recv()
        except EOFError:
            return
        for engine, result in evaluate(model_bytes, feeds):
            conn.send((engine, result))
        conn.send(("done", None))


class Worker:
    """Runs cases in a child process; if the child dies (a segfault in sbc, TVM or ORT) or
    hangs, the case's outcome says so and the next case starts a fresh child."""

    def __init__(self, serve=None, timeout: float = HANG_SECONDS):
        self.serve = serve or _serve  # tests pass a serve loop that crashes or hangs
        self.timeout = timeout
        self.process = self.conn = None

    def _start(self):
        ctx = multiprocessing.get_context("spawn")  # never fork a process that runs TVM threads
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=self.serve, args=(child,), daemon=True)
        self.process.start()
        child.close()

    def run(self, model_bytes: bytes, feeds: dict) -> Outcome:
        if self.process is None or not self.process.is_alive():
            self._start()
        self.conn.send((model_bytes, feeds))
        results = {}
        while True:
            if not self.conn.poll(self.timeout):
                self.close()
                return Outcome("failure", f"hang: no answer from {_next(results)} in {self.timeout} s")
            try:
                engine, result = self.conn.recv()
            except EOFError:
                self.process.join()
                code, self.process = self.process.exitcode, None
                how = f"signal {-code}" if code < 0 else f"exit code {code}"
                return Outcome("failure", f"crash: the process died in {_next(results)} ({how})")
            if engine == "done":
                return judge(results)
            results[engine] = result

    def close(self):
        if self.process is not None:
            self.process.kill()
            self.process.join()
            self.process = None


def _next(results: dict) -> str:
    """The engine that was running when the worker stopped answering."""
    return next(e for e in ("ort", "sbc", "interpreter", "onnx_reference") if e not in results)


def main(path: str) -> None:
    """Replay a saved case: print each engine's result and the verdict."""
    import onnx
    model_bytes = onnx.load(path).SerializeToString()
    feeds = dict(np.load(path[:-len(".onnx")] + ".npz"))
    results = dict(evaluate(model_bytes, feeds))
    for engine, r in results.items():
        print(f"{engine}: {r.error or {k: v for k, v in r.arrays.items()}}")
    print(judge(results))


if __name__ == "__main__":
    main(sys.argv[1])
