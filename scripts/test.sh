#!/usr/bin/env bash
# Runs the whole test suite: unit tests and integration tests against a real Kafka, Redis and Prometheus
# that the test session starts itself on free ports (see tests/conftest.py).
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PYTHONHASHSEED=0 TF_CPP_MIN_LOG_LEVEL=2 CUDA_VISIBLE_DEVICES=""
"$VENV/bin/ruff" check fraudmon stream_app training monitoring tests || exit 1
exec "$VENV/bin/pytest" -q "$@"
