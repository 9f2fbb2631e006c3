"""Property: for any small ONNX graph onnxruntime accepts, sbc either computes what onnxruntime
computes or refuses with its own one-line SbcError (and errs where onnxruntime errs at run time).

CI mode (default): a fixed set of CI_EXAMPLES examples (derandomized), the first failure fails
the test and hypothesis shrinks it to a minimal graph. Long mode (`--fuzz-examples N`, see
scripts/fuzz.sh): N examples from a random seed; every outcome is counted and every failure
saved, and the test fails at the end if there was any. What the outcomes mean: tests/fuzz/check.py.
Cases run in a worker process: a segfault is a failing example (in CI mode, shrunk and reported
like any other), not the end of pytest. Outcome counts are written as JSON (--fuzz-record).
Failures found are kept in tests/fuzz/regressions.py (test_regression replays them).
"""

from __future__ import annotations

import ctypes
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, seed, settings

from tests.fuzz.check import Worker
from tests.fuzz.graphs import cases
from tests.fuzz.regressions import REGRESSIONS

pytestmark = pytest.mark.fuzz

CI_EXAMPLES = 250  # ~0.25 s each (one TVM build): ~1.5 min on 2 cores, ~3 min on a busy machine
MIN_MATCHING = 0.5  # of the examples, at least this many must compile, run and match (~85% do)
SETTINGS = dict(deadline=None, database=None,  # failures are kept in regressions.py, not a database
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.data_too_large, HealthCheck.large_base_example])


def test_fuzz_graphs(fuzz_config, fuzz_worker, fuzz_recorder):
    stop_at_failure = not fuzz_config.long or fuzz_config.shrink

    @settings(max_examples=fuzz_config.examples or CI_EXAMPLES,
              derandomize=not fuzz_config.long, **SETTINGS)
    @given(case=cases())
    def check(case):
        outcome = fuzz_worker.run(case.model.SerializeToString(), case.feeds)
        fuzz_recorder.add(case, outcome)
        assume(outcome.kind != "ort_reject")  # not a valid example: hypothesis draws another
        if outcome.failed and stop_at_failure:
            raise AssertionError(f"{outcome.message}\n{case.describe()}")

    if fuzz_config.long:
        check = seed(fuzz_config.seed)(check)
    check()
    failures = fuzz_recorder.failures
    assert not failures, f"{len(failures)} failing examples (seed {fuzz_config.seed}), saved as " \
                         f"{failures[0]['case']} etc.; first: {failures[0]['message']}"
    # refusing everything is an allowed outcome per example, but then nothing was checked
    counts = fuzz_recorder.counts
    valid = sum(counts.values()) - counts["ort_reject"]
    assert counts["match"] >= MIN_MATCHING * valid, f"only {counts['match']} of {valid} examples " \
        f"ran and matched: {dict(counts)}; refusals: {fuzz_recorder.notes['sbc_error']}"


@pytest.mark.parametrize("regression", REGRESSIONS)
def test_regression(regression, fuzz_worker):
    """Each failure the fuzzer found, replayed: it must be an allowed outcome now."""
    model, feeds = regression.build()
    outcome = fuzz_worker.run(model.SerializeToString(), feeds)
    assert outcome.kind != "ort_reject", f"onnxruntime no longer loads this case: {outcome.message}"
    assert not outcome.failed, outcome.message
    if regression.must_match:
        assert outcome.kind == "match", outcome.message


# -- the worker: a crash or a hang is one failing outcome, and the next case runs ------------

def _serve_crashing(conn):
    """A worker that answers ORT's result, then dies of a segfault as sbc would."""
    conn.recv()
    conn.send(("ort", None))
    ctypes.string_at(0)  # reads address 0: SIGSEGV


def _serve_hanging(conn):
    conn.recv()
    time.sleep(60)


@pytest.mark.parametrize("serve, expected", [(_serve_crashing, "crash: the process died in sbc"),
                                             (_serve_hanging, "hang: no answer from ort")])
def test_worker_survives(serve, expected):
    worker = Worker(serve, timeout=5)
    try:
        for _ in range(2):  # the second case gets a fresh process
            outcome = worker.run(b"", {"x": np.zeros(1)})
            assert outcome.failed and outcome.message.startswith(expected), outcome.message
    finally:
        worker.close()
