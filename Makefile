# One entry per task; CI (.ci/run) calls the same ones.
PYTHON ?= python3

.PHONY: install test test-llama test-js lint typecheck format bench bench-quick bench-tools services browser

install:  ## the project and its test tools, editable; the Python client for apps too
	$(PYTHON) -m pip install -e '.[dev]'
	$(PYTHON) -m pip install -e clients/python

test:  ## the whole default suite (what the README and CI run)
	$(PYTHON) -m pytest -q -n 2

test-llama:  ## the real-model tests (builds llama-cpp-python the first time)
	PYTHON=$(PYTHON) bash scripts/llama.sh

test-js:  ## the JavaScript client's node:test suite and types check (also run by `make test`)
	cd clients/js && { [ -e node_modules/.bin/tsc ] || npm ci --no-audit --no-fund --silent; } && node --test test/ && node_modules/.bin/tsc -p tsconfig.json

lint:
	$(PYTHON) -m ruff check src tests bench examples clients
	$(PYTHON) -m ruff format --check src tests bench examples clients

typecheck:
	$(PYTHON) -m mypy

format:
	$(PYTHON) -m ruff format src tests bench
	$(PYTHON) -m ruff check --fix src tests bench

browser:  ## Debian's Chromium and axe-core for the browser tests (installed when missing)
	bash scripts/browser.sh

services:  ## start PostgreSQL and Redis if not running; nginx and PgBouncer installed (hosted-mode tests)
	bash scripts/services.sh
	bash scripts/nginx.sh

bench-tools:  ## wrk and nginx for the benchmark (installed from Debian when missing)
	bash scripts/bench_tools.sh

bench: bench-tools
	$(PYTHON) -m bench
bench-quick: bench-tools ; $(PYTHON) -m bench --quick
