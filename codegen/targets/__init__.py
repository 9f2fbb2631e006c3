"""The targets sbc compiles for: one Target subclass per kind, one file each.

    cpu   codegen/targets/cpu.py   LLVM, this machine's CPU or one named by --cpu
    cuda  codegen/targets/cuda.py  NVIDIA GPUs (nvcc at build time, TVM's CUDA runtime)
    maca  codegen/targets/maca.py  MetaX GPUs (MACA source, sbc's own launch runtime)

A new backend is one file with its Target subclass (base.py says what it answers; gpu.py
holds what GPU kinds share) and its line in KINDS. Nothing here imports TVM.
"""

from __future__ import annotations

from sbc.codegen.targets.base import DeviceCode, Target
from sbc.codegen.targets.cpu import CpuTarget, host_cpu_target
from sbc.codegen.targets.cuda import CudaTarget
from sbc.codegen.targets.maca import MacaTarget
from sbc.errors import InputError, TargetUnavailableError, UnsupportedError

KINDS: dict[str, type[Target]] = {t.kind: t for t in (CpuTarget, CudaTarget, MacaTarget)}

__all__ = ["KINDS", "DeviceCode", "Target", "check_runnable", "check_target", "device_index",
           "host_cpu_target", "resolve", "target_kind"]


def target_kind(name: str) -> type[Target]:
    """The Target class of `--target name`; UnsupportedError naming the supported ones."""
    if name not in KINDS:
        raise UnsupportedError(f"unknown target '{name}'; supported: {', '.join(KINDS)}")
    return KINDS[name]


def check_target(name: str, arch: str | None = None, **options) -> str | None:
    """`--target name --arch ... --cpu ...` checked at once, before any work; the GPU arch
    the build is for (None for cpu)."""
    return target_kind(name).check(arch, **options)


def resolve(name: str, arch: str | None = None, **options) -> Target:
    """The Target a build follows (may import TVM: the host CPU's name is LLVM's)."""
    return target_kind(name).resolve(arch, **options)


def check_runnable(manifest: dict, path: str = "the artifact", *, host_cpu: bool = True) -> None:
    """TargetUnavailableError unless this machine can run the artifact's target; the
    members the target needs must be listed (ArtifactError). host_cpu=False checks only
    what needs no TVM (instant)."""
    kind = (manifest.get("target") or {}).get("kind")
    if kind not in KINDS:
        raise TargetUnavailableError(
            f"{path} was compiled for target '{kind}', which is not available on this machine "
            f"(this sbc runs: {', '.join(KINDS)}); recompile with --target cpu")
    KINDS[kind].check_members(manifest, path)
    KINDS[kind].check_runnable(manifest["target"], path, host_cpu=host_cpu)


def device_index(device, kind: str) -> int:
    """Which device of an artifact's kind `device` names: None (the first), "cpu", "cuda:1",
    "maca", or anything that prints so (a torch.device). InputError if it is malformed or of
    another kind; whether that device exists is the target's to check when it loads."""
    if device is None:
        return 0
    name, _, index = str(device).partition(":")
    if name not in KINDS or (index and not index.isdigit()) or (name == "cpu" and index not in ("", "0")):
        raise InputError(f"device must be 'cpu', 'cuda[:N]' or 'maca[:N]', got {device!r}")
    if name != kind:
        raise InputError(f"the artifact is compiled for {kind}; it cannot run on device "
                         f"{str(device)!r} (recompile it with --target {name})")
    return int(index or 0)
