# The README's two commands are `make up` and `make test`; both start from `make setup`.
SHELL := /bin/bash
# The repo root holds a folder named `operator`; `python -m …` run from here would put the root on
# sys.path and shadow the stdlib module of that name. PYTHONSAFEPATH (Python ≥ 3.11) prevents that.
export PYTHONSAFEPATH := 1
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup up test lint tools unit bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py dataplane/_speedups.c
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,test]'
	@touch $(STAMP)

up: setup
	$(BIN)/fluxbee up $(ARGS)

lint: setup
	$(BIN)/ruff check .
	MYPY=$(BIN)/mypy bash hack/typecheck.sh
	bash hack/check-imports.sh
	bash hack/check-chart.sh

# The Kubernetes tests run against a real control plane built from source with Go (cached after the
# first build; see hack/build-tools.sh). Without Go those tests are skipped with the reason printed.
tools:
	@bash hack/build-tools.sh >/dev/null || { rc=$$?; [ $$rc -eq 3 ] && echo "make: no Go here; the real-control-plane tests will be skipped"; [ $$rc -eq 3 ]; }

test: lint tools
	@bash hack/install-debs.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	bash hack/check-speedups.sh

# The policy section measures the WebAssembly engine with the pinned opa when Go can build it
# (regorus alone otherwise, with the reason printed).
bench: setup
	FLUXBEE_OPA="$${FLUXBEE_OPA:-$$(bash hack/build-tools.sh --opa 2>/dev/null)}" $(BIN)/fluxbee bench $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
