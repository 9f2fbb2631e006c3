"""What the GPU targets share: the CPU's lowering with thread-bound kernels
(codegen.schedule_gpu), TVM's CUDA codegen with a host of this ISA, and device code compiled
at build time (codegen.gpu_compile). A GPU kind says how its device source is made and
packaged, how its device is found and how its runtime loads."""

from __future__ import annotations

import platform
from contextlib import nullcontext
from dataclasses import dataclass

from sbc.codegen.targets.base import Target
from sbc.errors import TargetUnavailableError, UnsupportedError


@dataclass(frozen=True)
class GpuTarget(Target):
    gpu = True
    missing_device = "no device was found"  # what check_runnable says when device_count is 0

    @classmethod
    def check(cls, arch: str | None = None, **options) -> str:
        if options.get("tune") is not None:  # MetaSchedule's search times kernels on this CPU
            raise UnsupportedError("--tune applies to the cpu target")
        given = [name for name, value in options.items() if value is not None]
        if given:  # --cpu / --cores name the CPU of a cpu build; a GPU build's host is generic
            raise UnsupportedError(f"{', '.join(given)} applies to the cpu target only (a GPU "
                                   f"build's host code runs on any CPU of this ISA)")
        return cls.checked_arch(arch)

    @classmethod
    def checked_arch(cls, arch: str | None) -> str:
        """The arch to build for (the kind's default when None); UnsupportedError if bad."""
        raise NotImplementedError

    @classmethod
    def resolve(cls, arch: str | None = None, **options) -> "GpuTarget":
        return cls(cls.check(arch, **options))

    def kernel_lowerings(self) -> dict:
        from sbc.codegen.schedule_gpu import GPU_KERNELS
        return GPU_KERNELS

    def schedule(self, mod, tvm_target, kernels):
        from sbc.codegen.schedule_gpu import require_thread_bound, schedule_gpu
        mod = schedule_gpu(mod, tvm_target)
        require_thread_bound(mod, kernels, self.kind)
        return mod

    def device_compiler(self):
        from sbc.codegen.gpu_compile import device_compiler
        return device_compiler(self)

    def manifest(self) -> dict:
        """The target entry (the host ISA too: the host program runs there)."""
        return {"kind": self.kind, "arch": self.arch, "tvm_target": str(self.tvm().export()),
                "host_arch": platform.machine()}

    # -- the device code (codegen.gpu_compile calls these) -------------------------------

    def device_source(self, cuda_source: str) -> str:
        """The device source from the CUDA source TVM emitted."""
        return cuda_source

    def no_kernels_source(self) -> str:
        """The device source of a model without kernels (TVM then emits none)."""
        return "// the model has no device kernels\n"

    def recording(self, launches: dict):
        """A context recording the host side of the kernel launches into `launches`, for
        targets whose runtime drives the kernels itself."""
        return nullcontext()

    def device_members(self, source: str, launches: dict, mod) -> dict[str, bytes]:
        raise NotImplementedError

    # -- run side ------------------------------------------------------------------------

    @classmethod
    def device_count(cls) -> int:
        raise NotImplementedError

    @classmethod
    def check_runnable(cls, entry: dict, path: str, host_cpu: bool = True) -> None:
        """The device (through its driver, via ctypes: no TVM needed) and the host ISA."""
        if cls.device_count() == 0:
            raise TargetUnavailableError(
                f"{path} was compiled for target '{cls.kind}', which is not available on this "
                f"machine: {cls.missing_device}; recompile with --target cpu or run it where "
                f"{cls.kind} exists")
        host = entry.get("host_arch")
        if host and host != platform.machine():
            raise TargetUnavailableError(f"{path} has {host} host code; this machine is "
                                         f"{platform.machine()}: recompile it here")
