# lpc_fast developer entry points. Every target that needs Python runs `setup` first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN := torch==2.13.0
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' 2>/dev/null)
PYTEST_ARGS ?=

.PHONY: setup demo test test-gpu lint format bench clean check-cuda-build clean-cuda-build

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

# --- check-cuda-build: the CUDA build, without a GPU ------------------------------------------
# 1. .venv-cuda: the CUDA 13.0 build of torch 2.14.1 (about 5.5 GB, from local disk) and the
#    test tools pinned in requirements-dev.txt (not Triton: torch pins its own).
# 2. The package is built with LPC_FAST_CUDA=1 (the toolkit is found, not given: no CUDA_HOME)
#    and installed editable, from a copy of the tree in .cuda-build/src so that its extension
#    never replaces the CPU build in lpc_fast/; then build_tools/check_cuda_build.py checks that
#    every lpc_fast:: op has a CUDA kernel and that the cuda backend says "built, no device".
# 3. A wheel is built from the same copy (what a user building once for a cluster does),
#    installed into a fresh venv with the same torch, and checked again from outside the tree.
# 4. A fast subset of the CPU tests runs against the CUDA build (torch 2.14 beside make test's
#    torch 2.13).
# Stamps make a rerun fast: only a change to the C++/CUDA sources or the build files rebuilds.
# Measured on a 2-core machine shared with other builds: 21 min from a clean clone (two 5.5 GB
# venvs, two builds for sm_80 and sm_90), 2.5 min for a rerun with nothing to rebuild.
CUDA_TORCH_PIN := torch==2.14.1
CUDA_ARCH_LIST := 8.0;9.0
CUDA_VENV := .venv-cuda
CUDA_WHEEL_VENV := .venv-cuda-wheel
CUDA_WORK := .cuda-build
CUDA_SRC := $(CUDA_WORK)/src
CUDA_WHEELS := $(CUDA_WORK)/wheels
CUDA_PY := $(CURDIR)/$(CUDA_VENV)/bin/python
CUDA_WHEEL_PY := $(CURDIR)/$(CUDA_WHEEL_VENV)/bin/python
# Versions come from requirements-dev.txt; the second list is what importing lpc_fast needs.
CUDA_TEST_PKGS := numpy|tqdm|pytest|hypothesis|ninja|setuptools|wheel
CUDA_RUNTIME_PKGS := numpy|tqdm
CUDA_BUILD_ENV := LPC_FAST_CUDA=1 TORCH_CUDA_ARCH_LIST="$(CUDA_ARCH_LIST)"
CUDA_BUILD_INPUTS := $(CSRC) setup.py pyproject.toml build_tools/cuda_toolkit.py build_tools/extension_probe.py
PKG_FILES := $(shell find lpc_fast -name '*.py' -o -name 'py.typed' 2>/dev/null)
# RNG, CPU-kernel, API and dispatcher-op tests (opcheck, gradcheck, torch.compile): what depends
# on the torch version; and setup.py's toolkit decision against a CUDA torch. The cross-backend
# parity suite (test_op_parity.py, 4 minutes) stays in make test.
CUDA_TESTS ?= tests/test_rng.py tests/test_cpu_kernel.py tests/test_api.py tests/test_dispatcher_ops.py \
	tests/test_check_cuda_build.py tests/test_cuda_toolkit.py

pins = $$(grep -E '^($(1))([=<>]|$$)' requirements-dev.txt)

$(CUDA_VENV)/.stamp-deps: requirements-dev.txt
	test -x $(CUDA_PY) || $(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_PY) -m pip install -q --upgrade pip
	$(CUDA_PY) -m pip install -q $(CUDA_TORCH_PIN) $(call pins,$(CUDA_TEST_PKGS))
	$(CUDA_PY) -c "import torch; assert torch.version.cuda, 'not a CUDA build: ' + torch.__version__"
	@touch $@

$(CUDA_VENV)/.stamp-ext: $(CUDA_VENV)/.stamp-deps $(CUDA_BUILD_INPUTS)
	env -u CUDA_HOME -u CUDA_PATH $(PYTHON) build_tools/cuda_toolkit.py
	$(PYTHON) build_tools/export_tree.py $(CUDA_SRC)
	cd $(CUDA_SRC) && env -u CUDA_HOME -u CUDA_PATH $(CUDA_BUILD_ENV) \
	  nice -n 10 $(CUDA_PY) -m pip install -q --no-build-isolation --no-deps -e .
	@touch $@

