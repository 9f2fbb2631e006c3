"""PyTorch in, PyTorch out (sbc.torch): an nn.Module compiled by sbc computes what eager PyTorch
computes, at every batch size its dynamic dims allow, with token mixers fused; torch.compile's
backend "sbc" (found by name, through the package's entry point) runs each captured graph
compiled, one program per input signature, and falls back to eager with a warning naming the
op sbc cannot take."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import sbc.torch as sbc_torch
from sbc.errors import SbcError
from tests.foreign.forms import FORMS


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)).eval()


def test_compile_module_is_an_nn_module_on_torch_tensors():
    model = mlp()
    batch = torch.export.Dim("batch")
    compiled = sbc_torch.compile_module(model, torch.randn(2, 8),
                                        dynamic_shapes={"input": {0: batch}})
    assert isinstance(compiled, nn.Module) and compiled.compiled.kind == "cpu"
    for rows in (1, 5):  # one program for any batch
        x = torch.randn(rows, 8)
        y = compiled(x)
        assert isinstance(y, torch.Tensor) and y.shape == (rows, 4) and not y.requires_grad
        torch.testing.assert_close(y, model(x).detach(), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="takes 1 inputs"):
        compiled(x, x)


def test_a_token_mixer_module_is_fused():
    form = FORMS["gla_qk_exp_masked_fill"]
    model = form.factory()
    seq = torch.export.Dim("seq", min=2)
    compiled = sbc_torch.compile_module(model, form.inputs(batch=1, seq=8),
                                        dynamic_shapes={"x": {1: seq}})
    assert compiled.compiled.manifest["ops"].get("LinearAttention") == 1
    x = form.inputs(batch=1, seq=13, seed=1)
    torch.testing.assert_close(compiled(x), model(x).detach(), rtol=2e-4, atol=2e-4)


def test_torch_compile_backend_by_name_compiles_each_signature():
    model = mlp()
    fast = torch.compile(model, backend="sbc")
    for rows in (2, 3):  # the second size arrives as a dynamic graph: compiled for its size
        x = torch.randn(rows, 8)
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)


class Inverse(nn.Module):
    def forward(self, x):
        return torch.linalg.inv(x @ x.T + torch.eye(x.shape[0]))


def test_torch_compile_falls_back_to_eager_naming_the_op():
    x = torch.randn(3, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = torch.compile(Inverse(), backend="sbc")(x)
    messages = [str(w.message) for w in caught if "sbc" in str(w.message)]
    assert any("runs eagerly" in m and "linalg_inv" in m for m in messages), messages
    torch.testing.assert_close(y, Inverse()(x))


def test_tensors_off_the_cpu_are_refused_in_one_line():
    with pytest.raises(SbcError, match="CPU tensors"):
        sbc_torch.to_numpy(torch.empty(2, device="meta"))
    x = torch.arange(6.0).reshape(2, 3)
    assert np.shares_memory(sbc_torch.to_numpy(x), x.numpy())  # DLPack-style: no copy
