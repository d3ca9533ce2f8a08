# Two entry points for a fresh machine: `make demo` and `make test`.
# Set-up makes a local virtual environment in .venv. torch is installed first, pinned to
# the CPU build (override TORCH, e.g. `make test TORCH=torch` on a CUDA machine), so the
# later unpinned `torch>=2.4` requirement is already satisfied and pulls nothing.
# The demo installs only what it needs (the `train` extra: the lab, package ropekit_lab);
# the tests add the oracles, Triton (its CPU interpreter runs the GPU kernel in CI) and the
# linters. The stamp files depend on pyproject.toml, so a change to its scripts or
# packages re-runs the editable install.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
BASE := $(VENV)/.ropekit-base
DEMO := $(VENV)/.ropekit-demo
TEST := $(VENV)/.ropekit-test

.PHONY: demo test lint setup clean

$(BASE): pyproject.toml Makefile
	@echo "set-up: creating $(VENV) and installing $(TORCH) (CPU build; about a minute)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	touch $(BASE)

$(DEMO): $(BASE)
	@echo "set-up: installing ropekit and its lab with the demo's extra (safetensors, tqdm, matplotlib)"
	$(BIN)/python -m pip install --quiet -e ".[train]"
	touch $(DEMO)

$(TEST): $(BASE)
	@echo "set-up: installing ropekit with the test extra (oracles, triton, ruff; ~2 GB)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(TEST) $(DEMO)

setup: $(TEST)

# the main job: the lab's length-extrapolation experiment (table and figure in out/extrapolate)
demo: $(DEMO)
	$(BIN)/ropekit-lab extrapolate --out out/extrapolate

test: $(TEST)
	$(BIN)/python -m ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
