"""The host CPU as a TVM target, and the CPU facts recorded in compiled artifacts."""

from __future__ import annotations

import os
import platform

import tvm

# flags worth knowing for sbc's kernels (vector width, integer dot products), as sbc names
# them -> the names /proc/cpuinfo uses
FLAGS = {"avx2": "avx2", "fma": "fma", "avx512f": "avx512f", "avx512bw": "avx512bw",
         "avx512vnni": "avx512_vnni", "avxvnni": "avx_vnni", "amx_int8": "amx_int8"}


def host_cpu_name() -> str:
    """LLVM's name for this CPU (e.g. 'znver1'), the `mcpu` of the target."""
    return str(tvm.target.codegen.llvm_get_system_cpu())


def host_cpu_target(num_cores: int | None = None) -> tvm.target.Target:
    """LLVM for this machine's CPU; without mcpu LLVM targets generic x86-64 (2-3x slower).
    `num-cores` sizes TVM's thread pool for parallel loops (default: all cores)."""
    cores = num_cores or os.cpu_count() or 1
    return tvm.target.Target({"kind": "llvm", "mcpu": host_cpu_name(), "num-cores": cores})


def host_cpu_features() -> dict:
    """{'cpu', 'arch', 'cores', 'features'}: what a compiled artifact was built for.
    Features come from /proc/cpuinfo, or from LLVM where that file does not exist."""
    flags = _proc_cpuinfo_flags()
    if flags:
        features = [name for name, linux in FLAGS.items() if linux in flags]
    else:
        features = [name for name in FLAGS if _llvm_has(name)]
    return {"cpu": host_cpu_name(), "arch": platform.machine(), "cores": os.cpu_count(),
            "features": sorted(features)}


def _proc_cpuinfo_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _llvm_has(feature: str) -> bool:
    """LLVM's view of the host CPU (LLVM spells the features without underscores)."""
    try:
        target = tvm.target.Target({"kind": "llvm", "mcpu": host_cpu_name()})
        return bool(tvm.target.codegen.llvm_cpu_has_features(feature, target))
    except Exception:  # an LLVM without that feature name
        return False
