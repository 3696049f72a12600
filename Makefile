# The two commands a newcomer needs: `make dev` and `make test`. Everything else is set up by them.
SHELL := /bin/bash
ROOT := $(CURDIR)
PYTHON ?= python3.11
UV_VERSION := 0.13.9
UV := $(ROOT)/.tools/uv/bin/uv
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: setup dev test test-fast lint typecheck buf-lint bench clean help

help:
	@echo "make dev    - set up and run the whole platform locally (gateway on http://127.0.0.1:8080)"
	@echo "make test   - set up and run every test"
	@echo "make lint   - ruff, mypy and buf lint"
	@echo "make chart-check - lint, render, validate and scan the Helm chart"

$(UV):
	$(PYTHON) -m venv $(ROOT)/.tools/uv
	$(ROOT)/.tools/uv/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

# The venv is in sync with uv.lock, and the generated protobuf package is fresh.
setup: $(UV)
	$(UV) sync --frozen --all-packages --python $(PYTHON) --quiet
	$(PY) protos/generate.py

dev: setup
	$(PY) deploy/local/run.py

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -x -q -m "not slow" $(PYTEST_ARGS)

lint: setup buf-lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy services/kit/src services/customer/src services/sales/src services/marketing/src \
		services/servicedesk/src services/analytics/src gateway/src

BUF := $(ROOT)/.tools/npm/node_modules/.bin/buf
$(BUF):
	npm install --silent --prefix $(ROOT)/.tools/npm @bufbuild/buf@1.75.0 >/dev/null

buf-lint: $(BUF)
	cd protos && $(BUF) lint

bench: setup
	$(PY) -m pytest benchmarks -q -s -p no:cacheprovider $(PYTEST_ARGS)

clean:
	rm -rf var protos/gen .pytest_cache .mypy_cache .ruff_cache

CHART_PREREQUISITES := setup
-include deploy/make/chart.mk
