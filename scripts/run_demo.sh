#!/usr/bin/env bash
# Command 1 of the README: install everything, then run the main job on the built-in reference
# model (export to ONNX, compile for CPU, run, compare against onnxruntime, print the result).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/sbc demo "$@"
