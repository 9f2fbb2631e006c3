"""The PyTorch reference model: sizes, GLA forms, SWA window, spiking, export."""

import numpy as np
import onnx
import pytest
import torch

from sbc.models.spikingbrain import (SWA, build_model, get_config, gla_parallel, gla_recurrent,
                                     parameter_count, spike)


@pytest.mark.parametrize("name, low, high", [("tiny", 0, 1_000_000), ("small", 20_000_000, 50_000_000)])
def test_parameter_counts(name, low, high):
    assert low < parameter_count(build_model(name)) < high


def test_gla_parallel_equals_recurrent():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.rand(2, 3, 40, 8, generator=g) for _ in range(3))
    gate = -0.05 * torch.rand(2, 3, 40, 8, generator=g)
    torch.testing.assert_close(gla_parallel(q, k, v, gate), gla_recurrent(q, k, v, gate),
                               rtol=1e-5, atol=1e-5)


def test_swa_query_sees_exactly_window_keys():
    c = get_config("tiny")
    swa = SWA(c).eval()
    x = torch.randn(1, 40, c.hidden)
    t = 30
    base = swa(x)[0, t]
    for back, should_change in ((c.window - 1, True), (c.window, False)):
        y = x.clone()
        y[0, t - back] += 5.0
        changed = not torch.allclose(swa(y)[0, t], base, atol=1e-6)
        assert changed == should_change, f"key {back} back: changed={changed}"


def test_spike_matches_numpy():
    x = torch.randn(5, 64)
    v_th = np.clip(np.abs(x.numpy()).mean(-1, keepdims=True) / 3.0, 1e-5, 1e4)
    expected = np.round(x.numpy() / v_th) * v_th
    np.testing.assert_allclose(spike(x, 3.0).numpy(), expected, rtol=1e-6, atol=1e-6)


def test_export_has_dynamic_dims(tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "seq"] and model.ir_version <= 10
