# celeryredis — every target sets itself up: a virtualenv in .venv, the package and its
# tools installed into it, and a redis-server binary (installed when missing). Tests start
# their own throwaway redis-server processes on free loopback ports and stop them.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Per-stage budgets in seconds (CI runs the whole of `make test` under 28 minutes; the
# suite took 1,078 s on a contended 2-core machine on 2026-12-02, 90 % of the former 1,200).
SETUP_BUDGET ?= 420
LINT_BUDGET ?= 180
TEST_BUDGET ?= 1380
# `make faults` (not part of CI): every scenario twice, Celery's defaults and production.
FAULTS_BUDGET ?= 1800
DOCS_BUDGET ?= 180
# `make cluster` (not part of CI): the Redis Cluster scenarios of tests/cluster.
CLUSTER_BUDGET ?= 900
# `make compat` (not part of CI): two virtualenvs, the core suite in each.
COMPAT_BUDGET ?= 2400

.PHONY: help venv redis lint typecheck imports test unit integration examples docs demo install-check bench bench-quick faults cluster compat clean

help:  ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 18

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "celeryredis needs Python >= 3.10; set PYTHON=python3.x")'
	timeout $(SETUP_BUDGET) $(PYTHON) -m venv $(VENV)
	timeout $(SETUP_BUDGET) $(BIN)/python -m pip install -q --disable-pip-version-check -U 'pip>=25.1'
	timeout $(SETUP_BUDGET) $(BIN)/python -m pip install -q --disable-pip-version-check -e . --group test --group lint --group docs --group examples
	touch $(STAMP)

venv: $(STAMP)  ## Create .venv and install the package with its test, lint, docs and examples tools.

redis:  ## Make sure a redis-server binary is available (installs Debian's package if missing).
	timeout $(SETUP_BUDGET) scripts/ensure-redis.sh

lint: venv  ## ruff check and ruff format --check.
	timeout $(LINT_BUDGET) $(BIN)/ruff check src tests docs benchmarks examples
	timeout $(LINT_BUDGET) $(BIN)/ruff format --check src tests docs benchmarks examples

typecheck: venv  ## mypy --strict on src/ and tests/typing/.
	timeout $(LINT_BUDGET) $(BIN)/mypy

imports: venv  ## import-linter: the layer order of DESIGN.md.
	timeout $(LINT_BUDGET) $(BIN)/lint-imports

unit: venv  ## Unit tests only (no server).
	timeout $(TEST_BUDGET) $(BIN)/pytest tests/unit -q --durations=10

test: venv redis lint typecheck imports  ## The whole suite: lint, types, layers, tests, examples, docs, install check.
	timeout $(TEST_BUDGET) $(BIN)/pytest -q --durations=15 --timeout=120
	$(MAKE) --no-print-directory examples docs install-check

# Each example is a host project with its own pytest.ini (its own rootdir and settings).
EXAMPLES := django flask fastapi
EXAMPLES_BUDGET ?= 180

examples: venv redis  ## The example host projects' own suites (examples/django, flask, fastapi).
	status=0; for example in $(EXAMPLES); do \
	  echo "examples/$$example:"; \
	  timeout $(EXAMPLES_BUDGET) $(BIN)/pytest examples/$$example -q --durations=5 || status=$$?; \
	done; exit $$status

docs: venv  ## Build the docs with warnings as errors (offline).
	timeout $(DOCS_BUDGET) $(BIN)/sphinx-build -q -n -W --keep-going -b html docs docs/_build/html

install-check: venv  ## pip install . into a fresh virtualenv; import it; check py.typed.
	@d=$$(mktemp -d) && trap 'rm -rf "$$d"' EXIT && \
	timeout $(SETUP_BUDGET) $(PYTHON) -m venv "$$d/venv" && \
	timeout $(SETUP_BUDGET) "$$d/venv/bin/pip" install -q --disable-pip-version-check . && \
	"$$d/venv/bin/python" -c 'import importlib.resources as r, celeryredis; \
	assert r.files("celeryredis").joinpath("py.typed").is_file(), "py.typed missing"; \
	assert r.files("celeryredis._scripts").joinpath("gcra.lua").is_file(), "Lua missing"; \
	print("install-check: celeryredis", celeryredis.__version__, "imports; py.typed installed")'

demo: venv redis  ## The end-to-end tour (starts a throwaway redis-server unless a URL is configured).
	$(BIN)/python -m celeryredis.demo

bench: venv redis  ## Benchmarks (not part of make test): benchmarks/results/ and docs/benchmarks.md.
	timeout $(SETUP_BUDGET) $(BIN)/python -m pip install -q --disable-pip-version-check --group bench
	timeout 3600 $(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/bench_probe.py

bench-quick: venv redis  ## Smoke run of the benchmarks (a few minutes): benchmarks/results/quick.md only.
	timeout $(SETUP_BUDGET) $(BIN)/python -m pip install -q --disable-pip-version-check --group bench
	timeout 600 $(BIN)/python benchmarks/run_all.py --quick $(BENCH_ARGS)

faults: venv redis  ## Fault scenarios under Celery's defaults and production; rewrites docs/reliability.md.
	rm -f build/faults.json && mkdir -p build
	status=0; CELERYREDIS_FAULTS_DEFAULTS=1 CELERYREDIS_FAULTS_REPORT=$(CURDIR)/build/faults.json \
	  timeout $(FAULTS_BUDGET) $(BIN)/pytest tests/faults -m faults -q -p no:cacheprovider -rA \
	  --durations=20 || status=$$?; \
	$(BIN)/python scripts/faults_report.py build/faults.json docs/reliability.md; exit $$status

cluster: venv redis  ## Redis Cluster scenarios (5,000 tasks, failover, live reshard, load spread; not in make test).
	timeout $(CLUSTER_BUDGET) $(BIN)/pytest tests/cluster -m cluster_scenarios -q -p no:cacheprovider \
	  -rA --durations=10 --timeout=420

compat: redis  ## The core suite against the floor and the newest Celery/kombu/redis-py (not in make test).
	timeout $(COMPAT_BUDGET) scripts/compat.sh $(COMPAT_EDGES)

clean:  ## Remove the virtualenv and build output.
	rm -rf $(VENV) docs/_build build dist .pytest_cache .mypy_cache .ruff_cache
