# One entry point for people and CI. Every target sets up what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# uv installs exactly uv.lock into $(VENV). uv itself is pinned, with its hashes, in
# uv-bootstrap.txt and lives in a venv of its own, so a sync never removes it.
TOOLS := .tools
UV := $(TOOLS)/bin/uv
# The machine's Python ($(PY)); uv never downloads one.
export UV_PYTHON_DOWNLOADS := never
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

.PHONY: demo test bench build backends clean lock upgrade

$(UV): uv-bootstrap.txt
	@echo "==> installing uv (pinned in uv-bootstrap.txt) into $(TOOLS)"
	$(PY) -m venv $(TOOLS) || { echo "make: '$(PY) -m venv' failed: install Python's venv (Debian: apt install python3-venv)" >&2; exit 1; }
	$(TOOLS)/bin/pip install -q --disable-pip-version-check --require-hashes --no-deps -r uv-bootstrap.txt
	touch $(UV)

# Exactly the lock (--locked: a uv.lock that no longer matches pyproject.toml is an error,
# never silently re-resolved), the package editable and not compiled; $(COMPILED) then
# builds the extensions in place.
$(STAMP): pyproject.toml uv.lock $(UV)
	@echo "==> installing canaryproxy and its locked dependencies into $(VENV)"
	CANARYPROXY_COMPILE=0 $(UV) sync --quiet --locked --extra dev --python $(PY)
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
	$(UV) lock --check --offline --python $(PY)
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

# After editing pyproject.toml's dependencies: the smallest change to uv.lock that fits them.
lock: $(UV)
	$(UV) lock --python $(PY)

# Every pin (and uv's own) to the newest release pyproject.toml's ranges allow; then run
# `make test` and commit uv.lock and uv-bootstrap.txt together with any fixes.
upgrade: $(UV)
	$(UV) lock --upgrade --python $(PY)
	echo uv | $(UV) pip compile --quiet --universal --generate-hashes --no-header - -o uv-bootstrap.txt

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .pytest_cache .ruff_cache build *.so
	find canaryproxy -name '*.so' -delete
