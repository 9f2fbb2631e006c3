"""Compile-only GPU sweeps, shared by the conformance and model tests: graphs compiled in
batches (several cases per TVM build, the merged graph's CUDA source through one nvcc call),
a failing batch bisected down to the cases that fail, so a failure names them.

  cuda  sbc.compile(target="cuda") runs nvcc itself (the artifact's fatbin); checked: the
        fatbin's magic and every kernel of the source in it
  maca  sbc.compile(target="maca") emits the MACA source (codegen.maca checks the dialect);
        here nvcc compiles it to PTX through tests/targets/maca_compat, and every kernel must
        come out as an entry

SBC_GPU_SWEEP=1 selects the full sweeps (every conformance case, every export form of both
reference models); the default run takes a deterministic sample that covers every op group.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import sbc
from tests.targets.gpu_env import COMPAT, nvcc_or_skip

SWEEP = os.environ.get("SBC_GPU_SWEEP") == "1"
FATBIN_MAGIC = b"\x50\xed\x55\xba"


def check_cuda(module) -> None:
    """The artifact's fatbin is nvcc's and holds a kernel for every __global__ function."""
    from sbc.codegen.maca import split_kernels
    fatbin = module.files["cuda/kernels.fatbin"]
    assert fatbin[:4] == FATBIN_MAGIC, "not a fatbin"
    names = [n for n, _ in split_kernels(module.files["cuda/kernels.cu"].decode())]
    missing = [n for n in names if n.encode() not in fatbin]
    assert not missing, f"kernels missing from the fatbin: {missing[:5]}"


def nvcc_maca(source: str) -> set[str]:
    """The MACA source compiled to PTX with nvcc through the compatibility header; the PTX
    entries. AssertionError with nvcc's first errors if it does not compile."""
    nvcc = nvcc_or_skip()
    with tempfile.TemporaryDirectory(prefix="sbc-maca-") as work:
        src, ptx = os.path.join(work, "k.maca"), os.path.join(work, "k.ptx")
        with open(src, "w") as f:
            f.write(source)
        proc = subprocess.run([nvcc, "-x", "cu", "-ptx", "-arch=sm_80", "-I", COMPAT,
                               "-diag-suppress", "177,1046", "-o", ptx, src],
                              capture_output=True, text=True, timeout=600)
        errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "error" in ln]
        assert proc.returncode == 0, "nvcc (MACA compat): " + " | ".join(errors[:3])[:600]
        with open(ptx) as f:
            return set(re.findall(r"\.entry (\w+)\(", f.read()))


def check_maca(module) -> None:
    from sbc.codegen.maca import split_kernels
    source = module.files["maca/kernels.maca"].decode()
    names = {n for n, _ in split_kernels(source)}
    assert nvcc_maca(source) == names


CHECKS = {"cuda": check_cuda, "maca": check_maca}


def compile_and_check(target: str, model, **options) -> None:
    """Compile `model` (path, ModelProto or Graph) for `target` and check its device code."""
    CHECKS[target](sbc.compile(model, target=target, cache=False, **options))


def compile_batches(target: str, items: list[tuple[str, object]], batch: int, merge,
                    **options) -> tuple[int, dict]:
    """Compile `items` [(name, graph)] for `target`, `batch` at a time merged into one graph by
    `merge([(prefix, graph)])` (sbc.compile `options`); (cases compiled, {name: failure}) with
    failing batches bisected."""
    failures: dict[str, str] = {}
    compiled = 0
    for start in range(0, len(items), batch):
        ok, failed = _bisect(target, items[start:start + batch], merge, options)
        compiled += ok
        failures.update(failed)
    return compiled, failures


def _bisect(target, items, merge, options) -> tuple[int, dict]:
    try:
        compile_and_check(target, merge([(f"c{i}.", g) for i, (_, g) in enumerate(items)]),
                          **options)
        return len(items), {}
    except Exception as e:  # noqa: BLE001 - any failure is bisected to the cases causing it
        if len(items) == 1:
            return 0, {items[0][0]: f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    half = len(items) // 2
    (a, fa), (b, fb) = (_bisect(target, items[:half], merge, options),
                        _bisect(target, items[half:], merge, options))
    return a + b, {**fa, **fb}
