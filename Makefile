# oncopipe — one entry per habit. Every target installs what it needs on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CDK := node_modules/.bin/cdk
ENV ?= dev
# The run report `make demo` writes (one self-contained HTML page).
REPORT ?= .oncopipe/report.html
# jsii warns at length about Node 20's end of life; the CDK works on it.
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 20
export CDK_DISABLE_VERSION_CHECK := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1


.PHONY: tools setup test test-fast demo lint synth drift bench lock clean help

help:
	@echo "make setup  - virtualenv (.venv, pinned) and the pinned CDK CLI (node_modules)"
	@echo "make test   - the whole test suite (unit, adapters, infrastructure, local e2e)"
	@echo "make demo   - embedded local mode on the sample cohort, ends with the run report"
	@echo "make lint   - ruff check, ruff format --check, mypy"
	@echo "make synth  - cdk synth with both cdk-nag packs (ENV=dev|prod)"
	@echo "make drift  - CloudFormation drift: cdk drift, then oncopipe ops drift (ENV=dev|prod)"
	@echo "make bench  - benchmarks (printed ratios)"

setup: $(VENV)/.installed node_modules/.installed tools

# Debian tools of the genomics stage (the Batch image pins its own): bwa, samtools, bcftools;
# chromium renders the run report in its test (headless; about 350 MiB installed).
TOOLS := bwa samtools bcftools chromium
tools:
	@missing=""; for t in $(TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  echo "installing$$missing (apt)"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-nodeps.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -r requirements-nodeps.txt
	# The repository on the venv's path: `python -m oncopipe` works from any folder.
	$(PY) -c "import pathlib, site; pathlib.Path(site.getsitepackages()[0], 'oncopipe-repo.pth').write_text('$(CURDIR)\n')"
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The suite runs in TEST_WORKERS processes (pytest-xdist), a test file to a process, and
# every file that uses the session's synthesized apps on one of them (tests/conftest.py's
# scheduler), so each app is synthesized once. TEST_WORKERS=0 runs it in this one.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n > 4 ? 4 : n )))
test: setup
	$(PY) -m pytest -q --durations=25 -n $(TEST_WORKERS) --dist loadfile

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

demo: setup
	@set -e; trap '$(PY) -m oncopipe local down >/dev/null 2>&1 || true' EXIT; \
	$(PY) -m oncopipe local up --env $(ENV); \
	$(PY) -m oncopipe local run; \
	$(PY) -m oncopipe local status; \
	$(PY) -m oncopipe local model; \
	$(PY) -m oncopipe local lifecycle; \
	$(PY) -m oncopipe report latest --out $(REPORT)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy oncopipe stacks lambdas batch_jobs processing training app.py

synth: setup
	$(CDK) synth --quiet -c env=$(ENV)

# Both views of drift (README, "CloudFormation drift"); fails if either finds drift (or errs).
drift: setup
	@rc1=0; rc2=0; \
	$(CDK) drift --fail -c env=$(ENV) || rc1=$$?; \
	$(PY) -m oncopipe ops drift --env $(ENV) || rc2=$$?; \
	exit $$(( rc1 > rc2 ? rc1 : rc2 ))

# Every script of benchmarks/ in quick mode; one table in benchmarks/results.md (ratios,
# goals, pass/miss, peak memory, cores, date). BENCH_ARGS=--full for the full sizes.
bench: setup
	$(PY) -m pip install --quiet -r requirements-bench.txt
	$(PY) benchmarks/run_all.py --out benchmarks/results.md $(BENCH_ARGS)

lock:
	$(PY) -m pip freeze --exclude-editable | grep -v '^oncopipe' > constraints.txt

clean:
	rm -rf cdk.out .build .pytest_cache .mypy_cache .ruff_cache
