"""What this machine has: its CPU (name and the features sbc's kernels use) and the device
compilers (nvcc, the MACA SDK's mxcc).

Both sides read it: codegen builds for the host CPU and compiles device code at build time;
the runtimes check that an artifact's CPU features are present here and compile device code at
load time when an artifact carries source only. TVM is imported only inside the functions
that need it.
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from contextlib import contextmanager

from sbc.errors import CompileError

# flags worth knowing for sbc's kernels (vector width, integer dot products), as sbc names
# them -> the names /proc/cpuinfo uses
FLAGS = {"avx2": "avx2", "fma": "fma", "avx512f": "avx512f", "avx512bw": "avx512bw",
         "avx512vnni": "avx512_vnni", "avxvnni": "avx_vnni", "amx_int8": "amx_int8"}


def host_cpu_name() -> str:
    """LLVM's name for this CPU (e.g. 'znver1'), the `mcpu` of the target."""
    import tvm
    return str(tvm.target.codegen.llvm_get_system_cpu())


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


def cpu_identity() -> dict:
    """This CPU as /proc/cpuinfo names it (model, flags), without TVM: what a cache of CPU
    builds must tell apart (LLVM's name for the CPU needs TVM, seconds to import)."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), "")
    except OSError:
        pass
    return {"arch": platform.machine(), "model": model, "flags": sorted(_proc_cpuinfo_flags()),
            "cores": os.cpu_count()}


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
    import tvm
    try:
        target = tvm.target.Target({"kind": "llvm", "mcpu": host_cpu_name()})
        return bool(tvm.target.codegen.llvm_cpu_has_features(feature, target))
    except Exception:  # an LLVM without that feature name
        return False


# -- toolchains --------------------------------------------------------------------------------

def find_nvcc() -> str | None:
    """nvcc on PATH, else under CUDA_HOME / CUDA_PATH or /usr/local/cuda."""
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.access(os.path.join(root, "bin", "nvcc"), os.X_OK):
            return os.path.join(root, "bin", "nvcc")
    return None


def maca_path() -> str:
    return os.environ.get("MACA_PATH", "/opt/maca")


def find_mxcc() -> str | None:
    """$MACA_PATH/mxgpu_llvm/bin/mxcc, if the MACA SDK is installed."""
    path = os.path.join(maca_path(), "mxgpu_llvm", "bin", "mxcc")
    return path if os.access(path, os.X_OK) else None


def mxcc_command(src: str, out: str, arch: str) -> list[str]:
    """mxcc, device code only (a code object for mcModuleLoadData); MACA_MXCC_FLAGS adds flags."""
    mxcc = find_mxcc() or os.path.join(maca_path(), "mxgpu_llvm", "bin", "mxcc")
    extra = shlex.split(os.environ.get("MACA_MXCC_FLAGS", ""))
    return [mxcc, "-x", "maca", f"-offload-arch={arch}", "--offload-device-only", "-O3",
            *extra, "-o", out, src]


def compile_maca(source: str, arch: str) -> bytes:
    """Device binary from the MACA source with the SDK's mxcc; CompileError on failure."""
    with tempfile.TemporaryDirectory(prefix="sbc-maca-") as tmp:
        src, out = os.path.join(tmp, "kernels.maca"), os.path.join(tmp, "kernels.bin")
        with open(src, "w") as f:
            f.write(source)
        proc = subprocess.run(mxcc_command(src, out, arch), capture_output=True, text=True)
        if proc.returncode != 0:
            first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr[:200])
            raise CompileError(f"mxcc could not compile the MACA kernels for {arch}: {first}")
        with open(out, "rb") as f:
            return f.read()


@contextmanager
def _env(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def nvcc_fatbin(source: str, arch: str) -> bytes:
    """SASS for `arch` plus its PTX in one fatbin; exact math (no --use_fast_math)."""
    import tvm
    from tvm.support import nvcc
    version = arch[3:]
    gencode = ["-gencode", f"arch=compute_{version},code=sm_{version}",
               "-gencode", f"arch=compute_{version},code=compute_{version}"]
    path = os.path.dirname(find_nvcc())
    # compile_cuda reads the compute version from the current target
    with _env(TVM_CUDA_NVCC_NO_FAST_MATH="1", PATH=path + os.pathsep + os.environ.get("PATH", "")), \
            tvm.target.Target({"kind": "cuda", "arch": arch}):
        try:
            return bytes(nvcc.compile_cuda(source, target_format="fatbin", arch=gencode,
                                           compiler="nvcc"))
        except RuntimeError as e:
            raise CompileError(f"nvcc could not compile the CUDA kernels for {arch}: "
                               f"{_nvcc_error(e)}") from e


def _nvcc_error(e: Exception) -> str:
    """The first line of nvcc's output that names an error."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or ["unknown error"])[0][:300]
