#!/usr/bin/env bash
# Long fuzzing run: scripts/fuzz.sh [N [SEED]] runs N (default 300) random graphs from SEED
# (random by default) through onnxruntime, sbc, its reference interpreter and ONNX's reference
# implementation, and prints the outcome counts (match / sbc_error / both_error / ort_reject /
# ort_differs / failure; see tests/fuzz/check.py). A crash or hang is one failure, not the end
# of the run. Results go to FUZZ_OUT (default a new /tmp dir): outcomes.json, and the failing
# cases in outcomes-cases/ (replay one: .venv/bin/python -m tests.fuzz.check FILE.onnx).
# Arguments after SEED go to pytest (e.g. --fuzz-shrink: stop at the first failure, shrink it).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
n=${1:-300}
seed=${2:-$(( (RANDOM << 15) | RANDOM ))}
shift $(( $# < 2 ? $# : 2 ))
out=${FUZZ_OUT:-$(mktemp -d /tmp/sbc-fuzz.XXXXXX)}
echo "fuzz: $n examples, seed $seed, results in $out"
.venv/bin/python -m pytest -q -p no:cacheprovider "tests/fuzz/test_fuzz_graphs.py::test_fuzz_graphs" \
  --fuzz-examples "$n" --fuzz-seed "$seed" --fuzz-record "$out/outcomes.json" "$@" >"$out/pytest.log" 2>&1
status=$?
tail -n 3 "$out/pytest.log"
if [ -f "$out/outcomes.json" ]; then
  .venv/bin/python -m tests.fuzz.recorder "$out/outcomes.json"
else
  echo "no outcomes recorded; see $out/pytest.log" >&2
fi
exit $status
