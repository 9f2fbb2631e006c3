"""Arrays in and out by DLPack (sbc.runtimes.interop): Module.run and sessions take NumPy
arrays, torch tensors and any DLPack object without a copy, and give back the caller's kind."""

import numpy as np
import pytest
import torch
import tvm

from sbc.errors import InputError
from sbc.runtimes.interop import as_feed, device_tensor


def test_torch_in_torch_out(mlp_module):
    x = torch.randn(3, 8)
    out = mlp_module.run({"x": x})["y"]
    assert isinstance(out, torch.Tensor) and out.shape == (3, 4)
    np.testing.assert_allclose(out.numpy(), mlp_module.run({"x": x.numpy()})["y"], rtol=1e-6)
    assert isinstance(mlp_module.run({"x": x}, output="numpy")["y"], np.ndarray)


def test_inputs_cross_without_a_copy():
    t = torch.randn(4, 8, requires_grad=True)  # a tensor that requires grad is detached
    assert np.shares_memory(as_feed(t), t.detach().numpy())
    host = tvm.runtime.tensor(np.arange(6, dtype=np.float32))  # any DLPack producer
    view = as_feed(host)
    assert isinstance(view, np.ndarray) and np.array_equal(view, np.arange(6, dtype=np.float32))
    view[0] = 7  # the same memory
    assert host.numpy()[0] == 7


def test_outputs_are_the_runtimes_own_memory(mlp_module):
    x = np.ones((2, 8), np.float32)
    mlp_module.run({"x": x})  # the first two calls learn which outputs are fresh buffers
    mlp_module.run({"x": x})
    numpy_out = mlp_module.run({"x": x}, output="dlpack")["y"]
    torch_out = torch.from_dlpack(numpy_out)
    assert torch_out.data_ptr() == numpy_out.ctypes.data  # torch over the same buffer


def test_a_wrong_output_kind_is_one_line(mlp_module):
    with pytest.raises(InputError, match="output must be one of numpy, torch, dlpack, got 'jax'"):
        mlp_module.run({"x": np.ones((1, 8), np.float32)}, output="jax")


def test_sessions_answer_in_kind(tiny_module):
    session = tiny_module.session()
    logits = session.prefill(torch.tensor([[1, 2, 3]]))
    assert isinstance(logits, torch.Tensor) and logits.shape == (1, tiny_module.outputs[0][1].shape[-1])
    assert isinstance(session.decode(torch.tensor([4])), torch.Tensor)
    assert isinstance(session.decode(np.array([5])), np.ndarray)
    tokens = tiny_module.session().generate(torch.tensor([[1, 2]]), max_new_tokens=3)
    assert isinstance(tokens, torch.Tensor) and tokens.shape == (1, 3)


def test_a_strided_tensor_is_not_used_in_place_and_says_so():
    """The kernels read dense buffers: TVM refuses a strided view, in one line."""
    with pytest.raises(InputError, match="must be dense and 64-byte aligned.*not contiguous"):
        device_tensor(torch.zeros(64, 64)[:, ::2])
