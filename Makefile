# LODO experiment suite. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SCALE ?= default
STAMP := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install test test-all lint format reproduce clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP)  ## create .venv and install the suite with pip (torch==2.13.0, CPU wheel)

test: $(STAMP)  ## run the test suite (slow tests excluded; a few minutes on 2 cores)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)  ## run every test, the slow ones included
	$(PY) -m pytest -q

lint: $(STAMP)  ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)  ## apply ruff's formatting and fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

reproduce: $(STAMP)  ## run the Rosenbrock comparison (8 seeds) at the paper's budget
	$(PY) -m lodo.run --multirun experiment=rosenbrock task=rosenbrock steps=200 seed=0,1,2,3,4,5,6,7 \
		optimizer=momentum,rmsprop,adam,lodo progress=false

clean:  ## remove run folders (runs/, multirun/); results/ is kept
	rm -rf runs multirun outputs
