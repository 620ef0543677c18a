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
# Every pair the experiments compare, tuned by one protocol per task (README, *Tuning*): the paper's ES with tuning
# seeds 0 1 2 and one horizon per task for every optimizer (Rosenbrock: the paper's 200 steps; quadratic: every
# generation capped at 1,000 steps); on the reduced CNN (mnist_small) a cheaper ES, the same for every optimizer:
# 3 generations x 8 samples at 200 steps, one tuning seed.
TUNE_ROSENBROCK := momentum rmsprop adam yogi lodo
TUNE_QUADRATIC := momentum rmsprop adam yogi lbfgs_no_line_search olbfgs bfgs levenberg_marquardt \
	lodo lodo_diagonal lodo_global lodo_residuals lodo_no_momentum lodo_sgd
TUNE_MNIST_SMALL := momentum rmsprop adam lars yogi lodo lodo_diagonal lodo_global lodo_residuals lodo_no_momentum lodo_sgd
STAMP := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install test test-all lint format reproduce figures tune tune-all sync dashboard bench clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[suite,dev]'
	# curvlinops checks K-FAC in the tests (tests/test_kfac.py). It requires backpack-for-pytorch, hence torchvision,
	# which the tests do not need, so it comes without its dependencies; the others are in the dev extra.
	$(PY) -m pip install --quiet --no-deps curvlinops-for-pytorch==3.0.1
	touch $@

install: $(STAMP)  ## create .venv and install the library, the suite and the tests with pip (torch==2.13.0, CPU wheel)

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

tune-all: $(STAMP)  ## tune every compared pair (Rosenbrock, quadratic, reduced CNN; ~1.5 h on 2 cores; resumable)
	for o in $(TUNE_ROSENBROCK); do $(PY) -m lodo.tune task=rosenbrock optimizer=$$o --seeds 0 1 2 || exit 1; done
	for o in $(TUNE_QUADRATIC); do \
		$(PY) -m lodo.tune task=noisy_quadratic optimizer=$$o --seeds 0 1 2 --max-steps 1000 || exit 1; done
	for o in $(TUNE_MNIST_SMALL); do \
		$(PY) -m lodo.tune task=mnist_small optimizer=$$o --seeds 0 --samples 8 --generations 3 || exit 1; done

sync: $(STAMP)  ## upload the W&B run of each finished record under runs/ and multirun/ (network, WANDB_API_KEY); ARGS=--dry-run lists only
	$(PY) -m experiments.sync $(ARGS)

dashboard: $(STAMP)  ## create/update one saved W&B workspace per experiment for SCALE (network); ARGS="--dry-run" or "--entity E --project P"
	$(PY) -m experiments.dashboard --scale $(SCALE) $(ARGS)

bench: $(STAMP)  ## time LODO's step against Adam's in one process (results/bench/); ARGS=--quick for a smoke test
	$(PY) scripts/bench.py $(ARGS)

clean:  ## remove run folders (runs/, multirun/); results/ is kept
	rm -rf runs multirun outputs
