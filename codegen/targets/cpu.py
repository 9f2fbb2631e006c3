"""The cpu target: LLVM for an x86-64 or other host ISA, scheduled by codegen.schedule_cpu.

By default the code is for this machine's CPU (its LLVM name, its cores). `cpu=` names
another CPU of the same ISA (`sbc compile --cpu skylake-avx512 --cores 16`): LLVM knows each
named CPU's features, so the kernels (the spike matmul's integer dot product included) are
chosen for that CPU, and the artifact records them for the machine that loads it.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass

from sbc.codegen.targets.base import Target
from sbc.errors import TargetUnavailableError, UnsupportedError
from sbc.runtimes.machine import FLAGS, host_cpu_features, host_cpu_name

NATIVE = "native"  # --cpu native: this machine's CPU (the default)


@dataclass(frozen=True)
class CpuTarget(Target):
    kind = "cpu"
    loads_eagerly = True  # cheap, and a module compiled here is run here
    cores: int = 1
    features: tuple[str, ...] = ()

    @classmethod
    def check(cls, arch: str | None = None, cpu: str | None = None, cores: int | None = None):
        if arch is not None:
            raise UnsupportedError("--arch applies to the cuda and maca targets; the cpu target "
                                   "compiles for this machine's CPU, or the one named by --cpu")
        if cores is not None and (isinstance(cores, bool) or not isinstance(cores, int)
                                  or cores < 1):
            raise UnsupportedError(f"cores must be a positive number of cores, got {cores!r}")
        if cpu not in (None, NATIVE):
            _check_cpu_name(cpu)
        return None

    @classmethod
    def resolve(cls, arch: str | None = None, cpu: str | None = None,
                cores: int | None = None) -> "CpuTarget":
        cls.check(arch, cpu, cores)
        host = host_cpu_name()
        name = host if cpu in (None, NATIVE) else cpu
        features = host_cpu_features()["features"] if name == host else _llvm_features(name)
        return cls(name, cores or os.cpu_count() or 1, tuple(features))

    @property
    def native(self) -> bool:
        """Whether the code is for this machine's CPU."""
        return self.arch == host_cpu_name()

    def tvm(self):
        """LLVM for the CPU; without mcpu LLVM targets generic x86-64 (2-3x slower).
        `num-cores` sizes TVM's thread pool for parallel loops. Its exp is vector arithmetic,
        not a library call per lane (codegen/fast_math.py)."""
        import tvm
        from sbc.codegen import fast_math
        fast_math.register()
        return tvm.target.Target({"kind": "llvm", "mcpu": self.arch, "num-cores": self.cores})

    def kernel_lowerings(self) -> dict:
        from sbc.codegen.kernels.spike_matmul import integer_dot_instruction
        return {"SpikeMatMul": _spike_matmul(integer_dot_instruction(list(self.features)))}

    def schedule(self, mod, tvm_target, kernels):
        from sbc.codegen.schedule_cpu import schedule_cpu
        return schedule_cpu(mod, tvm_target)

    def pass_config(self) -> dict:
        # loop partitioning splits the predicated last iteration off loops over a symbolic
        # extent (Where over a symbolic axis: 8.4 ms -> 0.14 ms)
        return {"s_tir.LoopPartition": {"partition_const_loop": True}}

    def manifest(self) -> dict:
        return {"kind": "cpu", "tvm_target": str(self.tvm().export()), "cpu": self.arch,
                "arch": platform.machine(), "cores": self.cores, "features": sorted(self.features)}

    @property
    def times_spike_kernels(self) -> bool:
        return self.native  # timings here say nothing about another CPU

    @classmethod
    def check_runnable(cls, entry: dict, path: str, host_cpu: bool = True) -> None:
        """Code built for another ISA, or using vector extensions this CPU lacks, would crash
        with an illegal instruction: refuse it with a clear line instead."""
        if not host_cpu:
            return
        host = host_cpu_features()
        arch = entry.get("arch")
        if arch and arch != host["arch"]:
            raise TargetUnavailableError(f"{path} was compiled for {arch} CPUs; this machine is "
                                         f"{host['arch']}: recompile it here")
        lacking = sorted(set(entry.get("features", ())) - set(host["features"]))
        if lacking:
            raise TargetUnavailableError(
                f"{path} was compiled for a CPU with {', '.join(lacking)} "
                f"({entry.get('cpu')}), which this CPU ({host['cpu']}) lacks: recompile it here")

    @classmethod
    def load(cls, library, files, manifest, device=0, **signature):
        from sbc.runtimes.cpu import CpuRuntime  # one device: device_index allows only 0
        return CpuRuntime.from_library_bytes(library, **signature)


def host_cpu_target():
    """The TVM target for this machine's CPU (what sbc's own kernel tests and benches build)."""
    return CpuTarget.resolve().tvm()


@functools.lru_cache(maxsize=None)
def _spike_matmul(instruction: str):
    """The SpikeMatMul kernel lowering for one integer dot instruction (one function per
    instruction: codegen.build caches kernels by their lowering function)."""
    from sbc.codegen.kernels.spike_matmul import spike_matmul_kernel
    return functools.partial(spike_matmul_kernel, instruction=instruction)


def _check_cpu_name(name: str) -> None:
    """A CPU LLVM knows for this machine's ISA (LLVM would silently build generic code)."""
    import tvm
    from tvm.target import codegen
    if not isinstance(name, str) or \
            not codegen.llvm_is_valid_cpu(name, str(codegen.llvm_get_system_triple())):
        known = sorted(set(codegen.llvm_get_cpu_archlist(tvm.target.Target({"kind": "llvm"}))))
        raise UnsupportedError(f"unknown CPU {name!r} for {platform.machine()}; LLVM knows: "
                               f"{', '.join(known[:12])}, ... ({len(known)} names; `native` "
                               f"is this machine)")


def _llvm_features(name: str) -> list[str]:
    """The features sbc's kernels care about (runtimes.machine.FLAGS) that LLVM gives the
    named CPU; LLVM spells amx_int8 as amx-int8."""
    import tvm
    from tvm.target import codegen
    target = tvm.target.Target({"kind": "llvm", "mcpu": name})
    return [flag for flag in FLAGS
            if codegen.llvm_cpu_has_features(flag.replace("_", "-"), target)]
