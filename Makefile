# The two quick-start commands are `make demo` and `make test`; both set up
# a virtual environment in .venv first (Python 3.10+ as $(PYTHON)).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test coverage lint bench bench-quick bench-analytics bench-analytics-quick bench-export \
	bench-export-quick bench-gaps bench-gaps-quick bench-chain \
	bench-chain-quick bench-stages bench-stages-quick docs clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.10+ is required, found " + sys.version.split()[0]) if sys.version_info < (3, 10) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/grantex-archive demo
	@echo "The command is $(BIN)/grantex-archive (or run: source $(BIN)/activate, then grantex-archive)."

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Tests run on every core (pytest-xdist); each test (or module) has its own files and
# PostgreSQL schema, so they do not meet.
test: lint
	$(BIN)/pytest -n auto --dist worksteal

coverage: $(STAMP)
	$(BIN)/pytest -n auto --dist worksteal --cov --cov-report=term

bench: $(STAMP)
	$(BIN)/python -m benchmarks.ingest --events 1000000 --flat-events 4000000 --runs 5 --pg-runs 5

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks.ingest --events 100000 --flat-events 0 --no-write

bench-analytics: $(STAMP)
	$(BIN)/python -m benchmarks.analytics --events 10000000

bench-analytics-quick: $(STAMP)
	$(BIN)/python -m benchmarks.analytics --events 200000 --no-write

bench-export: $(STAMP)
	$(BIN)/python -m benchmarks.export --events 10000000

bench-export-quick: $(STAMP)
	$(BIN)/python -m benchmarks.export --events 200000 --no-write

bench-gaps: $(STAMP)
	$(BIN)/python -m benchmarks.gaps

bench-gaps-quick: $(STAMP)
	$(BIN)/python -m benchmarks.gaps --seconds 60 --cron-every 10 --down-for 5 --db sqlite --no-write

bench-stages: $(STAMP)
	$(BIN)/python -m benchmarks.stages --events 300000

bench-stages-quick: $(STAMP)
	$(BIN)/python -m benchmarks.stages --events 30000 --runs 1 --no-write

bench-chain: $(STAMP)
	$(BIN)/python -m benchmarks.chain --events 10000000

bench-chain-quick: $(STAMP)
	$(BIN)/python -m benchmarks.chain --events 200000 --small-events 20000 --no-write

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
