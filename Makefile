# The two commands a new user runs: `make demo` (bounded end-to-end demo on the local stack) and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint stack-up stack-down
setup:
	@scripts/setup.sh

demo: setup
	$(VENV)/bin/fraudmon demo

test: setup
	@scripts/test.sh

lint: setup
	$(VENV)/bin/ruff check fraudmon stream_app training monitoring tests

stack-up: setup
	$(VENV)/bin/fraudmon stack up

stack-down:
	$(VENV)/bin/fraudmon stack down
