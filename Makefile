# One entry point for people and CI: `make run` runs a worker, `make check` runs every gate.
# Both install what they need into .venv (and LocalStack into its own virtualenv) on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run check lint typecheck cfn-lint test localstack bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# A worker with the example order handler, on the embedded local SQS server.
run: $(STAMP)
	$(BIN)/qworker run handlers.orders --log-format text

localstack:
	$(PYTHON) scripts/localstack.py install

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

cfn-lint: $(STAMP)
	$(BIN)/cfn-lint deploy/*.yaml

test: $(STAMP) localstack
	$(BIN)/pytest

check: lint typecheck cfn-lint test

bench: $(STAMP) localstack
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .qworker
