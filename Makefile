# The two commands of the README: `make train` (the main job) and `make test` (the tests).
# Both install into .venv/ on first use; the stamp is rebuilt only when dependency files change.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: install train test test-slow prepare baseline bench clean

$(STAMP): pyproject.toml constraints.txt scripts/install.sh
	bash scripts/install.sh
	touch $(STAMP)

install: $(STAMP)

## Main job: fetch ML-100K, print its statistics, train and evaluate, print the report.
train: $(STAMP)
	bash scripts/train_all.sh $(ARGS)

## Default test suite (fast, CPU). Slow tests: make test-slow.
test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(ARGS)

prepare: $(STAMP)
	$(PY) -m recfunnel.data.prepare data=ml100k $(ARGS)

baseline: $(STAMP)
	$(PY) -m recfunnel.evaluate model=popularity $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_features.py

clean:
	rm -rf $(VENV) logs outputs multirun .pytest_cache
