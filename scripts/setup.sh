#!/usr/bin/env bash
# Create .venv (Python 3.11) and install sbc with its pinned dependencies. Idempotent: a
# second run only re-checks. torch==2.13.0 resolves to the CPU build on these machines.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "sbc needs Python 3.11 (found $("$PY" --version 2>&1))" >&2
  exit 1
fi
stamp=.venv/.sbc-installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt requirements.lock ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade "pip>=23"
# torch first and alone, so nothing else can pull a different (CUDA) build
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -r requirements.lock
.venv/bin/python -m pip install --quiet --no-deps -e .
touch "$stamp"