# The wheel carries the Python sources too: any change to the package rebuilds it (in the copy's
# build/, so only changed C++/CUDA sources are compiled again).
$(CUDA_WORK)/.stamp-wheel: $(CUDA_VENV)/.stamp-ext $(PKG_FILES)
	$(PYTHON) build_tools/export_tree.py $(CUDA_SRC)
	rm -rf $(CUDA_WHEELS)
	cd $(CUDA_SRC) && env -u CUDA_HOME -u CUDA_PATH $(CUDA_BUILD_ENV) \
	  nice -n 10 $(CUDA_PY) -m pip wheel -q --no-build-isolation --no-deps -w $(CURDIR)/$(CUDA_WHEELS) .
	@touch $@

$(CUDA_WHEEL_VENV)/.stamp-deps: requirements-dev.txt
	test -x $(CUDA_WHEEL_PY) || $(PYTHON) -m venv $(CUDA_WHEEL_VENV)
	$(CUDA_WHEEL_PY) -m pip install -q --upgrade pip
	$(CUDA_WHEEL_PY) -m pip install -q $(CUDA_TORCH_PIN) $(call pins,$(CUDA_RUNTIME_PKGS))
	@touch $@

$(CUDA_WHEEL_VENV)/.stamp-install: $(CUDA_WHEEL_VENV)/.stamp-deps $(CUDA_WORK)/.stamp-wheel
	$(CUDA_WHEEL_PY) -m pip install -q --no-deps --force-reinstall $(CUDA_WHEELS)/lpc_fast-*.whl
	$(CUDA_WHEEL_PY) -m pip check
	@touch $@

check-cuda-build: $(CUDA_VENV)/.stamp-ext $(CUDA_WHEEL_VENV)/.stamp-install
	$(PYTHON) build_tools/export_tree.py $(CUDA_SRC)
	cd $(CUDA_SRC) && $(CUDA_PY) build_tools/check_cuda_build.py --expect-under $(CURDIR)/$(CUDA_SRC)
	cd / && $(CUDA_WHEEL_PY) $(CURDIR)/build_tools/check_cuda_build.py \
	  --expect-under $(CURDIR)/$(CUDA_WHEEL_VENV)
	cd $(CUDA_SRC) && TRITON_INTERPRET=1 $(CUDA_PY) -m pytest -q -m "not gpu" -p no:cacheprovider $(CUDA_TESTS)

clean-cuda-build:
	rm -rf $(CUDA_WORK) $(CUDA_VENV)/.stamp-ext $(CUDA_WHEEL_VENV)/.stamp-install

# --- check-min-torch: the CPU test suite under the oldest torch that pyproject.toml admits ----------
# pyproject.toml declares torch>=MIN; this installs torch==MIN.* (PyPI's Linux wheel is a CUDA build,
# about 3 GB with its nvidia libraries; its own Triton pin comes with it) in .venv-torch-min, builds
# the CPU extension (LPC_FAST_CUDA=0) in a copy of the tree (.min-torch-build/src, so the checkout's
# CPU build is never replaced) and runs make test's suite there under TRITON_INTERPRET=1.
MIN_TORCH := $(shell sed -n 's/.*"torch>=\([0-9][0-9.]*\)".*/\1/p' pyproject.toml)
MIN_VENV := .venv-torch-min
MIN_PY := $(CURDIR)/$(MIN_VENV)/bin/python
MIN_WORK := .min-torch-build
MIN_SRC := $(MIN_WORK)/src
# Everything make test needs but Triton (torch pins the Triton it was built with) and the linters.
MIN_TEST_PKGS := numpy|scipy|scikit-learn|pillow|matplotlib|tqdm|pytest|pytest-benchmark|hypothesis|ninja|setuptools|wheel

.PHONY: check-min-torch clean-min-torch

$(MIN_VENV)/.stamp-deps: requirements-dev.txt pyproject.toml
	@test -n "$(MIN_TORCH)" || { echo "no torch>=X.Y in pyproject.toml"; exit 1; }
	test -x $(MIN_PY) || $(PYTHON) -m venv $(MIN_VENV)
	$(MIN_PY) -m pip install -q --upgrade pip
	$(MIN_PY) -m pip install -q "torch==$(MIN_TORCH).*" $(call pins,$(MIN_TEST_PKGS))
	@touch $@

check-min-torch: $(MIN_VENV)/.stamp-deps
	$(PYTHON) build_tools/export_tree.py $(MIN_SRC)
	cd $(MIN_SRC) && LPC_FAST_CUDA=0 nice -n 10 $(MIN_PY) -m pip install -q --no-build-isolation --no-deps -e .
	cd $(MIN_SRC) && $(MIN_PY) -c "import torch, lpc_fast; print('torch', torch.__version__, '| lpc_fast from', lpc_fast.__file__)"
	cd $(MIN_SRC) && TRITON_INTERPRET=1 $(MIN_PY) -m pytest -q -m "not gpu" -p no:cacheprovider $(PYTEST_ARGS)

clean-min-torch:
	rm -rf $(MIN_WORK) $(MIN_VENV)/.stamp-deps
