#!/usr/bin/env bash
# Command 2 of the README (and what .ci/run calls): install if needed, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
