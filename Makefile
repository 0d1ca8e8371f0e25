# The two commands of the README: `make train` (the main job) and `make test` (the tests).
# Both install into .venv/ on first use; the stamp is rebuilt only when dependency files change.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=
# make test runs the suite in this many worker processes (pytest-xdist): 2 fit a 2-core CI machine
# (8 min 42 s against 12 min 0 s in one process, measured on one); TEST_WORKERS=0 runs it in one.
TEST_WORKERS ?= 2

.PHONY: install train test test-slow test-gpu lint prepare baseline bench gpu-check clean

$(STAMP): pyproject.toml constraints.txt scripts/install.sh
	bash scripts/install.sh
	touch $(STAMP)

install: $(STAMP)

## Main job: fetch ML-100K, print its statistics, train and evaluate, print the report.
train: $(STAMP)
	bash scripts/train_all.sh $(ARGS)

## Lint (ruff, configured in pyproject.toml), then the default test suite (fast, CPU).
test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(PY) -m pytest -q -n $(TEST_WORKERS) $(ARGS)

## End-to-end quality runs at full size (minutes each).
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(ARGS)

## The CUDA path (skipped without a GPU).
test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts

prepare: $(STAMP)
	$(PY) -m recfunnel.data.prepare data=ml100k $(ARGS)

baseline: $(STAMP)
	$(PY) -m recfunnel.evaluate model=popularity $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_data.py
	$(PY) benchmarks/bench_embedding.py
	$(PY) benchmarks/bench_distributed.py --json logs/bench_distributed.json

## On a lent GPU machine (see scripts/gpu_check.sh; prepare with `bash scripts/gpu_bundle.sh` here).
gpu-check:
	bash scripts/gpu_check.sh

clean:
	rm -rf $(VENV) logs outputs multirun .pytest_cache
