"""Targets: the host CPU (LLVM), NVIDIA GPUs (CUDA) and MetaX GPUs (MACA) as TVM targets,
and the facts about them recorded in compiled artifacts.

`resolve(name, arch)` gives the `SbcTarget` a build follows: which TVM target to generate
code for, and whether the GPU path applies (GPU schedules and kernels instead of the CPU's).
MACA has no TVM target kind (none can be registered from Python): it is kind "cuda" plus the
registered tag MACA_TAG (keys maca/gpu, 64-lane waves, 64 KiB shared memory), and codegen.maca
rewrites the CUDA source TVM emits into the MACA dialect.

TVM is imported inside the functions that need it: checking a target name must stay instant.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass

from sbc.errors import UnsupportedError
from sbc.runtimes.machine import host_cpu_name, maca_path

TARGET_KINDS = ("cpu", "cuda", "maca")
DEFAULT_CUDA_ARCH = "sm_80"  # Ampere: the oldest arch the artifact's PTX is JIT-compiled from
DEFAULT_MACA_ARCH = "xcore1000"  # C500-class MetaX GPUs
MACA_TAG = "metax/maca"
MACA_LIMITS = {"thread_warp_size": 64, "max_shared_memory_per_block": 65536,
               "max_threads_per_block": 1024, "max_num_threads": 1024}

def host_cpu_target(num_cores: int | None = None) -> "tvm.target.Target":
    """LLVM for this machine's CPU; without mcpu LLVM targets generic x86-64 (2-3x slower).
    `num-cores` sizes TVM's thread pool for parallel loops (default: all cores). Its exp is
    vector arithmetic, not a library call per lane (codegen/fast_math.py)."""
    import tvm

    from sbc.codegen import fast_math
    fast_math.register()
    cores = num_cores or os.cpu_count() or 1
    return tvm.target.Target({"kind": "llvm", "mcpu": host_cpu_name(), "num-cores": cores})


# -- GPU targets -------------------------------------------------------------------------------

@dataclass(frozen=True)
class SbcTarget:
    """What a build is for: kind (cpu, cuda, maca) and arch (sm_80, xcore1000; the CPU name)."""
    kind: str
    arch: str

    @property
    def gpu(self) -> bool:
        return self.kind != "cpu"

    def tvm(self) -> "tvm.target.Target":
        """The TVM target. GPU ones carry a generic x86-64 (or this ISA's baseline) host: the
        host code only launches kernels, and must run on whatever CPU the GPU machine has."""
        import tvm
        if self.kind == "cpu":
            return host_cpu_target()
        host = {"kind": "llvm"}
        if self.kind == "cuda":
            return tvm.target.Target({"kind": "cuda", "arch": self.arch}, host=host)
        register_maca_tag()
        return tvm.target.Target(MACA_TAG, host=host)

    def manifest(self) -> dict:
        """The artifact's target entry (the host ISA too: the host program runs there)."""
        entry = {"kind": self.kind, "arch": self.arch, "tvm_target": str(self.tvm().export()),
                 "host_arch": platform.machine()}
        if self.kind == "maca":
            entry["warp_size"] = MACA_LIMITS["thread_warp_size"]
        return entry


def resolve(name: str, arch: str | None = None) -> SbcTarget:
    """The target for `--target name [--arch arch]`; UnsupportedError on a bad name or arch."""
    arch = checked_arch(name, arch)
    return SbcTarget(name, host_cpu_name() if name == "cpu" else arch)


def checked_arch(name: str, arch: str | None = None) -> str | None:
    """The GPU arch a build for `--target name [--arch arch]` is for (None for cpu: this
    machine's CPU), without importing TVM; UnsupportedError on a bad name or arch."""
    if name not in TARGET_KINDS:
        raise UnsupportedError(f"unknown target '{name}'; supported: {', '.join(TARGET_KINDS)}")
    if name == "cpu":
        if arch is not None:
            raise UnsupportedError("--arch applies to the cuda and maca targets; the cpu target "
                                   "always compiles for this machine's CPU")
        return None
    if name == "cuda":
        arch = arch or DEFAULT_CUDA_ARCH
        if not re.fullmatch(r"sm_\d{2,3}[af]?", arch):
            raise UnsupportedError(f"unknown CUDA arch '{arch}'; expected sm_<major><minor>, "
                                   f"e.g. sm_80 or sm_90")
        if int(re.match(r"sm_(\d+)", arch).group(1)) < 75:
            raise UnsupportedError(f"CUDA arch '{arch}' is older than sm_75, which CUDA 13 "
                                   f"no longer compiles for")
        return arch
    arch = arch or maca_arch()
    if not re.fullmatch(r"xcore\d+", arch):
        raise UnsupportedError(f"unknown MACA arch '{arch}'; expected xcore<N>, e.g. xcore1000")
    return arch


def register_maca_tag() -> None:
    """MACA_TAG: kind cuda, keys maca/gpu, MetaX's limits. The CUDA `arch` only selects the
    CUDA codegen's feature level; codegen.maca checks nothing NVIDIA-only survives."""
    import tvm
    tvm.target.register_tag(MACA_TAG, {"kind": "cuda", "keys": ["maca", "gpu"], "arch": "sm_80",
                                       **MACA_LIMITS}, override=True)


def maca_arch() -> str:
    """MACA_ARCH, else what `macainfo` reports (an xcore name), else DEFAULT_MACA_ARCH."""
    if os.environ.get("MACA_ARCH"):
        return os.environ["MACA_ARCH"]
    tool = shutil.which("macainfo") or os.path.join(maca_path(), "bin", "macainfo")
    if os.access(tool, os.X_OK):
        try:
            out = subprocess.run([tool], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        found = re.search(r"\bxcore\d+\b", out)
        if found:
            return found.group(0)
    return DEFAULT_MACA_ARCH
