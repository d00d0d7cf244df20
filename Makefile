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

.PHONY: setup run test bench report lab clean
setup: $(STAMP)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

# The main job: data summary, then the notebook executed headless (preset course: it reads the
# committed results, nothing retrains) and exported with its widgets to build/*.html, which opens
# offline (require.js and the widget renderer are fetched into build/static/ with npm). Another
# preset goes to build/<preset>/ (make run PRESET=quick: build/quick/), never over the course's page.
PRESET ?= course
run: $(STAMP)
	$(PY) -m lib data-summary
	$(PY) -m lib.export --preset $(PRESET)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_engine.py

# report.pdf from the committed results: figures first, so the PDF shows the current numbers
report: $(STAMP)
	$(PY) -m lib figures --preset course
	$(PY) -m lib.report --preset course

# JupyterLab on the notebook, from the project's environment; --allow-root only when run as root.
# Extra options: make lab LAB_ARGS="--no-browser --port 8899"
lab: $(STAMP)
	$(PY) -m jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS) Proj1_main_code_and_grid_searches.ipynb

clean:
	rm -rf $(VENV) .pytest_cache build report/build
