"""The host CPU as a TVM target, and the CPU facts recorded in compiled artifacts."""

from __future__ import annotations

import os
import platform

import tvm

# flags worth knowing for sbc's kernels (vector width, integer dot products)
INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vnni", "avx_vnni", "amx_int8")


def host_cpu_name() -> str:
    return tvm.target.codegen.llvm_get_system_cpu()


def host_cpu_target(num_cores: int | None = None) -> tvm.target.Target:
    """LLVM for this machine's CPU; without mcpu LLVM targets generic x86-64 (2-3x slower)."""
    cores = num_cores or os.cpu_count() or 1
    return tvm.target.Target({"kind": "llvm", "mcpu": host_cpu_name(), "num-cores": cores})


def host_cpu_features() -> dict:
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {"cpu": host_cpu_name(), "arch": platform.machine(), "cores": os.cpu_count(),
            "features": sorted(f for f in INTERESTING_FLAGS if f in flags)}
