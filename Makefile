# Two commands do everything on a fresh machine (Python >= 3.11):
#   make run    set up .venv, then run the main job
#   make test   set up .venv, then run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Use the offline MNIST copy beside the project when there is one (CI, these machines);
# elsewhere lib/data.py downloads MNIST into ./data.
ifeq ($(origin PYTORCH_DATA_DIR), undefined)
  ifneq ($(wildcard ../shared/data/MNIST/raw),)
    export PYTORCH_DATA_DIR := $(abspath ../shared/data)
  endif
endif

.PHONY: setup run test bench clean
setup: $(STAMP)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m lib data-summary

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_engine.py

clean:
	rm -rf $(VENV) .pytest_cache
