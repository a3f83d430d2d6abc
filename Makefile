# The two commands of the README: `make run` (the pipeline) and `make test` (the tests).
# Each creates .venv from the pinned lock file when missing, so a fresh clone needs nothing else.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.reproseg-installed
CORES  ?= all
# Python code that `make lint` (part of `make test`) checks with ruff.
PY_DIRS := src tests scripts benchmarks
# Offline-safe defaults for the libraries (no telemetry or cloud probes).
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
# UTF-8 whatever the locale (reports and tables contain ±, µ...).
export PYTHONUTF8 := 1

.PHONY: run test lint lock system-deps benchmarks clean

run: $(STAMP)
	@# A SIGKILLed run leaves Snakemake's directory lock behind; when no Snakemake is running,
	@# the lock is stale: release it so that rerunning `make run` simply resumes.
	@if [ -n "$$(ls -A .snakemake/locks 2>/dev/null)" ] && ! pgrep -f 'bin/snakemake' >/dev/null; then \
		echo "make run: releasing the stale lock of an interrupted run"; \
		$(BIN)/snakemake --unlock --profile profiles/default >/dev/null; fi
	$(BIN)/snakemake --cores $(CORES) --profile profiles/default

# Style and workflow checks first: CI fails on a lint, format or snakefmt finding.
test: $(STAMP) system-deps lint
	$(BIN)/python -m pytest tests

lint: $(STAMP)
	$(BIN)/snakemake --lint --profile profiles/default
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)
	$(BIN)/snakefmt --check Snakefile workflow

# Virtual environment from the lock file (torch==2.13.0 is the CPU build served here).
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

# Services the tests start themselves: headless Chromium, and SLURM + munge for the HPC tests.
system-deps:
	bash tests/system_deps.sh

# Regenerate the lock file from requirements.in (maintainers only).
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install --quiet -r requirements.in
	.lockenv/bin/pip freeze --exclude-editable | grep -v '^reproseg' > requirements.lock
	rm -rf .lockenv

benchmarks: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf results logs .snakemake
