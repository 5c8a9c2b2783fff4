# opsflow — two commands on a fresh machine: `make dev` and `make test`.
#
# Both first install what they need into .venv (created with Python 3.11 if missing) from the
# pinned requirements.lock, then the package itself in editable mode. A stamp file makes the
# install a no-op until requirements.lock or pyproject.toml changes.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.opsflow-installed
LOCK := requirements.lock
# The whole suite must finish well within CI's 90 minutes; single tests have their own
# timeout (pytest-timeout, pyproject.toml).
TEST_TIMEOUT ?= 3600
PYTEST_ARGS ?=
LINT_PATHS := src tests $(wildcard bench)

.PHONY: help install dev test lint typecheck pytest bench lock clean clean-state

help:
	@echo "make dev        start the local stack (Temporal, PostgreSQL, SeaweedFS, sinks, worker, API)"
	@echo "make test       install, then ruff + mypy + the whole pytest suite"
	@echo "make lint       ruff"
	@echo "make typecheck  mypy --strict"
	@echo "make bench      the benchmarks (python -m bench)"
	@echo "make lock       re-pin requirements.lock from pyproject.toml (pip-compile)"
	@echo "make clean      remove caches and build output (keeps .venv and .opsflow)"
	@echo "make clean-state remove the dev stack's state folder .opsflow/"

# Bytecode for the package: the workflow sandbox imports each workflow's module afresh for
# every new workflow instance, and without a .pyc (editable install, PYTHONDONTWRITEBYTECODE)
# it compiles the source every time - a tenth of the worker's CPU when 10,000 SLA
# workflows start. compileall skips what is up to date; a pip-installed package (the
# Dockerfile) has its bytecode already.
install: $(STAMP)
	@"$(BIN)/python" -m compileall -q src/opsflow > /dev/null

$(STAMP): $(LOCK) pyproject.toml
	@if [ ! -x "$(BIN)/python" ]; then \
	  echo "creating $(VENV) with $(PYTHON)"; \
	  "$(PYTHON)" -m venv "$(VENV)"; \
	fi
	"$(BIN)/python" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version'
	"$(BIN)/python" -m pip install --quiet --disable-pip-version-check -r "$(LOCK)"
	"$(BIN)/python" -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch "$(STAMP)"

dev: install
	"$(BIN)/python" -m opsflow.dev

lint: install
	"$(BIN)/ruff" check $(LINT_PATHS)

typecheck: install
	"$(BIN)/mypy"

# pytest's exit status 5 ("no tests collected") is a failure here, said out loud.
pytest: install
	@status=0; \
	timeout --signal=INT --kill-after=60 $(TEST_TIMEOUT) \
	  "$(BIN)/python" -m pytest -p no:cacheprovider $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: failing" >&2; fi; \
	if [ $$status -eq 124 ]; then echo "test suite exceeded $(TEST_TIMEOUT)s" >&2; fi; \
	exit $$status

test: install
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory typecheck
	$(MAKE) --no-print-directory pytest

bench: install
	"$(BIN)/python" -m bench

lock: install
	"$(BIN)/python" -m pip install --quiet --disable-pip-version-check pip-tools
	"$(BIN)/pip-compile" --extra dev --strip-extras --allow-unsafe --no-emit-index-url \
	  --no-emit-find-links --no-emit-trusted-host -o "$(LOCK)" pyproject.toml

clean:
	rm -rf build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

clean-state:
	rm -rf .opsflow
