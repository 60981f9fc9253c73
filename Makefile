# The README's two commands: `make demo` (install, run the workflow on the demo data, print the
# metrics) and `make test` (install, lint, run the tests). Both install into .venv first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: install demo test lint
install: $(VENV)/.installed

# Exact versions from constraints.txt (the tested set); ranges are in pyproject.toml.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

demo: install
	$(BIN)/snakemake --cores all
	$(BIN)/snakemake --cores all --report results/demo/report.html
	@echo "Report: results/demo/report.html   Metrics: results/demo/comparison.csv"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakemake --lint

test: lint
	$(BIN)/pytest
