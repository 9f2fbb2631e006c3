"""`--tune N`: MetaSchedule's search beside sbc's own CPU schedules, kernel by kernel.

For each kernel of the fused module whose buffer shapes are all static and that sbc did not
write by hand, MetaSchedule (tvm.s_tir.meta_schedule) searches N schedules of the kernel as
lowered (before codegen.schedule_cpu); sbc's schedule and the best one found are then timed
the same way, on the same inputs, and the faster one is kept (MetaSchedule's only if faster
by MARGIN). Kernels with a symbolic shape (one schedule for every length: MetaSchedule tunes
one shape) and hand-written kernels (whose schedule is the point of writing them) keep sbc's
schedule.

The search: random replays of the design space's decisions (`replay-trace`), so no cost
model is needed (and no xgboost); candidates are built and timed in this process, one at a
time, with the kernel's integer inputs (indices) all zero so that every read is in range.

The tuning log (`Tuning.log_dir`, which the API puts in the compile cache) holds one folder per
TVM target: MetaSchedule's JSONDatabase (its workloads and tuning records) and decisions.json,
sbc's choice per kernel keyed by the structural hash of the kernel as lowered: both times,
the trials, the schedule kept. A kernel decided with at least N trials is neither searched
nor timed again; a kernel MetaSchedule won is rebuilt from its best record.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import pathlib
from dataclasses import dataclass, field

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, tirx

from sbc.codegen.schedule_cpu import SCHEDULED
from sbc.codegen.schedule_cpu.common import is_scheduled

SEED = 0  # the same candidates in every run: a tuned build can be reproduced
REPEAT = 5  # timings per kernel; the best counts (a busy neighbour only ever adds time)
MIN_REPEAT_MS = 10  # each timing calls the kernel until this long has passed
# a candidate whose first call takes this many times sbc's kernel is not timed further: it
# cannot win, and some candidates take seconds per call
GIVE_UP = 3
# MetaSchedule's schedule replaces sbc's only if this much faster: a difference within the
# timing noise of a shared machine is no reason to swap
MARGIN = 0.97
SBC, METASCHEDULE = "sbc", "MetaSchedule"  # what a decision keeps


@dataclass(eq=False)
class Tuning:
    """One compile's tuning: the trials per kernel, where the log lives, and (filled in by
    tune_module) one report entry per kernel."""
    trials: int
    log_dir: str
    report: list[dict] = field(default_factory=list)


def tune_module(lowered: tvm.IRModule, scheduled: tvm.IRModule, tvm_target,
                target) -> tvm.IRModule:
    """`scheduled` (codegen.schedule_cpu's module) with each tunable kernel replaced by
    MetaSchedule's schedule where that is faster. `lowered` is the module before
    scheduling, matched by global var name; `target` is the codegen Target of the build
    (kernels are timed as its build compiles them), `target.tuning` what to do."""
    tuning = target.tuning
    log = _Log(pathlib.Path(tuning.log_dir), tvm_target)
    out = tvm.IRModule(dict(scheduled.functions_items()), attrs=scheduled.attrs)
    for gv, func in lowered.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        reason = skip_reason(func)
        if reason:
            tuning.report.append({"kernel": gv.name_hint, "skipped": reason})
            continue
        entry, best = _decide(func, scheduled[gv.name_hint], tvm_target, target, log)
        tuning.report.append({"kernel": gv.name_hint, **entry})
        if best is not None:
            out[gv] = best
    return out


def skip_reason(func: tirx.PrimFunc) -> str | None:
    """Why a kernel is not tuned, or None."""
    if is_scheduled(func):  # marked before sbc's schedules run: a hand-written kernel
        return "hand-written kernel"
    if signature(func) is None:
        return "symbolic shape"
    return None


def signature(func: tirx.PrimFunc) -> list[tuple[tuple[int, ...], str]] | None:
    """(shape, dtype) of each parameter, or None unless all are tensors of static shape (a
    scalar parameter is a symbolic dim)."""
    out = []
    for ty in func.ty.params:
        shape = getattr(ty, "shape", None)
        if not isinstance(ty, relax.TensorType) or not isinstance(shape, relax.ShapeExpr) or \
                not all(isinstance(d, tirx.IntImm) for d in shape.values):
            return None
        out.append((tuple(int(d) for d in shape.values), str(ty.dtype)))
    return out


def _decide(func, sbc_func, tvm_target, target, log) -> tuple[dict, object]:
    """The report entry for one kernel and MetaSchedule's PrimFunc if it is kept (else None):
    from the log when it has decided this kernel with at least the trials asked for."""
    trials = target.tuning.trials
    workload = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    key = str(tvm_ffi.structural_hash(func))
    decision = log.decisions.get(key)
    if decision is not None and decision["trials"] >= trials:
        best = _best(log, workload, tvm_target) if decision["kept"] == METASCHEDULE else None
        if decision["kept"] == SBC or best is not None:
            return {**decision, "from_log": True}, _as_kernel(best, func)
    args = kernel_args(func)
    sbc_kernel = build_kernel(sbc_func, tvm_target, target)
    try:
        search(workload, tvm_target, target, log, args, GIVE_UP * kernel_ms(sbc_kernel, args))
    except Exception as e:  # noqa: BLE001 - MetaSchedule failing on a kernel keeps sbc's
        return {"skipped": f"MetaSchedule failed: {_first_line(e)}"}, None
    best = _best(log, workload, tvm_target)
    if best is None:
        return {"skipped": f"MetaSchedule built none of {trials} candidates"}, None
    # both again, back to back: a neighbour's load in between changes both alike
    ms_kernel = build_kernel(best, tvm_target, target)
    sbc_ms, ms_ms = kernel_ms(sbc_kernel, args), kernel_ms(ms_kernel, args)
    faster = ms_ms < MARGIN * sbc_ms
    decision = {"trials": trials, "sbc_ms": round(sbc_ms, 4),
                "metaschedule_ms": round(ms_ms, 4), "kept": METASCHEDULE if faster else SBC}
    log.decide(key, decision)
    return {**decision, "from_log": False}, _as_kernel(best if faster else None, func)


def _first_line(e: Exception) -> str:
    """The gist of an error (TVM's are C++ traces of many lines)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[-1] if lines else ''}"[:160]


def _best(log, workload, tvm_target):
    """MetaSchedule's best PrimFunc for the workload in the log, or None (also where its
    record no longer applies, e.g. written by another TVM: the kernel is searched again)."""
    try:
        schedule = log.database.query_schedule(workload, tvm_target, workload_name="main")
    except Exception:  # noqa: BLE001
        return None
    return None if schedule is None else schedule.mod["main"]


def _as_kernel(best, func):
    """MetaSchedule's PrimFunc as a kernel of the module: private like the lowered one (its
    "main" symbol would clash), and marked scheduled (TVM's build leaves it alone)."""
    if best is None:
        return None
    return best.without_attr("global_symbol").with_attr(SCHEDULED, True)


def search(workload: tvm.IRModule, tvm_target, target, log, args: list,
           give_up_ms: float) -> None:
    """MetaSchedule's search: target.tuning.trials candidates, built and timed here on `args`
    (each given up after one call slower than give_up_ms), recorded in the log."""
    from tvm.s_tir import meta_schedule as ms
    _load_tensor_intrinsics()
    context = ms.TuneContext(mod=workload, target=tvm_target, space_generator="post-order-apply",
                             search_strategy="replay-trace", task_name="main", rand_state=SEED,
                             num_threads=1)
    built = {}  # the builder's executables, by the key it hands the runner
    ms.tune_tasks(tasks=[context], task_weights=[1.0], work_dir=str(log.folder),
                  max_trials_global=target.tuning.trials,
                  num_trials_per_iter=target.tuning.trials, builder=_builder(target, built),
                  runner=_runner(args, give_up_ms, built), database=log.database,
                  cost_model="none", task_scheduler="round-robin",
                  # the default callbacks also delete build folders (here there are none)
                  measure_callbacks=[ms.measure_callback.AddToDatabase()])


def build_kernel(func: tirx.PrimFunc, tvm_target, target):
    """One kernel, alone, compiled as the build of `target` (a codegen Target) compiles it."""
    with tvm.transform.PassContext(config=target.pass_config()):
        return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                           target=tvm_target, tir_pipeline=target.tir_pipeline())


def kernel_args(func: tirx.PrimFunc) -> list:
    """Inputs of the right shapes and dtypes: random floats, integers all zero (an index of
    zero is always in range)."""
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(shape).astype(dtype) if np.dtype(dtype).kind == "f"
              else np.zeros(shape, dtype) for shape, dtype in signature(func)]
    return [tvm.runtime.tensor(a) for a in arrays]


