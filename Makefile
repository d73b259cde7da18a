# stem_ae: two commands for a newcomer.
#   make figures   set up .venv, then regenerate every figure (figures/*.png, *.pdf);
#                  TRAIN=0 uses the shipped models instead of retraining them
#   make test      set up .venv, then run the whole test suite (notebooks included, smoke size)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON_BOOT ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# The stamp is keyed on the packaging files: editing them reinstalls, otherwise install takes seconds.
STAMP := $(VENV)/.stamp-$(shell cat setup.cfg pyproject.toml | sha1sum | cut -c1-12)
export MPLBACKEND := agg
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONHASHSEED := 0

NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
CI_PARAMS := notebooks/params/ci.yaml

.PHONY: help install test test-fast test-napari lint format figures benchmarks clean

help:
	@echo "make figures   set up, then regenerate every figure into figures/ (TRAIN=0: no training)"
	@echo "make test      set up, then run all tests (unit, doctests, notebooks at smoke size)"
	@echo "make test-napari  the napari widget in a headless viewer (own venv: build/venv-napari)"
	@echo "make lint      ruff check + ruff format --check"
	@echo "make benchmarks  run benchmarks/*.py (prints ratios and peak RSS)"

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.stamp-*
	touch $@

test: install build/ci/.prepared
	$(PY) -m pytest tests stem_ae build/ci --nbval-lax --nbval-current-env -p no:cacheprovider

test-fast: install
	$(PY) -m pytest tests stem_ae -m "not slow and not notebook" -p no:cacheprovider

# The napari widget: napari + Qt take ~20 s to install, but napari's pytest plugin (loaded by
# every pytest run once installed) breaks the warnings-as-errors suite, so they live in their own
# environment. `make test` checks the manifest only (tests/test_napari.py).
NAPARI_VENV := build/venv-napari
NAPARI_STAMP := $(NAPARI_VENV)/.stamp-$(shell cat setup.cfg pyproject.toml | sha1sum | cut -c1-12)

$(NAPARI_STAMP): setup.cfg pyproject.toml
	test -x $(NAPARI_VENV)/bin/python || $(PYTHON_BOOT) -m venv $(NAPARI_VENV)
	$(NAPARI_VENV)/bin/python -m pip install --quiet --upgrade pip setuptools wheel
	$(NAPARI_VENV)/bin/python -m pip install --quiet -e '.[dev,napari]' 'pytest-qt>=4.4'
	rm -f $(NAPARI_VENV)/.stamp-*
	touch $@

# -W: napari's own pytest plugin (make_napari_viewer) warns on import (pydantic deprecations).
test-napari: $(NAPARI_STAMP)
	QT_QPA_PLATFORM=offscreen $(NAPARI_VENV)/bin/python -m pytest tests/test_napari.py \
	  tests/test_napari_widget.py -p no:cacheprovider -W ignore::DeprecationWarning

# Notebooks at smoke size: papermill injects notebooks/params/ci.yaml without executing
# (--prepare-only); nbval then executes them as tests (in file order: 01 ... 05).
build/ci/.prepared: $(NOTEBOOKS) $(CI_PARAMS) $(STAMP)
	rm -rf build/ci && mkdir -p build/ci/out
	for nb in $(NOTEBOOKS); do \
	  $(PY) -m papermill --prepare-only --log-level ERROR -k python3 -f $(CI_PARAMS) \
	    -p repo_dir $(abspath .) -p out_dir $(abspath build/ci/out) \
	    $$nb build/ci/$$(basename $$nb) >/dev/null; \
	done
	touch $@

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# ---- figures: each notebook executed headless at its default (paper-scale) parameters ----
# Executed copies go to build/, pictures to figures/ (02_train's models to build/models/, never
# over the shipped ones). A notebook is rerun only when it, the package, the shipped models or
# its data changed; each run writes a part file that is moved into place at the end.
PKG_SOURCES := $(wildcard stem_ae/*.py)
SHIPPED_MODELS := $(wildcard stem_ae/models/*/*.keras stem_ae/models/*/*.json)
EXECUTED := $(patsubst notebooks/%.ipynb,build/%.ipynb,$(NOTEBOOKS))

figures: install $(EXECUTED)

# TRAIN=0: 02_train trains nothing; it scores the shipped models and draws their recorded loss
# curves (benchmarks/results/train_*.json). The default, TRAIN=1, retrains paper and general.
TRAIN ?= 1
build/02_train.ipynb: NB_PARAMS = $(if $(filter 0,$(TRAIN)),-p train False)

build/%.ipynb: notebooks/%.ipynb $(PKG_SOURCES) $(STAMP)
	mkdir -p build figures
	$(PY) -m papermill -k python3 --cwd notebooks --log-level WARNING \
	  -p repo_dir $(abspath .) -p out_dir $(abspath figures) $(NB_PARAMS) \
	  $< build/.$*.part.ipynb
	mv build/.$*.part.ipynb $@

# Extra inputs: 02 trains its own models; the figures use the shipped ones.
build/03_figure2.ipynb build/04_figure3.ipynb build/05_benchmark.ipynb: $(SHIPPED_MODELS)
build/04_figure3.ipynb: $(wildcard data/*.tif)
build/05_benchmark.ipynb: $(wildcard benchmarks/results/quality.*)

benchmarks: install
	for b in benchmarks/[!_]*.py; do echo "== $$b"; $(PY) $$b; done

clean:
	rm -rf build .pytest_cache .ruff_cache
