# `make bench` runs the main job (the capability benchmark), `make test` the tests, `make claims` the papers'
# claims (about 30 min), `make lm` a first language model (about 4 min), `make speed` the timings;
# each sets up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup bench claims lm speed test clean

$(BIN)/rnnzoo: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, and only if none is installed: 2.13.0 is a local CPU build on these machines
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $@

setup: $(BIN)/rnnzoo

bench: setup
	$(BIN)/rnnzoo bench

claims: setup
	$(BIN)/rnnzoo claims run --quick

lm: setup
	$(BIN)/rnnzoo train --preset tiny --out runs/tiny

speed: setup
	$(BIN)/rnnzoo speed --quick

test: setup
	$(BIN)/python -m pytest -q -n auto

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
