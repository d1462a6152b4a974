#!/usr/bin/env bash
# Runs the whole test suite: unit tests and integration tests against a real Kafka, Redis and Prometheus
# that the test session starts itself on free ports (see tests/conftest.py). Alongside it, when the other
# supported Python (3.12 or 3.13) is on this machine, it installs the project there too and runs the unit tests
# that are not marked slow; that run's output is printed after the main run's (FRAUDMON_OTHER_PYTHON=0 skips it;
# arguments given to this script apply to the main run only, and skip it too). Hypothesis runs a quarter of its
# example counts here ($FRAUDMON_FUZZ_SCALE), a tenth on the other Python.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PYTHONHASHSEED=0 TF_CPP_MIN_LOG_LEVEL=2 CUDA_VISIBLE_DEVICES=""
"$VENV/bin/ruff" check fraudmon stream_app training monitoring tests || exit 1

other_python() {
    local main other
    main=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    other=3.12; [ "$main" = 3.12 ] && other=3.13
    echo "test: the unit tests on Python $other (the main run is on $main)"
    PYTHON_VERSIONS=$other VENV=".venv-$other" scripts/setup.sh
    local setup_status=$?
    if [ "$setup_status" -eq 3 ]; then echo "test: no Python $other here; skipped"; return 0; fi
    [ "$setup_status" -ne 0 ] && return "$setup_status"
    FRAUDMON_FUZZ_SCALE=0.1 ".venv-$other/bin/pytest" -q -m "not integration and not slow" -p no:cacheprovider
}

other_pid=
if [ "${FRAUDMON_OTHER_PYTHON:-1}" != 0 ] && [ "$#" -eq 0 ]; then
    other_log=$(mktemp)
    other_python >"$other_log" 2>&1 &
    other_pid=$!
fi
FRAUDMON_FUZZ_SCALE=${FRAUDMON_FUZZ_SCALE:-0.25} "$VENV/bin/pytest" -q "$@"
status=$?
[ -z "$other_pid" ] && exit "$status"
wait "$other_pid"
other_status=$?
cat "$other_log"; rm -f "$other_log"
[ "$status" -ne 0 ] && exit "$status"
exit "$other_status"
