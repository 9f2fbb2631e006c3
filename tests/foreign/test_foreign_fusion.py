"""sbc on the foreign corpus: every token mixer fuses as its form expects whatever the spelling
(counts of LinearAttention / SlidingWindowAttention), the fused graph computes what onnxruntime
computes on the exported file, near misses stay unfused with a reason, and compiled models
stream through sessions (prefill + decode = the whole run).

Bounded by default (each form by the legacy exporter, plus forms.QUICK_DYNAMO by dynamo);
SBC_FOREIGN_SWEEP=1 runs every form with every exporter."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import sbc
from sbc.errors import InputError
from sbc.driver import fusion_notes
from sbc.frontend import import_onnx
from sbc.ir.interpreter import run
from sbc.passes import run_passes
from sbc.passes.manager import DEFAULT_PIPELINE
from sbc.passes.to_recurrent import ToRecurrent, why_not_recurrent
from tests.foreign.forms import FORMS, QUICK_DYNAMO, SWEEP, export

FUSED = ("LinearAttention", "SlidingWindowAttention")
SEQ = 11  # longer than every window in the corpus


def cases(select):
    return [pytest.param(f.name, e, id=f"{f.name}-{e}") for f in FORMS.values() if select(f)
            for e in f.exporters if SWEEP or _bounded(f, e)]


def _bounded(form, exporter) -> bool:
    if exporter == "dynamo" and form.name in QUICK_DYNAMO:
        return True
    return exporter == "legacy"


WHOLE_SEQUENCE = [p for p in DEFAULT_PIPELINE if p != "to-recurrent"]  # runnable as exported


def optimised(name, exporter, seq_name="seq"):
    return run_passes(import_onnx(onnx.load_from_string(export(name, exporter, seq_name))),
                      WHOLE_SEQUENCE, fixed_point=True)


def fused_counts(graph) -> dict:
    return {op: n for op, n in graph.op_counts().items() if op in FUSED}


def ort_run(name, exporter, x):
    form = FORMS[name]
    session = ort.InferenceSession(export(name, exporter), providers=["CPUExecutionProvider"])
    return session.run(None, {form.input_name: x})[0]


def example(name, seq=SEQ):
    return FORMS[name].inputs(batch=2, seq=seq, seed=1).numpy()


@pytest.mark.parametrize("name, exporter", cases(lambda f: not f.near_miss and not f.static_seq))
def test_fuses_and_matches_onnxruntime(name, exporter):
    graph = optimised(name, exporter)
    assert fused_counts(graph) == FORMS[name].expected, fusion_notes(graph)
    x = example(name)
    got = run(graph, {FORMS[name].input_name: x})
    np.testing.assert_allclose(next(iter(got.values())), ort_run(name, exporter, x),
                               rtol=2e-4, atol=2e-4)
    assert ToRecurrent().run(graph).modified, why_not_recurrent(graph)  # sessions will work


@pytest.mark.parametrize("name, exporter", cases(lambda f: f.near_miss))
def test_near_misses_stay_unfused_and_say_why(name, exporter):
    graph = optimised(name, exporter)
    assert fused_counts(graph) == {}
    assert any(n.startswith("recognise-mixers at") for n in fusion_notes(graph)), fusion_notes(graph)


@pytest.mark.parametrize("name, exporter", cases(lambda f: f.kind == "causal"))
def test_full_causal_attention_gets_a_kv_cache(name, exporter):
    full = [n for n in optimised(name, exporter).nodes if n.attrs.get("full")]
    assert full and all(n.attrs["window"] == 4096 for n in full)  # the default capacity


@pytest.mark.parametrize("seq_name", ["T", "sequence_length"])
def test_the_sequence_axis_may_have_any_name(seq_name):
    graph = optimised("gla_qk_exp_masked_fill", "legacy", seq_name)
    assert fused_counts(graph) == {"LinearAttention": 1}


@pytest.mark.parametrize("name, exporter", [
    ("hybrid_decoder", "dynamo"), ("hf_mistral", "dynamo"), ("hf_llama", "dynamo"),
    ("retnet_decay_per_query_head", "legacy"), ("la_time_major", "legacy")])
def test_compiled_sessions_stream_like_the_whole_run(name, exporter):
    form = FORMS[name]
    module = sbc.compile(onnx.load_from_string(export(name, exporter)), target="cpu")
    assert module.recurrent, module.manifest["notes"]
    x = example(name, seq=9)
    whole = module.run({form.input_name: x})[form.output_name]
    np.testing.assert_allclose(whole, ort_run(name, exporter, x), rtol=2e-4, atol=2e-4)
    state = module.initial_state({"batch": 2})
    streamed = []
    for start, stop in ((0, 6), (6, 7), (7, 8), (8, 9)):  # a prefill chunk, then decode steps
        outputs, state = module.step({form.input_name: x[:, start:stop]}, state)
        streamed.append(outputs[form.output_name])
    np.testing.assert_allclose(np.concatenate(streamed, axis=1), whole, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("name", [f.name for f in FORMS.values() if f.static_seq])
def test_unrolled_loops_compile_at_their_length_and_say_how_to_export(name):
    """A Python loop over time is unrolled by the exporter (ScatterND writes included): sbc
    compiles it for its one length and says why it cannot become recurrent."""
    form = FORMS[name]
    module = sbc.compile(onnx.load_from_string(export(name, "legacy")), target="cpu")
    assert not module.recurrent
    assert any("fixed sequence length" in n for n in module.manifest["notes"])
    x = example(name, seq=form.static_seq)
    np.testing.assert_allclose(module.run({form.input_name: x})[form.output_name],
                               ort_run(name, "legacy", x), rtol=2e-4, atol=2e-4)


def test_contexts_beyond_the_kv_cache_are_refused():
    """Full causal attention holds max_context tokens: a longer whole run, or a session step
    past it, is one clear error (a smaller window would silently compute something else)."""
    form = FORMS["causal_neg_inf"]
    module = sbc.compile(onnx.load_from_string(export(form.name, "legacy")), max_context=8)
    assert module.recurrent["memory_certificate"]["max_context"] == 8
    x = example(form.name, seq=9)
    module.run({"x": x[:, :8]})
    with pytest.raises(InputError, match="KV cache"):
        module.run({"x": x})
    state = module.initial_state({"batch": 2})
    _, state = module.step({"x": x[:, :6]}, state)
    with pytest.raises(InputError, match="more than the 8 its full-attention KV cache holds"):
        module.step({"x": x[:, 6:9]}, state)
