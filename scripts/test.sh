#!/usr/bin/env bash
# Command 2 of the README (and what .ci/run calls): install if needed, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Two workers (pytest-xdist), a test file each at a time: the suite is mostly compiling, one core
# per compile. SBC_TEST_WORKERS=0 runs everything in this process (e.g. for pdb).
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n "${SBC_TEST_WORKERS:-2}" --dist loadfile "$@"
