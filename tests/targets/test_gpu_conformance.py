"""The ONNX backend conformance cases sbc runs on cpu (tests/conformance), compiled for cuda
and maca: every kernel scheduled on GPU threads, TVM's CUDA codegen, nvcc (the cuda fatbin;
the MACA source through the compatibility header). Compile only: no GPU runs them here; the
numbers of the scheduled kernels are checked without a GPU in
tests/codegen/test_gpu_kernels_serial.py.

The cases are the cpu suite's (same selection, exclusions and import, which also checks the
reference interpreter against ONNX), batched BATCH to a build (tests/targets/sweep.py). The
default run compiles the first case of every op group (every op sbc lowers, at least once);
SBC_GPU_SWEEP=1 compiles them all. Cases a target leaves out are chosen by a rule over the
optimised graph, with the reason (GRAPH_RULES); the number compiled must not fall below the
floors.
"""

from __future__ import annotations

import functools

import pytest

from sbc.codegen.build import is_empty
from tests.conformance.test_onnx_backend import _import_case, merge, supported_cases
from tests.targets.gpu_env import nvcc_or_skip
from tests.targets.sweep import SWEEP, compile_batches

BATCH = 120  # the default run (105 cases) in one build per target
# target -> (rule over the optimised graph, why it is left out there)
GRAPH_RULES = {"maca": (lambda graph: any(is_empty(v.shape) for v in graph.values()),
                        "an empty tensor (a 0 dim) is allocated by relax.builtin.alloc_tensor, "
                        "which the MACA host program (codegen.maca) has no step for yet")}
# cases compiled per target: the default run (one per op group of the cpu suite's 105) and
# the full sweep (of the 989 the cpu suite runs; 9 have an empty tensor, left out on maca)
FLOOR = 100
SWEEP_FLOOR = 975


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


def for_target(target: str) -> tuple[list, dict[str, str]]:
    """The cases to compile for `target` and {case: why not} for those its rule leaves out."""
    items, _ = gpu_cases()
    rule, why = GRAPH_RULES.get(target, (lambda graph: False, ""))
    return [(n, g) for n, g in items if not rule(g)], {n: why for n, g in items if rule(g)}


@pytest.mark.parametrize("target", ["cuda", "maca"])
def test_conformance_cases_compile_for_gpu(target):
    nvcc_or_skip()
    items, _ = for_target(target)
    compiled, failures = compile_batches(target, items, BATCH, merge)
    assert not failures, "\n".join(f"{k}: {v}" for k, v in sorted(failures.items()))
    assert compiled >= (SWEEP_FLOOR if SWEEP else FLOOR), f"{compiled} cases compiled for {target}"


def test_maca_rule_leaves_out_empty_tensors_only():
    """The maca rule holds for a Split into a 0-size piece and ConstantOfShape of a 0 dim,
    not for a plain Split (a rule that matched everything would empty the sweep)."""
    rule, _ = GRAPH_RULES["maca"]
    cases = {c.name: c for group in supported_cases().values() for c in group}
    for name, empty in (("test_split_zero_size_splits_opset18", True),
                        ("test_constantofshape_int_shape_zero", True),
                        ("test_split_equal_parts_1d_opset18", False)):
        assert rule(_import_case(cases[name])[0]) == empty, name