def kernel_ms(executable, args, give_up_ms: float | None = None) -> float:
    """The kernel's time in ms: the best of REPEAT timings, with the threads a module runs
    with by default (or its first call's time, if that exceeds give_up_ms). Both schedules of
    a kernel, and every candidate, are timed so."""
    from sbc.runtimes.threads import use_threads
    use_threads(None)
    module = executable.jit()
    if give_up_ms is not None:
        once = module.time_evaluator("main", tvm.cpu(), number=1, repeat=1)(*args).results[0]
        if once * 1e3 > give_up_ms:
            return once * 1e3
    timer = module.time_evaluator("main", tvm.cpu(), repeat=REPEAT, min_repeat_ms=MIN_REPEAT_MS)
    return min(timer(*args).results) * 1e3


def _builder(target, built: dict):
    """A MetaSchedule builder compiling in this process (MetaSchedule's own spawns a worker
    that imports TVM, and pickles through cloudpickle): its artifact is a key into `built`."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder

    keys = itertools.count()

    @derived_object
    class InProcessBuilder(PyBuilder):
        def build(self, build_inputs):
            results = []
            for item in build_inputs:
                try:
                    executable = build_kernel(item.mod["main"], item.target, target)
                except Exception as e:  # noqa: BLE001 - a candidate that fails is dropped
                    results.append(BuilderResult(None, f"{type(e).__name__}: {e}"[:500]))
                    continue
                key = str(next(keys))
                built[key] = executable
                results.append(BuilderResult(key, None))
            return results

    return InProcessBuilder()


def _runner(args: list, give_up_ms: float, built: dict):
    """A MetaSchedule runner timing the builder's kernels in this process with kernel_ms."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import PyRunner
    from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture

    @derived_object
    class InProcessRunner(PyRunner):
        def run(self, runner_inputs):
            futures = []
            for item in runner_inputs:
                executable = built.pop(item.artifact_path)
                try:
                    seconds = kernel_ms(executable, args, give_up_ms) / 1e3
                    futures.append(LocalRunnerFuture(res=[seconds]))
                except Exception as e:  # noqa: BLE001
                    futures.append(LocalRunnerFuture(error_message=f"{type(e).__name__}: {e}"))
            return futures

    return InProcessRunner()


