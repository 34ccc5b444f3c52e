# One entry point for people and CI: `make run` runs a worker, `make check` runs every gate.
# Both install what they need into .venv (and LocalStack into its own virtualenv) on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# checkov pins boto3 (and so botocore) far below aiobotocore's pin: it gets a virtualenv of its own.
CHECKOV_VENV := .venv-checkov
CHECKOV_VERSION := 3.3.30
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

.PHONY: run check lint typecheck cfn-lint test localstack bench clean docs

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

$(CHECKOV_STAMP):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	touch $(CHECKOV_STAMP)

# Every cfn-lint rule, informational ones included, then checkov's CloudFormation checks (offline).
# The findings each template skips are justified in the template and in deploy/README.md.
cfn-lint: $(STAMP) $(CHECKOV_STAMP)
	$(BIN)/cfn-lint --include-checks I -- deploy/*.yaml
	$(CHECKOV_VENV)/bin/checkov --directory deploy --framework cloudformation --compact --quiet --skip-download

# The suite under branch coverage: the report lists the files not fully covered and the total, and
# fails below `fail_under` ([tool.coverage.report] in pyproject.toml).
test: $(STAMP) localstack
	$(BIN)/coverage erase
	$(BIN)/coverage run -m pytest
	$(BIN)/coverage report

# The documentation site, into site/ (strict: a broken link, include or docstring fails it; offline).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

check: lint typecheck cfn-lint docs test

bench: $(STAMP) localstack
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .mypy_cache .ruff_cache .pytest_cache .qworker site .coverage .coverage.* htmlcov coverage.xml
