"""The compiled tiny reference model against onnxruntime and PyTorch.

Spike rounding: n = round(x / V_th) is discontinuous, so two correct implementations may differ
in a spike count where x / V_th lies within float error of .5, which then moves the logits a
little. The tolerances below admit that (and the argmax agreement shows it is rare); a real
bug moves the logits by O(1) (see the Concat bug this test caught: max diff 0.7).
"""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from sbc.models.spikingbrain import build_model

SHAPES = [(b, t) for b in (1, 2) for t in (1, 7, 64, 300)]


@pytest.fixture(scope="module")
def ort_session(tiny_onnx):
    return ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("batch, seq", SHAPES)
def test_tiny_matches_onnxruntime_and_pytorch(tiny_module, ort_session, batch, seq):
    ids = np.random.default_rng(seq * 10 + batch).integers(0, 256, size=(batch, seq), dtype=np.int64)
    ours = tiny_module.run({"ids": ids})["logits"]
    assert ours.shape == (batch, seq, 256) and ours.dtype == np.float32
    theirs = ort_session.run(None, {"ids": ids})[0]
    with torch.inference_mode():
        torch_out = build_model("tiny")(torch.from_numpy(ids)).numpy()
    for ref in (theirs, torch_out):
        np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-3)
        assert (ours.argmax(-1) == ref.argmax(-1)).mean() >= 0.99


def test_one_artifact_serves_every_shape(tiny_module):
    sig = dict(tiny_module.inputs)
    assert str(sig["ids"]) == "i64[batch, seq]"
    assert str(dict(tiny_module.outputs)["logits"]) == "f32[batch, seq, 256]"
