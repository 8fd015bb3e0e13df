# CryptoMarket. `make run` and `make test` work on a fresh machine: they create .venv from the lock files.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .tools
UV := $(shell command -v uv 2>/dev/null || echo $(TOOLS)/bin/uv)
PYTEST_ARGS ?=

.PHONY: help install install-runtime run demo test lint bench soak chaos redis-week lock servers newman browser clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(TOOLS)/bin/uv:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv

$(VENV)/bin/python: | $(UV)
	$(UV) venv --quiet --python $(PYTHON) $(VENV)

# Runtime only: what `make run` needs.
$(VENV)/.runtime: requirements.lock pyproject.toml | $(VENV)/bin/python
	$(UV) pip install --quiet --python $(BIN)/python --require-hashes -r requirements.lock
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e .
	@touch $@

# Runtime + tests and tools: what every other target needs.
$(VENV)/.dev: requirements-dev.lock pyproject.toml | $(VENV)/bin/python
	$(UV) pip sync --quiet --python $(BIN)/python --require-hashes requirements-dev.lock
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e .
	@touch $@ $(VENV)/.runtime

install: $(VENV)/.dev  ## create .venv from requirements-dev.lock and install the project in it

install-runtime: $(VENV)/.runtime

run: install-runtime  ## embedded mode: the service on APP_HOST:APP_PORT (default 127.0.0.1:8003)
	$(BIN)/cryptomarket serve

demo: install-runtime  ## the Deribit simulator plus the service, no network or Deribit account needed
	$(BIN)/cryptomarket simulate --port 8765 & sim=$$!; trap "kill $$sim" EXIT; \
	DERIBIT_WS_URL=ws://127.0.0.1:8765/ws/api/v2 DATABASE_URL=sqlite:///demo.sqlite3 \
	$(BIN)/cryptomarket serve

servers:  ## install the PostgreSQL, Redis and nginx servers the tests start (Debian packages), when missing
	scripts/ensure-servers

newman:  ## install newman (runs the Postman collection in the tests) into .tools/node, when missing
	scripts/ensure-newman

browser:  ## install Debian's chromium for the browser tests, when missing
	scripts/ensure-browser

lint: install  ## ruff and mypy on the package
	$(BIN)/ruff check cryptomarket __tests__ bench
	$(BIN)/ruff format --check cryptomarket __tests__ bench
	$(BIN)/mypy

test: install servers newman browser lint  ## the whole suite: lint, type check, tests against real servers on loopback
	$(BIN)/pytest $(PYTEST_ARGS)

bench: install servers browser  ## benchmarks under bench/: print their figures, write bench/results/
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python -m bench.$$(basename $$b .py) || exit 1; done
	@echo "== bench/bench_ingest.py --instruments"; $(BIN)/python -m bench.bench_ingest --instruments
	@echo "== bench/bench_sse.py --ticker BTC-PERPETUAL"; $(BIN)/python -m bench.bench_sse --ticker BTC-PERPETUAL

soak: install  ## 10 min of 2,000 streams with churn at 10 ticks/s, then 10 min of 1,000 streams of an instrument at 10 updates/s: bench/results/soak*.md and .png
	$(BIN)/python -m bench.soak $(SOAK_ARGS)
	$(BIN)/python -m bench.soak --ticker BTC-PERPETUAL --streams 1000 $(SOAK_ARGS)

redis-week: install servers  ## a week of two tickers (1.2M ticks) through the compose Redis settings
	$(BIN)/python -m __tests__.distributed.redis_pressure --days 7 $(REDIS_WEEK_ARGS)

MINUTES ?= 30
SEED ?=
MODE ?= both
chaos: install servers  ## MINUTES (30) of seeded faults on the distributed deployment, half that embedded, checked against the simulator's record of every tick: writes bench/results/chaos.md (SEED=, MODE= replay)
	$(BIN)/python -m bench.chaos --minutes $(MINUTES) --mode $(MODE) $(if $(SEED),--seed $(SEED))

lock: | $(UV)  ## recompile the hashed lock files from pyproject.toml
	$(UV) pip compile --quiet --upgrade --generate-hashes --python-version 3.11 pyproject.toml -o requirements.lock
	$(UV) pip compile --quiet --upgrade --generate-hashes --python-version 3.11 --extra dev pyproject.toml -o requirements-dev.lock

clean:  ## remove the virtual environments and caches
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache
