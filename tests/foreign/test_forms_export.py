"""Sanity of the foreign corpus (forms.py): every form exports with each exporter that it claims,
the ONNX runs in onnxruntime at two sequence lengths with dynamic batch and seq and matches torch
eager; each form's mask is what its Form says (causal, window w, stacked windows).

Dynamo exports take seconds each: only QUICK_DYNAMO runs by default; the rest, and the
transformers decoders' mask checks, run (marked slow) with SBC_FOREIGN_SWEEP=1.
Set SBC_FOREIGN_CACHE to a directory to keep exports between runs."""

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tests.foreign.forms import EXPORTERS, FORMS, QUICK_DYNAMO, SWEEP, export

SEQS = (7, 12)  # both past every window; the export example is 8


def cases():
    for form in FORMS.values():
        for exporter in EXPORTERS:
            marks = []
            if exporter in form.skip:
                marks.append(pytest.mark.skip(reason=form.skip[exporter]))
            elif exporter == "dynamo" and form.name not in QUICK_DYNAMO:
                if not SWEEP:
                    continue
                marks.append(pytest.mark.slow)
            yield pytest.param(form, exporter, marks=marks, id=f"{form.name}-{exporter}")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return os.environ.get("SBC_FOREIGN_CACHE") or tmp_path_factory.mktemp("foreign")


def dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def run_ort(data: bytes, form, x: torch.Tensor) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # tiny graphs; no spinning worker threads left behind
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return session.run(None, {form.input_name: x.numpy()})[0]


@pytest.mark.parametrize("form, exporter", cases())
def test_export_matches_torch(form, exporter, cache_dir):
    data = export(form, exporter, cache_dir=cache_dir)
    proto = onnx.load_from_string(data)
    seq = form.static_seq or "seq"
    assert dims(proto.graph.input[0])[:2] == ["batch", seq]
    assert dims(proto.graph.output[0])[:2] == ["batch", seq]
    assert proto.ir_version <= 10
    model = form.factory()
    for t in [form.static_seq] if form.static_seq else SEQS:
        x = form.inputs(batch=2, seq=t, seed=t)
        with torch.no_grad():
            want = model(x).numpy()
        got = run_ort(data, form, x)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4, err_msg=f"seq {t}")


@pytest.mark.parametrize("exporter, seq_name", [("legacy", "T"), ("legacy", "sequence_length"),
                                                ("dynamo", "s0")])
def test_seq_name(exporter, seq_name, cache_dir):
    """The seq axis carries the name asked for, and the model still runs at another length."""
    form = FORMS["la_masked_fill"]
    data = export(form, exporter, seq_name=seq_name, cache_dir=cache_dir)
    proto = onnx.load_from_string(data)
    assert dims(proto.graph.input[0]) == ["batch", seq_name, 32]
    assert dims(proto.graph.output[0]) == ["batch", seq_name, 32]
    x = form.inputs(batch=3, seq=5)
    with torch.no_grad():
        np.testing.assert_allclose(run_ort(data, form, x), form.factory()(x).numpy(), atol=1e-4)


def footprint(form, t: int = 10) -> np.ndarray:
    """seen[i, j]: output i changes when input j is perturbed (torch eager, batch 1)."""
    t = form.static_seq or t
    model, x = form.factory(), form.inputs(batch=1, seq=t, seed=3)
    seen = np.zeros((t, t), bool)
    with torch.no_grad():
        y = model(x)
        for j in range(t):
            x2 = x.clone()
            if form.ids:
                x2[:, j] = (x2[:, j] + 1) % x2.max().add(2)
            else:
                x2[:, j] += 1.0
            seen[:, j] = (model(x2) - y).abs().amax(dim=(0, 2)).numpy() > 1e-6
    return seen


def causal_band(t: int, span: int | None) -> np.ndarray:
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    return (j <= i) & ((i - j < span) if span else True)


def slow_if_hf(form):
    return pytest.param(form, id=form.name, marks=[pytest.mark.slow] if form.name.startswith("hf_") else [])


@pytest.mark.parametrize("form", [slow_if_hf(f) for f in FORMS.values() if not f.near_miss
                                  and (SWEEP or not f.name.startswith("hf_"))])
def test_footprint(form):
    """Causal everywhere; a query sees w keys (itself and w-1 before) in a window form."""
    seen = footprint(form)
    np.testing.assert_array_equal(seen, causal_band(len(seen), form.span))


@pytest.mark.parametrize("name", ["nm_window_hole", "nm_noncausal_la", "nm_bidirectional_swa"])
def test_near_miss_masks_differ(name):
    """The mask near misses really are not the causal / banded mask that they imitate."""
    form = FORMS[name]
    seen = footprint(form)
    assert (seen != causal_band(len(seen), form.window)).any()


def test_corpus_consistent():
    kinds = {"linear": "LinearAttention", "swa": "SlidingWindowAttention", "causal": "SlidingWindowAttention"}
    for form in FORMS.values():
        assert form.exporters, form.name  # at least one exporter works
        assert form.description and form.kind in (*kinds, "hybrid")
        if form.near_miss:
            assert form.expected == {}, form.name
        elif form.kind in kinds:
            assert kinds[form.kind] in form.expected, form.name
        if form.kind == "swa":
            assert form.window, form.name
