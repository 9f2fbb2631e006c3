"""The maca target: MetaX GPUs. MACA has no TVM target kind (none can be registered from
Python): it is kind "cuda" plus the registered tag TAG (keys maca/gpu, 64-lane waves, 64 KiB
shared memory), and codegen.maca rewrites the CUDA source TVM emits into the MACA dialect and
records each kernel launch, so that runtimes.maca can drive the program without TVM. The
artifact holds no TVM library: the host program is maca/launches.json."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from sbc.codegen.targets.gpu import GpuTarget
from sbc.errors import UnsupportedError
from sbc.runtimes.machine import maca_path

DEFAULT_ARCH = "xcore1000"  # C500-class MetaX GPUs
TAG = "metax/maca"
LIMITS = {"thread_warp_size": 64, "max_shared_memory_per_block": 65536,
          "max_threads_per_block": 1024, "max_num_threads": 1024}


@dataclass(frozen=True)
class MacaTarget(GpuTarget):
    kind = "maca"
    has_library = False
    missing_device = "no MetaX runtime was found (libmcruntime) or no MetaX GPU is present"

    @classmethod
    def checked_arch(cls, arch: str | None) -> str:
        arch = arch or maca_arch()
        if not re.fullmatch(r"xcore\d+", arch):
            raise UnsupportedError(f"unknown MACA arch '{arch}'; expected xcore<N>, "
                                   f"e.g. xcore1000")
        return arch

    def tvm(self):
        import tvm
        register_tag()
        return tvm.target.Target(TAG, host={"kind": "llvm"})

    def manifest(self) -> dict:
        return {**super().manifest(), "warp_size": LIMITS["thread_warp_size"]}

    def device_source(self, cuda_source: str) -> str:
        from sbc.codegen.maca import to_maca
        return to_maca(cuda_source)

    def no_kernels_source(self) -> str:
        from sbc.codegen.maca import HEADER
        return HEADER + super().no_kernels_source()

    def recording(self, launches: dict):
        from sbc.codegen.maca import record_launches
        return record_launches(launches)

    def device_members(self, source: str, launches: dict, mod) -> dict[str, bytes]:
        from sbc.codegen.maca import package
        return package(source, launches, self, mod)

    @classmethod
    def device_count(cls) -> int:
        from sbc.runtimes.maca import maca_device_count
        return maca_device_count()

    @classmethod
    def load(cls, library, files, manifest, device=0, **signature):
        from sbc.runtimes.maca import MacaRuntime
        return MacaRuntime(files, manifest, device=device, **signature)


def register_tag() -> None:
    """TAG: kind cuda, keys maca/gpu, MetaX's limits. The CUDA `arch` only selects the CUDA
    codegen's feature level; codegen.maca checks nothing NVIDIA-only survives."""
    import tvm
    tvm.target.register_tag(TAG, {"kind": "cuda", "keys": ["maca", "gpu"], "arch": "sm_80",
                                  **LIMITS}, override=True)


def maca_arch() -> str:
    """MACA_ARCH, else what `macainfo` reports (an xcore name), else DEFAULT_ARCH."""
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
    return DEFAULT_ARCH
