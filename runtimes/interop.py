"""Arrays in and out by DLPack: what Module.run and sessions take and give back.

Inputs may be NumPy arrays, torch tensors or any object that speaks DLPack (`__dlpack__`).
One in host memory becomes a NumPy array over the same memory (no copy; the CPU runtime then
hands it to the kernels by DLPack too); one in device memory goes to the runtime as it is,
which takes it by DLPack where it is on the runtime's own device. Outputs come back as the
caller's kind: torch tensors for torch inputs, NumPy arrays otherwise, or what `output=`
asks ("numpy", "torch", or "dlpack": the runtime's own arrays, NumPy on the host, TVM tensors
on a device, both DLPack producers). torch is imported only when a torch tensor is seen.
"""

from __future__ import annotations

import numpy as np

from sbc.errors import InputError

OUTPUTS = ("numpy", "torch", "dlpack")
_CPU = 1  # DLPack's kDLCPU


def as_feed(value):
    """A host DLPack object as a NumPy array over its memory; anything else as given."""
    if isinstance(value, np.ndarray) or not hasattr(value, "__dlpack__"):
        return value
    if _is_torch(value):
        value = value.detach()  # a tensor that requires grad refuses DLPack; no grad flows
    if on_device(value):
        return value
    return np.from_dlpack(value)


def to_host(value):
    """A value in host memory: device tensors are copied back (token ids, a few bytes)."""
    value = as_feed(value)
    if on_device(value):
        return device_tensor(value).numpy()
    return value


def on_device(value) -> bool:
    """Whether `value` lives in device memory (a DLPack object that is not on the CPU)."""
    if isinstance(value, np.ndarray):  # the common case first: this runs on every call
        return False
    device = getattr(value, "__dlpack_device__", None)
    return device is not None and device()[0] != _CPU


def device_tensor(value):
    """A caller's device tensor as a TVM tensor over the same memory. The kernels read
    inputs as dense, 64-byte aligned buffers, and TVM refuses any other layout: that is one
    line here, not a TVM trace."""
    import tvm
    try:
        return tvm.runtime.from_dlpack(value)
    except Exception as e:  # noqa: BLE001 - TVM raises its own error types
        reason = (str(e).strip().splitlines() or ["?"])[-1]
        raise InputError(f"a tensor in device memory is used in place and must be dense and "
                         f"64-byte aligned (e.g. torch's .contiguous()); TVM says: {reason}") from None


def described(value):
    """A value as signature checks read it: device tensors (TVM's, or any DLPack object in
    device memory) become an array of their dtype and shape that holds no memory."""
    import tvm
    if not isinstance(value, tvm.runtime.Tensor):
        if not on_device(value):
            return value
        value = device_tensor(value)
    return np.broadcast_to(np.zeros((), np.dtype(str(value.dtype))), tuple(value.shape))


def output_kind(inputs, output: str | None) -> str:
    """What the outputs come back as: `output` if given, else torch for torch inputs."""
    if output is None:
        return "torch" if any(_is_torch(v) for v in inputs) else "numpy"
    if output not in OUTPUTS:
        raise InputError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    return output


def as_output(value, kind: str, to_host=np.asarray):
    """A runtime's output (a NumPy array, or a tensor it kept on the device) as `kind`; one
    that speaks no DLPack (MACA's device tensors) comes through the host (`to_host`)."""
    if not isinstance(value, np.ndarray) and not hasattr(value, "__dlpack__"):
        value = to_host(value)
    if kind == "torch":
        import torch
        return torch.from_dlpack(value)  # no copy, on the host or the device
    if kind == "numpy" and not isinstance(value, np.ndarray):
        return value.numpy()
    return value


def _is_torch(value) -> bool:
    return type(value).__module__.startswith("torch")
