"""The ONNX backend conformance cases sbc runs on cpu (tests/conformance), compiled for cuda
and maca: every kernel scheduled on GPU threads, TVM's CUDA codegen, nvcc (the cuda fatbin;
the MACA source through the compatibility header). Compile only: no GPU runs them here; the
numbers of the scheduled kernels are checked without a GPU in
tests/codegen/test_gpu_kernels_serial.py.

The cases are the cpu suite's (same selection, exclusions and import, which also checks the
reference interpreter against ONNX), batched BATCH to a build (tests/targets/sweep.py). The
default run compiles the first case of every op group (every op sbc lowers, at least once);
SBC_GPU_SWEEP=1 compiles them all (empty tensors included: the MACA host program allocates
them, tests/targets/test_maca.py runs that logic); the number compiled must not fall below the
floors.
"""

from __future__ import annotations

import functools

import pytest

from tests.conformance.test_onnx_backend import _import_case, merge, supported_cases
from tests.targets.gpu_env import nvcc_or_skip
from tests.targets.sweep import SWEEP, compile_batches

BATCH = 120  # the default run (105 cases) in one build per target
# cases compiled per target: the default run (one per op group of the cpu suite's 105) and
# the full sweep (all 989 the cpu suite runs, empty tensors included)
FLOOR = 100
SWEEP_FLOOR = 989


@functools.lru_cache(maxsize=1)
def gpu_cases() -> tuple[list[tuple[str, object]], dict[str, str]]:
    """([(case name, optimised graph)] to compile, {case name: why not}) in the cpu suite's
    order; the default run takes the first importable case of each group."""
    items, skipped = [], {}
    for group, cases in sorted(supported_cases().items()):
        for case in cases:
            try:
                graph, _ = _import_case(case)
            except Exception as e:  # noqa: BLE001 - the cpu suite reports import failures
                skipped[case.name] = f"does not import (see tests/conformance): {e}"[:200]
                continue
            items.append((case.name, graph))
            if not SWEEP:
                break
    return items, skipped


@pytest.mark.parametrize("target", ["cuda", "maca"])
def test_conformance_cases_compile_for_gpu(target):
    nvcc_or_skip()
    items, _ = gpu_cases()
    compiled, failures = compile_batches(target, items, BATCH, merge)
    assert not failures, "\n".join(f"{k}: {v}" for k, v in sorted(failures.items()))
    assert compiled >= (SWEEP_FLOOR if SWEEP else FLOOR), f"{compiled} cases compiled for {target}"
