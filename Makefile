# One entry point for people and CI. Every target sets up what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The request path's modules compiled by mypyc (setup.py), next to their sources: any
# change to the package rebuilds them, so tests and the demo never run a stale copy.
# CANARYPROXY_COMPILE=0: run the request path interpreted (no C compiler needed; slower,
# and `make test` then fails its check that the compiled modules are there). Each way has
# its own stamp, so switching back compiles again.
CANARYPROXY_COMPILE ?= 1
ifeq ($(CANARYPROXY_COMPILE),0)
COMPILED := $(VENV)/.interpreted
else
COMPILED := $(VENV)/.compiled
endif

.PHONY: demo test bench build backends clean

# Installed editable without compiling; $(COMPILED) then builds the extensions in place.
$(STAMP): pyproject.toml
	@echo "==> creating the virtualenv in $(VENV)"
	$(PY) -m venv $(VENV) || { echo "make: '$(PY) -m venv' failed: install Python's venv (Debian: apt install python3-venv)" >&2; exit 1; }
	@echo "==> installing canaryproxy and its dependencies (about a minute the first time)"
	$(BIN)/pip install -q --upgrade pip setuptools
	CANARYPROXY_COMPILE=0 $(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# From scratch: an extension of a module no longer listed must not outlive it.
$(COMPILED): $(STAMP) setup.py $(shell find canaryproxy -name '*.py')
ifneq ($(CANARYPROXY_COMPILE),0)
	@command -v $${CC:-cc} >/dev/null 2>&1 || { echo "make: no C compiler: install gcc and Python's headers (Debian: apt install gcc python3-dev), or run interpreted: CANARYPROXY_COMPILE=0 make demo" >&2; exit 1; }
endif
	rm -rf build $(VENV)/.compiled $(VENV)/.interpreted
	find canaryproxy -name '*.so' -delete
ifeq ($(CANARYPROXY_COMPILE),0)
	@echo "==> CANARYPROXY_COMPILE=0: the request path runs interpreted (slower)"
else
	@echo "==> compiling the request path with mypyc (about a minute the first time)"
	$(BIN)/python setup.py -q build_ext --inplace >/dev/null
endif
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

# Backends for the README's walkthrough (config/canaryproxy.yaml): stable v1.0 on 9001
# and 9003, canary v1.1 on 9002, each answering /healthz; Ctrl-C stops them.
backends: $(STAMP)
	$(BIN)/python -m canaryproxy.demo.backends

bench: $(COMPILED)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.so
	find canaryproxy -name '*.so' -delete