class _Log:
    """The tuning log of one TVM target: MetaSchedule's database and sbc's decisions."""

    def __init__(self, root: pathlib.Path, tvm_target):
        from tvm.s_tir import meta_schedule as ms
        name = str(tvm_target)  # its JSON: kind, mcpu, num-cores
        self.folder = root / hashlib.sha256(name.encode()).hexdigest()[:16]
        self.folder.mkdir(parents=True, exist_ok=True)
        self.database = ms.database.JSONDatabase(work_dir=str(self.folder))
        self.path = self.folder / "decisions.json"
        self.decisions = self._read().get("kernels", {})
        self.target = name

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):  # none yet, or damaged: decided again
            return {}

    def decide(self, key: str, decision: dict) -> None:
        """Record a decision, merged with what another compile may have written meanwhile;
        written whole and renamed, so a reader never sees half a file."""
        self.decisions = {**self._read().get("kernels", {}), **self.decisions, key: decision}
        partial = self.path.with_name(f".decisions-{os.getpid()}.json")
        partial.write_text(json.dumps({"target": self.target, "kernels": self.decisions},
                                      indent=1, sort_keys=True))
        os.replace(partial, self.path)


def _load_tensor_intrinsics() -> None:
    """Import tvm.s_tir.tensor_intrin (MetaSchedule's TuneContext does, for the rules that
    tensorize) quickly. Its ~250 TVMScript functions each call inspect.stack(), which looks up
    the module of every frame; frames of the import system (<frozen importlib._bootstrap>) have
    no file, and each such lookup scans all of sys.modules (~2000 with TVM): 35 s. Telling
    inspect which module those frames belong to (and that code TVMScript compiles from an
    AST, "<ast>", belongs to none, which the scan would conclude) makes it take ~7 s."""
    import inspect
    import sys
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    for file, module in (("<frozen importlib._bootstrap>", "importlib._bootstrap"),
                         ("<frozen importlib._bootstrap_external>",
                          "importlib._bootstrap_external"),
                         ("<ast>", "<no module>")):
        inspect.modulesbyfile.setdefault(os.path.normcase(os.path.abspath(file)), module)
    import tvm.s_tir.tensor_intrin  # noqa: F401
