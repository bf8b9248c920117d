# creditq: `make dev` runs it on this machine, `make test` runs every check. Both set up .venv themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Test modules run this many at a time, each in its own databases and Redis database (tests/conftest.py).
TEST_PROCS ?= 2

.PHONY: install dev test lint typecheck unit bench soak clean

$(BIN)/.installed: requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements-dev.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

install: $(BIN)/.installed

## dev: migrate, then simulator + API + worker in this terminal (Postgres and Redis on localhost);
## options as ARGS, e.g. make dev ARGS="--port 8600 --sim-port 8700"
dev: install
	$(BIN)/creditq dev $(ARGS)

## test: lint, type-check, then the whole suite against a fresh test database
test: install
	$(BIN)/python -m tests.preflight
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest -n $(TEST_PROCS) --dist loadfile

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

## bench: benchmarks with same-run baselines; writes bench/results.json
bench: install
	$(BIN)/python -m bench

## soak: a seeded chaos run (docs/SOAK.md); ARGS="--seed 7 --minutes 10" (default: a drawn seed, 10 minutes)
soak: install
	$(BIN)/python -m soak $(ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
