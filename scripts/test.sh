#!/usr/bin/env bash
# Runs the whole test suite: unit tests and integration tests against a real Kafka, Redis and Prometheus
# that the test session starts itself on free ports (see tests/conftest.py). Then, when the other supported
# Python (3.12 or 3.13) is on this machine, it installs the project there too and runs the unit tests that are
# not marked slow (FRAUDMON_OTHER_PYTHON=0 skips that; arguments given to this script apply to the main run
# only). Hypothesis runs a quarter of its example counts here ($FRAUDMON_FUZZ_SCALE), a tenth on the other Python.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PYTHONHASHSEED=0 TF_CPP_MIN_LOG_LEVEL=2 CUDA_VISIBLE_DEVICES=""
"$VENV/bin/ruff" check fraudmon stream_app training monitoring tests || exit 1
FRAUDMON_FUZZ_SCALE=${FRAUDMON_FUZZ_SCALE:-0.25} "$VENV/bin/pytest" -q "$@"
status=$?
[ "$status" -ne 0 ] && exit "$status"
[ "${FRAUDMON_OTHER_PYTHON:-1}" = 0 ] || [ "$#" -gt 0 ] && exit 0

main=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
other=3.12; [ "$main" = 3.12 ] && other=3.13
echo "test: the unit tests on Python $other (the suite above ran on $main)"
PYTHON_VERSIONS=$other VENV=".venv-$other" scripts/setup.sh
setup_status=$?
if [ "$setup_status" -eq 3 ]; then echo "test: no Python $other here; skipped"; exit 0; fi
[ "$setup_status" -ne 0 ] && exit "$setup_status"
FRAUDMON_FUZZ_SCALE=0.1 exec ".venv-$other/bin/pytest" -q -m "not integration and not slow" -p no:cacheprovider
