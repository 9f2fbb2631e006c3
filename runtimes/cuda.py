"""The CUDA runtime: the same Relax VM program as the CPU's, on tvm.cuda(0).

An artifact for cuda holds the host code (lib.so), the CUDA source and nvcc's fatbin (SASS for
the arch it was built for plus PTX, which the driver JIT-compiles on newer GPUs). TVM 0.27's
CUDA module keeps only the source and asks `tvm_callback_cuda_compile` for device code when it
is loaded; sbc's callback answers with the artifact's fatbin (matched by the source's sha256),
so no CUDA compiler is needed where the model runs. Weights are copied to the GPU once; inputs
go up and outputs come back as NumPy arrays on every run, except those a session keeps on the
GPU (its state: runtimes.cpu's `keep`).

`cuda_device_count()` asks the driver (libcuda, through ctypes) without importing TVM, so the
artifact check stays instant and a machine without a GPU gets one line, not a TVM traceback.
"""

from __future__ import annotations

import ctypes
import hashlib

from sbc.errors import ArtifactError, TargetUnavailableError

FATBIN, SOURCE = "cuda/kernels.fatbin", "cuda/kernels.cu"
_FATBINS: dict[str, bytes] = {}  # sha256 of a CUDA source -> its fatbin, for every loaded module
NO_DEVICE = "no CUDA device was found"


def cuda_device_count() -> int:
    """CUDA devices the driver sees (0 without a driver or a GPU)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def _compile_callback(code, *_target) -> bytes:
    """TVM asks for the device code of a CUDA source: the artifact's fatbin."""
    key = hashlib.sha256(str(code).encode()).hexdigest()
    if key not in _FATBINS:  # a source sbc did not build: compile it here if nvcc exists
        from sbc.runtimes.machine import nvcc_fatbin
        import tvm
        arch = "sm_" + tvm.cuda(0).compute_version.replace(".", "")
        _FATBINS[key] = nvcc_fatbin(str(code), arch)
    return _FATBINS[key]


def _install_callback() -> None:
    import tvm_ffi
    tvm_ffi.register_global_func("tvm_callback_cuda_compile", _compile_callback, override=True)


def cuda_runtime(library: bytes, files: dict[str, bytes], index: int = 0, **kwargs):
    """A CpuRuntime-style runtime (run(feeds, program, keep) -> outputs) on CUDA GPU `index`."""
    count = cuda_device_count()
    if count == 0:
        raise TargetUnavailableError(f"cannot run the cuda model: {NO_DEVICE}")
    if index >= count:
        raise TargetUnavailableError(f"cannot run the cuda model on cuda:{index}: this machine "
                                     f"has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    if FATBIN not in files or SOURCE not in files:
        raise ArtifactError(f"the cuda artifact lacks {FATBIN if FATBIN not in files else SOURCE}")
    import tvm
    from sbc.runtimes.cpu import CpuRuntime
    _FATBINS[hashlib.sha256(files[SOURCE]).hexdigest()] = files[FATBIN]
    _install_callback()
    device = tvm.cuda(index)
    if not device.exist:  # a driver without a usable device, or TVM without CUDA
        raise TargetUnavailableError(f"cannot run the cuda model: {NO_DEVICE} by TVM")
    return CpuRuntime.from_library_bytes(library, device=device, **kwargs)
