# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-sqlite install clean chromium bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/agnes-home demo
	$(BIN)/agnes-home serve

# The browser test drives Debian's chromium (a browser cannot be downloaded at test
# time), so install it when we can: root with apt-get. Anything else gets a loud
# warning rather than a failure; tests/test_browser.py then skips, saying why.
CHROMIUM := /usr/bin/chromium

chromium:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing chromium for the browser tests (apt-get, quietly)..."; \
		( apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends chromium >/dev/null ) \
		|| echo "!!! WARNING: installing chromium failed: browser tests will be SKIPPED !!!" >&2; \
	else \
		echo "!!! WARNING: $(CHROMIUM) is missing and cannot be installed here (needs root and apt-get): browser tests will be SKIPPED !!!" >&2; \
	fi

# The suite runs twice over its data tests: on SQLite and on PostgreSQL. tests/pg.py finds the server:
# AGNES_TEST_DATABASE_URL, else one on 127.0.0.1:5432, else a throwaway cluster from Debian's postgresql
# packages (apt-get installed when root; run as the postgres user), else the PostgreSQL half is skipped
# with a loud warning; CI=true turns that into a failure. `make test-sqlite` runs the SQLite half alone.
test: install chromium
	$(BIN)/python -m pytest

test-sqlite: install chromium
	$(BIN)/python -m pytest -m "not postgresql"

clean:
	rm -rf $(VENV) var .pytest_cache

# Benchmarks (bench/, results in bench/results/, written up in BENCHMARKS.md). Needs wrk
# (apt-get, when root) or falls back to bench/loadgen.py's asyncio client; ccusage is
# installed with npm under /tmp when npm is present, else that comparison is reported blocked.
BENCH_ARGS ?= --mb 20 200 --big-mb 1000

bench: install
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null 2>&1; } || \
		echo "wrk not installed: using the asyncio load client" >&2
	@[ -x /tmp/ccusage/node_modules/.bin/ccusage ] || { command -v npm >/dev/null 2>&1 && \
		mkdir -p /tmp/ccusage && cd /tmp/ccusage && npm install --silent ccusage@20.0.24 >/dev/null 2>&1; } || \
		echo "ccusage not installed: that comparison will be reported as blocked" >&2
	$(BIN)/python bench/ingest_bench.py $(BENCH_ARGS) --ccusage /tmp/ccusage
	$(BIN)/python bench/serve_bench.py
	$(BIN)/python bench/activity_bench.py --reuse
	$(BIN)/python bench/admin_bench.py --reuse
	$(BIN)/python bench/incremental_bench.py --out bench/results/incremental.json
	$(BIN)/python bench/history_bench.py --days 7 30 60 120 --out bench/results/history.json
	$(BIN)/python bench/replicas_bench.py
