"""sbc.load(path, device=...): which device an artifact runs on, and a session's state kept in
device memory between steps (only logits come back). On the CPU, the device path (inputs
copied over, outputs back, state kept as TVM tensors) runs through `device_io=True`, so its
plumbing is checked without a GPU; tests/targets/test_cuda.py runs it on one."""

import numpy as np
import pytest
import torch
import tvm

import sbc
from sbc.errors import InputError
from sbc.runtimes.cpu import CpuRuntime


@pytest.fixture(scope="module")
def saved(tiny_module, tmp_path_factory):
    path = tmp_path_factory.mktemp("dev") / "tiny.sbc"
    tiny_module.save(path)
    return path


@pytest.mark.parametrize("device", [None, "cpu", "cpu:0", torch.device("cpu")])
def test_a_cpu_artifact_runs_on_the_cpu(saved, device):
    assert sbc.load(saved, device=device).device == 0


@pytest.mark.parametrize("device, message", [
    ("cuda:0", "compiled for cpu; it cannot run on device 'cuda:0' \\(recompile it with --target cuda\\)"),
    ("gpu", "device must be 'cpu', 'cuda\\[:N\\]' or 'maca\\[:N\\]', got 'gpu'"),
    ("cpu:1", "device must be"),
    ("cuda:x", "device must be"),
])
def test_a_wrong_device_is_one_line(saved, device, message):
    with pytest.raises(InputError, match=message):
        sbc.load(saved, device=device)


def on_device(module):
    """The module with its runtime in device mode (what a GPU's runtime does), on the CPU."""
    module._loaded = CpuRuntime.from_library_bytes(module.library, device_io=True,
                                                   **module._signature)
    return module


def test_session_state_stays_on_the_device(tiny_module, saved, tmp_path):
    ids = np.random.default_rng(0).integers(0, 64, (1, 9), dtype=np.int64)
    device, host = on_device(sbc.load(saved)).session(), tiny_module.session()
    np.testing.assert_allclose(device.prefill(ids[:, :6]), host.prefill(ids[:, :6]), atol=1e-5)
    for t in range(6, 9):
        got, want = device.decode(ids[:, t]), host.decode(ids[:, t])
        assert isinstance(got, np.ndarray)  # the logits come back
        np.testing.assert_allclose(got, want, atol=1e-5)
    position = tiny_module.recurrent["position"]
    kept = {n: v for n, v in device.state.items() if n != position}
    assert kept and all(isinstance(v, tvm.runtime.Tensor) for v in kept.values())
    # saved from device memory, restored into a fresh session: the same next logits
    device.save_state(tmp_path / "s.npz")
    again = on_device(sbc.load(saved)).session()
    again.load_state(tmp_path / "s.npz")
    np.testing.assert_allclose(again.decode(ids[:, 0]), host.decode(ids[:, 0]), atol=1e-5)


def test_kept_state_is_checked_like_any_input(saved):
    session = on_device(sbc.load(saved)).session()
    session.prefill(np.array([[1, 2, 3]], np.int64))
    name = next(n for n in session.state if n != session.module.recurrent["position"])
    wrong = tvm.runtime.tensor(np.zeros((2, 2), np.float32))
    with pytest.raises(InputError, match=f"input '{name}' must have"):
        session.module.step({"ids": np.array([[1]], np.int64)}, {**session.state, name: wrong})
