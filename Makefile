# One entry point for people and CI. Every target sets up what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The request path's modules compiled by mypyc (setup.py), next to their sources: any
# change to the package rebuilds them, so tests and the demo never run a stale copy.
COMPILED := $(VENV)/.compiled

.PHONY: demo test bench build clean

# Installed editable without compiling; $(COMPILED) then builds the extensions in place.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools
	CANARYPROXY_COMPILE=0 $(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# From scratch: an extension of a module no longer listed must not outlive it.
$(COMPILED): $(STAMP) setup.py $(shell find canaryproxy -name '*.py')
	rm -rf build
	find canaryproxy -name '*.so' -delete
	$(BIN)/python setup.py -q build_ext --inplace >/dev/null
	touch $(COMPILED)

build: $(COMPILED)

demo: $(COMPILED)
	$(BIN)/canaryproxy demo

# Format check, lint, types, tests: the one command CI runs.
test: $(COMPILED)
	$(BIN)/ruff format --check canaryproxy tests benchmarks setup.py
	$(BIN)/ruff check canaryproxy tests benchmarks setup.py
	$(BIN)/mypy
	$(BIN)/pytest

bench: $(COMPILED)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.so
	find canaryproxy -name '*.so' -delete
