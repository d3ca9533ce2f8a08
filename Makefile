# Two entry points for a fresh machine: `make demo` and `make test`.
# Set-up makes a local virtual environment in .venv. torch is installed first, pinned to
# the CPU build (override TORCH, e.g. `make test TORCH=torch` on a CUDA machine), so the
# later unpinned `torch>=2.4` requirement is already satisfied and pulls nothing.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ropekit-installed

.PHONY: demo test lint setup clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/ropekit extrapolate --out out/extrapolate

test: $(STAMP)
	$(BIN)/python -m ruff check src tests
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
