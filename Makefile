# Everyday commands. `make install` once; the others assume it (and `make test` does it for you).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run migrate test lint format vendor bench bench-setup bench-usage bench-log bench-instructions soak chroma-conformance clean

$(BIN)/gateway: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/gateway

run: install  ## serve on 127.0.0.1:8080, on the embedded SQLite unless DATABASE_URL says otherwise
	$(BIN)/gateway serve

migrate: install  ## apply the migrations to DATABASE_URL
	$(BIN)/gateway migrate

test: install  ## the whole suite (needs the local Postgres; see README)
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check gateway tests migrations bench
	$(BIN)/ruff format --check gateway tests migrations bench
	$(BIN)/mypy

format: install
	$(BIN)/ruff format gateway tests migrations bench
	$(BIN)/ruff check --fix gateway tests migrations bench

# The dashboard's chart library and the browser tests' accessibility checker, pinned, from the npm registry: the
# files are committed (the gateway fetches nothing from outside), `make vendor` is how they were got.
UPLOT_VERSION := 1.6.32
AXE_VERSION := 4.14.1
DASHBOARD_VENDOR := gateway/dashboard/static/vendor
BROWSER_VENDOR := tests/browser/vendor

vendor:  ## uPlot (the dashboard's charts) and axe-core (the browser tests'), with their licences
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	(cd "$$tmp" && npm pack --silent uplot@$(UPLOT_VERSION) axe-core@$(AXE_VERSION) >/dev/null); \
	mkdir -p "$$tmp/uplot" "$$tmp/axe" $(DASHBOARD_VENDOR) $(BROWSER_VENDOR); \
	tar -xzf "$$tmp/uplot-$(UPLOT_VERSION).tgz" -C "$$tmp/uplot"; \
	tar -xzf "$$tmp/axe-core-$(AXE_VERSION).tgz" -C "$$tmp/axe"; \
	cp "$$tmp/uplot/package/dist/uPlot.esm.js" "$$tmp/uplot/package/dist/uPlot.min.css" $(DASHBOARD_VENDOR)/; \
	cp "$$tmp/uplot/package/LICENSE" $(DASHBOARD_VENDOR)/uPlot.LICENSE; \
	cp "$$tmp/axe/package/axe.min.js" $(BROWSER_VENDOR)/; \
	cp "$$tmp/axe/package/LICENSE" $(BROWSER_VENDOR)/axe-core.LICENSE

bench: install  ## the gateway against nginx, LiteLLM, a bare proxy and the upstream; see docs/BENCHMARKS.md
	$(BIN)/python bench/run.py

bench-setup: install  ## what `make bench` installs on first use: Debian's wrk and nginx if missing, LiteLLM's venv
	$(BIN)/python bench/run.py --setup

bench-usage: install  ## one million usage events in Postgres, then each usage route timed
	$(BIN)/python bench/usage.py

bench-log: install  ## one million transparency log leaves in Postgres, then proofs timed and their reads counted
	$(BIN)/python bench/transparency.py

bench-instructions: install  ## instructions per chat completion under callgrind: an A/B this host's noise cannot move
	$(BIN)/python bench/instructions.py

soak: install  ## ten minutes of mixed load through a database outage and a SIGTERM (SOAK_SECONDS to change)
	$(BIN)/python bench/soak.py

chroma-conformance: install  ## Chroma's own client tests against Chroma and through the gateway; docs/CHROMA_CONFORMANCE.md
	$(BIN)/python bench/chroma_conformance.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
