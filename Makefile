# microsaga: `make run` runs the demo saga, `make test` runs what CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: run test lint typecheck unit bench chaos clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "microsaga needs Python 3.11 or newer; set PYTHON=python3.x")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/microsaga demo
	@echo "the CLI is $(BIN)/microsaga; '. $(BIN)/activate' puts it on PATH (README.md)"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy examples/shop  # what the README's quick start runs

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

test: lint typecheck
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/one_at_a_time.py
	$(BIN)/python benchmarks/many_steps.py --store memory
	$(BIN)/python benchmarks/many_steps.py --store sqlite
	$(BIN)/python benchmarks/payloads.py
	$(BIN)/python benchmarks/waits.py
	$(BIN)/python benchmarks/soak.py --minutes 3

# every chaos scenario with a summary line each: SEED=N replays one, LONG=1 the long
# versions (docs/reliability.md), SCENARIOS="worker-kill ..." a few
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos $(if $(SEED),--seed $(SEED)) $(if $(LONG),--long) $(SCENARIOS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
