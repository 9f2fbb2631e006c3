"""The cpu target: LLVM for an x86-64 or other host ISA, scheduled by codegen.schedule_cpu.

By default the code is for this machine's CPU (its LLVM name, its cores). `cpu=` names
another CPU of the same ISA (`sbc compile --cpu skylake-avx512 --cores 16`): LLVM knows each
named CPU's features, so the kernels (the spike matmul's integer dot product included) are
chosen for that CPU, and the artifact records them for the machine that loads it.

`tune=N` (`sbc compile --tune N`) adds MetaSchedule's search to sbc's schedules
(codegen/tune.py); it times kernels here, so it needs the code to be for this CPU.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass, field

from sbc.codegen.targets.base import Target
from sbc.errors import TargetUnavailableError, UnsupportedError
from sbc.runtimes.machine import FLAGS, host_cpu_features, host_cpu_name

NATIVE = "native"  # --cpu native: this machine's CPU (the default)
ELEMENT = "element"  # manifest: the kernels need each argument aligned to its element only


@dataclass(frozen=True)
class CpuTarget(Target):
    kind = "cpu"
    loads_eagerly = True  # cheap, and a module compiled here is run here
    cores: int = 1
    features: tuple[str, ...] = ()
    tuning: object = field(default=None, compare=False)  # a codegen.tune.Tuning, or None

    @classmethod
    def check(cls, arch: str | None = None, cpu: str | None = None, cores: int | None = None,
              tune: int | None = None):
        if arch is not None:
            raise UnsupportedError("--arch applies to the cuda and maca targets; the cpu target "
                                   "compiles for this machine's CPU, or the one named by --cpu")
        if cores is not None and (isinstance(cores, bool) or not isinstance(cores, int)
                                  or cores < 1):
            raise UnsupportedError(f"cores must be a positive number of cores, got {cores!r}")
        if cpu not in (None, NATIVE):
            _check_cpu_name(cpu)
        if tune is not None:
            _check_tune(tune, cpu)
        return None

    @classmethod
    def resolve(cls, arch: str | None = None, cpu: str | None = None,
                cores: int | None = None, tune: int | None = None,
                tune_log: str | None = None) -> "CpuTarget":
        """tune: MetaSchedule trials per kernel; tune_log: the folder of the tuning log."""
        cls.check(arch, cpu, cores, tune)
        host = host_cpu_name()
        name = host if cpu in (None, NATIVE) else cpu
        features = host_cpu_features()["features"] if name == host else _llvm_features(name)
        tuning = None
        if tune is not None:
            from sbc.codegen.tune import Tuning
            tuning = Tuning(tune, tune_log)
        return cls(name, cores or os.cpu_count() or 1, tuple(features), tuning)

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
        scheduled = schedule_cpu(mod, tvm_target)
        if self.tuning is None:
            return scheduled
        from sbc.codegen.tune import tune_module
        return tune_module(mod, scheduled, tvm_target, self)

    def pass_config(self) -> dict:
        # loop partitioning splits the predicated last iteration off loops over a symbolic
        # extent (Where over a symbolic axis: 8.4 ms -> 0.14 ms)
        return {"s_tir.LoopPartition": {"partition_const_loop": True}}

    def tir_pipeline(self) -> str:
        from tvm.tirx.compilation_pipeline import register_tir_pipeline
        register_tir_pipeline(CPU_PIPELINE, _cpu_pipeline)  # a name in TVM's table
        return CPU_PIPELINE

    def manifest(self) -> dict:
        return {"kind": "cpu", "tvm_target": str(self.tvm().export()), "cpu": self.arch,
                "arch": platform.machine(), "cores": self.cores, "features": sorted(self.features),
                "argument_alignment": ELEMENT}

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
        # artifacts from before the element-aligned arguments need their inputs at 64 bytes
        element_aligned = manifest.get("target", {}).get("argument_alignment") == ELEMENT
        return CpuRuntime.from_library_bytes(library, element_aligned=element_aligned, **signature)


CPU_PIPELINE = "sbc.cpu"


def _cpu_pipeline():
    """TVM's TIR lowering, then sbc's late passes: kernels take a caller's array at any
    element-aligned address, not only at 64 bytes (codegen.element_aligned_arguments), and
    run small work on the calling thread (codegen.serial_when_small)."""
    import tvm
    from tvm.tirx.compilation_pipeline import get_tir_pipeline

    from sbc.codegen.element_aligned_arguments import element_aligned_arguments
    from sbc.codegen.serial_when_small import serial_when_small_pass
    lower, finalize_host, finalize_device = get_tir_pipeline("default")
    # the serial and parallel copies of a loop define the same variables: renamed apart
    passes = [lower, element_aligned_arguments, serial_when_small_pass,
              tvm.tirx.transform.ConvertSSA()]
    return tvm.transform.Sequential(passes), finalize_host, finalize_device


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


def _check_tune(trials, cpu: str | None) -> None:
    """--tune N: a positive number of trials, for this machine's CPU (its timings say
    nothing about another CPU)."""
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise UnsupportedError(f"--tune takes a positive number of MetaSchedule trials per "
                               f"kernel, got {trials!r}")
    if cpu not in (None, NATIVE) and cpu != host_cpu_name():
        raise UnsupportedError(f"--tune times kernels on this machine's CPU "
                               f"({host_cpu_name()}), which says nothing about {cpu}: tune on "
                               f"a {cpu} machine, or compile for {cpu} without --tune")


def _llvm_features(name: str) -> list[str]:
    """The features sbc's kernels care about (runtimes.machine.FLAGS) that LLVM gives the
    named CPU; LLVM spells amx_int8 as amx-int8."""
    import tvm
    from tvm.target import codegen
    target = tvm.target.Target({"kind": "llvm", "mcpu": name})
    return [flag for flag in FLAGS
            if codegen.llvm_cpu_has_features(flag.replace("_", "-"), target)]
