#!/usr/bin/env bash
# The device check for a machine with an NVIDIA GPU, in under 8 minutes:
#   1. installs what it needs (scripts/setup.sh: .venv, pinned packages; nvcc must be present)
#   2. runs the gpu-marked tests (tests/targets: the tiny model on the GPU vs the CPU)
#   3. runs the tiny and small reference models end to end on the GPU against onnxruntime
#   4. runs the GPU benchmarks (bench/bench_gpu.py: prefill vs T, decode ms/token,
#      SpikeMatMul vs cuBLAS through PyTorch)
# and writes a markdown report and the logs to gpu_check/ (GPU_CHECK_DIR=dir to change it).
# Without a GPU it fails at once with one line and exit status 2.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${GPU_CHECK_DIR:-gpu_check}
OUT=$DIR/gpu_check.md
START=$(date +%s)

fail() { echo "gpu_check: error: $*" >&2; exit 2; }

command -v nvidia-smi >/dev/null 2>&1 || fail "no NVIDIA GPU: nvidia-smi not found"
nvidia-smi -L 2>/dev/null | grep -q "^GPU " || fail "no NVIDIA GPU: nvidia-smi lists none"
command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ] || \
  fail "nvcc not found (the cuda target compiles kernels with it): install the CUDA toolkit"
export PATH="$PATH:/usr/local/cuda/bin"

mkdir -p "$DIR"
timeout 240 bash scripts/setup.sh || fail "scripts/setup.sh failed (or took over 4 minutes)"
PY=.venv/bin/python
$PY -c 'from sbc.runtimes.cuda import cuda_device_count as n; import sys; sys.exit(n() == 0)' \
  || fail "the CUDA driver sees no device"
export SBC_NO_CACHE=1

section() { printf '\n%s\n\n' "$1" >>"$OUT"; }
{
  echo "# sbc GPU check"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1), nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
} >"$OUT"

status=0
section "## gpu-marked tests"
if timeout 180 .venv/bin/pytest -q -p no:xdist -m gpu tests/targets >"$DIR/gpu_tests.log" 2>&1; then
  echo "passed: $(tail -1 "$DIR/gpu_tests.log")" >>"$OUT"
else
  status=1; echo "FAILED ($DIR/gpu_tests.log): $(tail -1 "$DIR/gpu_tests.log")" >>"$OUT"
fi

section "## End to end vs onnxruntime"
if ! timeout 180 $PY - >>"$OUT" <<'EOF'
import os, tempfile
import numpy as np
import onnxruntime as ort
import sbc
from sbc.models.export import export_onnx

print("| model | T | max abs diff | logits within 1e-3 | sbc cuda (ms) | onnxruntime cpu (ms) |")
print("|---|---:|---:|---:|---:|---:|")
failed = False
for config in ("tiny", "small"):
    path = export_onnx(config, os.path.join(tempfile.mkdtemp(), f"{config}.onnx"))
    artifact = path[:-5] + ".sbc"
    sbc.compile(path, target="cuda", cache=False).save(artifact)
    module = sbc.load(artifact)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for seq in (7, 130):
        ids = np.random.default_rng(seq).integers(0, 256, size=(2, seq), dtype=np.int64)
        import time
        module.run({"ids": ids})
        t0 = time.perf_counter(); got = module.run({"ids": ids})["logits"]; t_sbc = time.perf_counter() - t0
        t0 = time.perf_counter(); want = session.run(None, {"ids": ids})[0]; t_ort = time.perf_counter() - t0
        close = float(np.mean(np.abs(got - want) <= 1e-3 + 1e-3 * np.abs(want)))
        # spikes (Round) may flip where x / V_th lands within float rounding of .5
        failed |= close < 0.99
        print(f"| {config} | {seq} | {np.abs(got - want).max():.2e} | {close:.2%} "
              f"| {t_sbc * 1e3:.1f} | {t_ort * 1e3:.1f} |")
raise SystemExit(1 if failed else 0)
EOF
then status=1; echo "FAILED: the GPU disagrees with onnxruntime (or the run failed)" >>"$OUT"; fi

section "## Benchmarks"
left=$((420 - $(date +%s) + START))
if [ "$left" -lt 60 ]; then
  status=1; echo "skipped: only ${left}s of the 8-minute budget left" >>"$OUT"
elif ! timeout "$left" $PY bench/bench_gpu.py --seq 128 512 2048 --repeats 5 --budget-s 5 \
    --out "$DIR/gpu_bench.md" >"$DIR/gpu_bench.log" 2>&1; then
  status=1; echo "FAILED ($DIR/gpu_bench.log): $(tail -1 "$DIR/gpu_bench.log")" >>"$OUT"
else
  sed -n '3,$p' "$DIR/gpu_bench.md" >>"$OUT"
fi

echo "gpu_check: wrote $OUT in $(( $(date +%s) - START ))s (status $status)"
exit $status
