"""What every target kind answers, on both sides of an artifact.

A `Target` is one kind of machine sbc compiles for (cpu, cuda, maca), resolved for one build
(which arch, which CPU). codegen.build asks it for the parts of the build that differ by kind:
kernel lowerings that replace the generic ones, the schedule, TVM's target and pass options,
the device code beside the host library, the manifest's target entry. `sbc.load` asks the
target kind named in a manifest whether this machine can run the artifact and for the runtime
that runs it (classmethods: no build is needed to load).

TVM is imported inside the methods that need it: checking a target name must stay instant.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

from sbc.errors import ArtifactError
from sbc.runtimes.artifact import LIBRARY, WEIGHTS


@dataclass(frozen=True)
class Target:
    kind: ClassVar[str]
    gpu: ClassVar[bool] = False
    has_library: ClassVar[bool] = True  # the artifact holds a TVM library (lib.so)
    loads_eagerly: ClassVar[bool] = False  # a Module loads its runtime when it is made
    arch: str  # the GPU arch (sm_80, xcore1000) or the CPU's LLVM name (znver4)

    # -- compile side --------------------------------------------------------------------

    @classmethod
    def check(cls, arch: str | None = None, **options) -> str | None:
        """`--arch` (and the kind's own options) checked without building anything: the
        arch the build will be for (None: decided at resolve). UnsupportedError if bad."""
        raise NotImplementedError

    @classmethod
    def resolve(cls, arch: str | None = None, **options) -> "Target":
        raise NotImplementedError

    def tvm(self):
        """The tvm.target.Target to generate code for."""
        raise NotImplementedError

    def kernel_lowerings(self) -> dict:
        """op -> fn(node) -> PrimFunc, replacing codegen.lower's kernel for that op."""
        return {}

    def schedule(self, mod, tvm_target, kernels: dict[str, list]):
        """The fused module with every kernel scheduled for this target."""
        raise NotImplementedError

    def pass_config(self) -> dict:
        """TVM PassContext options for the build."""
        return {}

    def tir_pipeline(self) -> str:
        """The name of TVM's TIR lowering pipeline for the build."""
        return "default"

    @contextmanager
    def device_compiler(self):
        """The device code compiler for one build (see DeviceCode)."""
        yield DeviceCode()

    def manifest(self) -> dict:
        """The artifact's target entry: what a machine must have to run the code."""
        raise NotImplementedError

    @property
    def times_spike_kernels(self) -> bool:
        """Whether the spike kernels can be timed here for the machine the code is for
        (codegen.spike_breakeven: this machine's CPU; not a GPU, not another CPU)."""
        return False

    # -- run side (from a manifest's target entry) ---------------------------------------

    @classmethod
    def required_members(cls) -> tuple[str, ...]:
        return (LIBRARY, WEIGHTS) if cls.has_library else (WEIGHTS,)

    @classmethod
    def check_runnable(cls, entry: dict, path: str, host_cpu: bool = True) -> None:
        """TargetUnavailableError (one line) unless this machine can run code built for
        `entry`; host_cpu=False checks only what needs no TVM (instant)."""
        raise NotImplementedError

    @classmethod
    def load(cls, library: bytes | None, files: dict[str, bytes], manifest: dict,
             device: int = 0, **signature):
        """The runtime (run(feeds, program, keep) -> outputs) for an artifact of this kind on
        device number `device`; TargetUnavailableError (one line) if there is no such device."""
        raise NotImplementedError

    @classmethod
    def check_members(cls, manifest: dict, path: str) -> None:
        files = manifest.get("files") or {}
        for name in cls.required_members():
            if name not in files:
                raise ArtifactError(f"{path}: the manifest lists no {name}")


class DeviceCode:
    """A build's device code beside the host library: none on the CPU. GPU targets hook into
    TVM's codegen for the build and return their members (codegen.gpu_compile)."""

    def failure(self):
        """sbc's own error raised inside a codegen callback, if any."""
        return None

    def finish(self, mod) -> dict[str, bytes]:
        """The artifact members holding the device code."""
        return {}

    def manifest(self) -> dict:
        return {}
