# Set-up and the two entry points of the README.
#   make demo   install everything, then run the full pipeline on the embedded digits data
#   make test   install everything, then run the whole test suite
# torch is pinned: on a CPU-only machine an unpinned torch pulls several GB of CUDA packages.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH  ?= torch==2.13.0
OUT    ?= runs/demo

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test,ray]"
	touch $@

demo: setup
	$(BIN)/gtdefense demo --out $(OUT)

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/solvers.py
	$(BIN)/python benchmarks/sap_overhead.py
	$(BIN)/python benchmarks/attack_throughput.py
	$(BIN)/python benchmarks/payoff_build.py

clean:
	rm -rf $(VENV) runs build *.egg-info
