# lpc_fast developer entry points. Every target that needs Python runs `setup` first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN := torch==2.13.0
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' 2>/dev/null)
PYTEST_ARGS ?=

.PHONY: setup demo test test-gpu lint format bench clean

setup: $(VENV)/.stamp-ext

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Install torch only where none is present: never replace a machine's own (CUDA) torch.
$(VENV)/.stamp-deps: requirements-dev.txt | $(PY)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -r requirements-dev.txt
	@touch $@

# Editable install (console script + import path) once; the extension is rebuilt in place
# whenever a C++/CUDA source changes (ninja keeps rebuilds incremental).
$(VENV)/.stamp-install: $(VENV)/.stamp-deps setup.py pyproject.toml
	$(PIP) install -q --no-build-isolation --no-deps -e .
	@touch $@

$(VENV)/.stamp-ext: $(VENV)/.stamp-install $(CSRC)
	$(PY) setup.py -q build_ext --inplace
	@touch $@

demo: setup
	$(PY) -m lpc_fast demo

test: setup
	$(PY) -m pytest -q -m "not gpu" $(PYTEST_ARGS)

test-gpu: setup
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/clang-format --dry-run --Werror $(CSRC)

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	$(VENV)/bin/clang-format -i $(CSRC)

bench: setup
	$(PY) benchmarks/run_cpu_suite.py

clean:
	rm -rf build lpc_fast/_C*.so $(VENV)/.stamp-ext $(VENV)/.stamp-install
