"""The cuda target: NVIDIA GPUs. nvcc compiles TVM's CUDA source at build time into a fatbin
(SASS for the arch plus PTX, which newer GPUs JIT-compile); the host code is a TVM library
run by runtimes.cuda on tvm.cuda(0)."""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass

from sbc.codegen.targets.gpu import GpuTarget
from sbc.errors import CompileError, UnsupportedError
from sbc.runtimes import cuda as runtime
from sbc.runtimes.machine import find_nvcc, nvcc_fatbin

DEFAULT_ARCH = "sm_80"  # Ampere: the oldest arch the artifact's PTX is JIT-compiled from


@dataclass(frozen=True)
class CudaTarget(GpuTarget):
    kind = "cuda"
    missing_device = runtime.NO_DEVICE

    @classmethod
    def checked_arch(cls, arch: str | None) -> str:
        arch = arch or DEFAULT_ARCH
        if not re.fullmatch(r"sm_\d{2,3}[af]?", arch):
            raise UnsupportedError(f"unknown CUDA arch '{arch}'; expected sm_<major><minor>, "
                                   f"e.g. sm_80 or sm_90")
        if int(re.match(r"sm_(\d+)", arch).group(1)) < 75:
            raise UnsupportedError(f"CUDA arch '{arch}' is older than sm_75, which CUDA 13 "
                                   f"no longer compiles for")
        return arch

    def tvm(self):
        """CUDA with a generic host of this ISA: the host code only launches kernels, and
        must run on whatever CPU the GPU machine has."""
        import tvm
        return tvm.target.Target({"kind": "cuda", "arch": self.arch}, host={"kind": "llvm"})

    @contextmanager
    def device_compiler(self):
        if find_nvcc() is None:
            raise CompileError("the cuda target compiles kernels with nvcc, which was not found "
                               "(PATH, CUDA_HOME, /usr/local/cuda): install the CUDA toolkit")
        with super().device_compiler() as device:
            yield device

    def device_members(self, source: str, launches: dict, mod) -> dict[str, bytes]:
        return {runtime.SOURCE: source.encode(), runtime.FATBIN: nvcc_fatbin(source, self.arch)}

    @classmethod
    def device_count(cls) -> int:
        return runtime.cuda_device_count()

    @classmethod
    def load(cls, library, files, manifest, device=0, **signature):
        return runtime.cuda_runtime(library, files, device, **signature)

