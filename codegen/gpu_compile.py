"""Device compilation for the GPU targets, hooked into TVM's CUDA codegen.

TVM 0.27's CUDA build emits CUDA source only: the CUDA module keeps the source and compiles it
when it is loaded (through `tvm_callback_cuda_compile`, NVRTC by default). sbc compiles at
build time instead, so an artifact needs no compiler on the GPU machine and a kernel that does
not compile fails `sbc compile`, not `sbc run`:

  cuda  the source TVM emitted (taken at `tvm_callback_cuda_postproc`) -> nvcc -> a fatbin
        with SASS for the arch and its PTX (newer GPUs JIT it), without --use_fast_math (an
        approximate division moves spike counts); runtimes.cuda hands it back to TVM when the
        module asks for the compiled source
  maca  postproc rewrites the source into the MACA dialect (codegen.maca.to_maca), and the
        host side of every kernel launch is recorded on the way (codegen.maca.record_launches)
        so the MACA runtime can drive the same program without TVM's CUDA runtime; the package
        (codegen.maca.package) holds source, launch plan and a build script

`device_compiler(target)` owns the postproc callback for one build (the previous one comes
back after); `finish()` returns the extra artifact members.
"""

from __future__ import annotations

from contextlib import contextmanager

import tvm
import tvm_ffi

from sbc.codegen.targets.base import DeviceCode
from sbc.errors import CompileError, SbcError

POSTPROC = "tvm_callback_cuda_postproc"


class DeviceCompiler(DeviceCode):
    """State of one GPU build: the emitted source and what went wrong, if anything. The
    target (codegen.targets.gpu.GpuTarget) says how its source is made and packaged."""

    def __init__(self, target):
        self.target = target
        self.source: str | None = None  # the device source: CUDA (cuda) or MACA (maca)
        self.cuda_source: str | None = None  # what TVM emitted, before any rewrite
        self.launches: dict = {}  # maca: host function -> its kernel launches
        self.error: Exception | None = None  # the first failure inside a callback

    def postproc(self, code: str, *_target) -> str:
        """TVM's hook on the emitted source (called with the source, on some versions also
        the target)."""
        self.cuda_source = str(code)
        try:
            self.source = self.target.device_source(self.cuda_source)
        except Exception as e:  # TVM would wrap it in a C++ trace: keep it for `failure`
            self.error = self.error or e
            raise
        return self.source

    # -- results -------------------------------------------------------------------------

    def failure(self) -> SbcError | None:
        """For a failed tvm.compile: sbc's own error if a callback raised one (else None: the
        build names the kernel TVM failed on, codegen.build.describe_failure)."""
        if isinstance(self.error, SbcError):
            return self.error
        if self.error is not None:
            return CompileError(f"{self.target.kind} device compilation failed: "
                                f"{_first_line(self.error)}")
        return None

    def manifest(self) -> dict:
        """Target entries the artifact records: the device kernels by name."""
        return {"kernels": kernel_names(self.source or "")}

    def finish(self, mod: tvm.IRModule) -> dict[str, bytes]:
        """The artifact members (cuda: source + nvcc's fatbin; maca: the package, its host
        program read from `mod`, the scheduled module that was compiled)."""
        if self.source is None:  # every value is known at compile time, or a view: no
            self.source = self.target.no_kernels_source()  # kernels, the runtime needs none
        return self.target.device_members(self.source, self.launches, mod)


@contextmanager
def device_compiler(target):
    """sbc's postproc callback (and the target's launch recorder) for one build."""
    device = DeviceCompiler(target)
    saved = tvm.get_global_func(POSTPROC, allow_missing=True)
    tvm_ffi.register_global_func(POSTPROC, device.postproc, override=True)
    try:
        with target.recording(device.launches):
            yield device
    finally:  # without a previous callback, one that passes the source through
        tvm_ffi.register_global_func(POSTPROC, saved or _identity, override=True)


def _identity(code, *_):
    return code


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def kernel_names(source: str) -> list[str]:
    """The __global__ functions of a CUDA / MACA source, in order (TVM declares each one
    before defining it: listed once)."""
    import re
    names = re.findall(r'extern "C" __global__ void(?: __launch_bounds__\(\d+\))? (\w+)\(', source)
    return list(dict.fromkeys(names))
