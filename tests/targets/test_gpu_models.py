"""The reference models in every export form (`sbc export --form ... --swa ...`), with and
without `--quantize w8`, compiled for cuda and maca (tests/targets/sweep.py: nvcc's fatbin; the
MACA source through nvcc and the compatibility header); and the foreign corpus's forms that sbc
does not fuse (near misses, loops unrolled into CumSum / ScatterND), which reach the GPU
schedules as plain softmax, scans and scatters.

Each form is imported and optimised as `sbc compile` does (with --quantize w8 or not); the
optimised step programs of all forms are merged into one graph and built once per target (a
failing build is bisected to the forms that fail): the forms share most kernels, so one build
costs little more than one form's. The default run takes the tiny model in two forms (SAMPLE:
both SWA forms, the parallel GLA form and the ONNX-27 LinearAttention op), with and without
w8; SBC_GPU_SWEEP=1 takes all 8 GLA x SWA forms of `tiny` and `small`, and every foreign form.
"""

from __future__ import annotations

import functools
import itertools

import onnx
import pytest

from sbc.driver import pipeline_for
from sbc.frontend import import_onnx
from sbc.models.export import GLA_FORMS, SWA_FORMS, export_onnx
from sbc.passes import run_passes
from tests.conformance.test_onnx_backend import merge
from tests.targets.gpu_env import nvcc_or_skip
from tests.targets.sweep import SWEEP, compile_and_check, compile_batches

QUANTIZE = (None, "w8")
TARGETS = ("cuda", "maca")
CONFIGS = ("tiny", "small") if SWEEP else ("tiny",)
# the default run: the session's tiny model (parallel / masked, exported once for the whole
# suite) and the ONNX-27 op forms (LinearAttention, Attention); exports take 15-40 s each
SAMPLE = [("parallel", "masked"), ("la27", "attention")]
FORMS = list(itertools.product(GLA_FORMS, SWA_FORMS)) if SWEEP else SAMPLE
# the foreign forms left unfused: plain softmax with additive masks, CumSum, ScatterND
FOREIGN_SAMPLE = [("nm_window_hole", "maca"), ("gla_chunk_loop_scatter", "cuda")]


def test_sample_covers_both_swa_forms():
    assert {s for _, s in SAMPLE} == set(SWA_FORMS) and set(SAMPLE) <= set(itertools.product(GLA_FORMS, SWA_FORMS))


@pytest.fixture(scope="module")
def optimised(tmp_path_factory, tiny_onnx):
    """config -> [(form name, the optimised graph)] for FORMS x QUANTIZE, each exported once."""
    @functools.lru_cache(maxsize=None)
    def get(config):
        items = []
        for form, swa in FORMS:
            path = tiny_onnx if (config, form, swa) == ("tiny", "parallel", "masked") else \
                export_onnx(config, tmp_path_factory.mktemp("forms") / f"{form}-{swa}.onnx",
                            form=form, swa=swa)
            for quantize in QUANTIZE:
                graph = run_passes(import_onnx(path), pipeline_for(None, quantize, None))
                items.append((f"{config}/{form}/{swa}/{quantize or 'f32'}", graph))
        return items
    return get


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("target", TARGETS)
def test_reference_model_forms_compile_for_gpu(optimised, config, target):
    nvcc_or_skip()
    items = optimised(config)
    compiled, failures = compile_batches(target, items, len(items), merge, passes="dce")
    assert not failures, "\n".join(f"{k}: {v}" for k, v in sorted(failures.items()))
    assert compiled == len(FORMS) * len(QUANTIZE)


def _foreign():
    from tests.foreign.forms import FORMS as FOREIGN
    if not SWEEP:
        return FOREIGN_SAMPLE
    return [(name, t) for name, f in FOREIGN.items() if "legacy" in f.exporters for t in TARGETS]


@pytest.mark.parametrize("name, target", _foreign())
def test_foreign_form_compiles_for_gpu(name, target):
    """Before: 'cumsum ... has no GPU schedule' and a failed build on softmax_max_shared."""
    from tests.foreign.forms import export
    nvcc_or_skip()
    compile_and_check(target, onnx.load_from_string(export(name, "legacy")))
