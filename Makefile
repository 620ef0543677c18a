# LODO experiment suite. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SCALE ?= default
LAUNCHER ?= local
TASK ?= rosenbrock
OPTIMIZER ?= adam
TUNE_ARGS ?= --seeds 0 1 2
EXPERIMENTS ?=
STAMP := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install test test-all lint format reproduce figures tune sync dashboard bench clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# curvlinops checks K-FAC in the tests; its dependency chain (backpack -> torchvision) would replace the
	# pinned torch with a multi-GB CUDA build, so it comes without dependencies (ENVIRONMENT.md).
	$(PY) -m pip install --quiet --no-deps curvlinops-for-pytorch==3.0.1 einops==0.8.2 linear_operator==0.6.1 \
		einconv==0.1.0 unfoldNd==0.2.3
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

reproduce: $(STAMP)  ## run every experiment (or EXPERIMENTS=a,b only) at SCALE (smoke|default|paper), then the figures
	$(PY) scripts/reproduce.py --scale $(SCALE) --launcher $(LAUNCHER) $(if $(EXPERIMENTS),--experiments $(EXPERIMENTS))

figures: $(STAMP)  ## rebuild results/$(SCALE)/ (figures, tables, REPORT.md) from the run records in runs/$(SCALE)/
	$(PY) -m experiments.report --scale $(SCALE)

tune: $(STAMP)  ## tune one pair with the paper's ES: make tune TASK=rosenbrock OPTIMIZER=adam [TUNE_ARGS="--seeds 0 1 2"]
	$(PY) -m lodo.tune task=$(TASK) optimizer=$(OPTIMIZER) $(TUNE_ARGS)

sync: $(STAMP)  ## upload the W&B run of each finished record under runs/ and multirun/ (network, WANDB_API_KEY); ARGS=--dry-run lists only
	$(PY) -m experiments.sync $(ARGS)

dashboard: $(STAMP)  ## create/update one saved W&B workspace per experiment for SCALE (network); ARGS="--dry-run" or "--entity E --project P"
	$(PY) -m experiments.dashboard --scale $(SCALE) $(ARGS)

bench: $(STAMP)  ## time LODO's step against Adam's in one process (results/bench/); ARGS=--quick for a smoke test
	$(PY) -m lodo.bench $(ARGS)

clean:  ## remove run folders (runs/, multirun/); results/ is kept
	rm -rf runs multirun outputs
