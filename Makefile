# Comptroller entry points (see README.md). Everything installs what it needs itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export COMPTROLLER_CACHE ?= $(HOME)/.cache/comptroller

.PHONY: install test unit e2e lint demo up plane down bench build-plane preflight clean image

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed  ## create .venv and install the package with dev extras

preflight:  ## what the local stack needs (Python, Go, disk), with the command that fixes what is missing
	@PYTHON=$(PYTHON) bash e2e/cluster/preflight.sh

build-plane: preflight  ## build etcd, kube-*, kubectl, kwok, helm and Prometheus from Go modules (cached by version)
	@bash e2e/cluster/build.sh all

# actionlint checks `run:` scripts with shellcheck and pyflakes only when they are installed, and
# skips those checks otherwise.
ACTIONLINT_VERSION := $(shell sed -n 's/^ACTIONLINT_VERSION=//p' e2e/cluster/versions.env)

lint: install  ## ruff, the import-layer contracts, strict types on the engine, and actionlint on the workflows
	$(VENV)/bin/ruff check controller tests e2e bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	@bash e2e/cluster/build.sh actionlint
	$(COMPTROLLER_CACHE)/bin/actionlint-$(ACTIONLINT_VERSION)/actionlint .github/workflows/*.yml

unit: install  ## fast tests: engine, webhook, operator logic, policies (no control plane)
	$(PY) -m pytest -q tests policies

e2e: preflight install build-plane  ## end-to-end tests on the local control plane
	$(PY) -m pytest -q e2e

test: preflight install lint build-plane  ## the whole suite: lint and types, unit, e2e
	$(PY) -m pytest -q tests policies e2e

up: preflight install build-plane  ## start the local stack in the background (kubeconfig: .cluster/kubeconfig)
	$(PY) -m e2e.stack up

plane: preflight install build-plane  ## only the local control plane, without Comptroller (to install the chart by hand)
	$(PY) -m e2e.cluster.plane up

down:  ## stop the local stack, leaving no process behind
	$(PY) -m e2e.stack down 2>/dev/null || bash e2e/cluster/down.sh

demo: preflight install build-plane  ## scripted data-scientist session on the local stack
	$(PY) -m e2e.demo

# The peers bench/peers_bench.py compares with (Kyverno, Gatekeeper) are built here only, never by
# `make test` or `make demo`; a failed build is reported in the results (`peers.<name>.error`).
bench: preflight install build-plane  ## benchmarks -> bench/results.json
	-@bash e2e/cluster/build.sh kyverno gatekeeper
	$(PY) -m bench.run

image:  ## build the container image without a daemon into dist/ (OCI archive)
	@bash e2e/image/build.sh

clean: down
	rm -rf .cluster $(VENV)
