# Comptroller entry points (see README.md). Everything installs what it needs itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export COMPTROLLER_CACHE ?= $(HOME)/.cache/comptroller

.PHONY: install test unit e2e e2e-tools lint demo up plane down bench build-plane clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed  ## create .venv and install the package with dev extras

build-plane:  ## build etcd, kube-*, kubectl, kwok and helm from Go modules (cached by version)
	bash e2e/cluster/build.sh all

lint: install
	$(VENV)/bin/ruff check controller tests e2e
	$(VENV)/bin/lint-imports

unit: install  ## fast tests: engine, webhook, operator logic, policies (no control plane)
	$(PY) -m pytest -q tests policies

e2e: install build-plane e2e-tools  ## end-to-end tests on the local control plane
	$(PY) -m pytest -q e2e

test: install build-plane e2e-tools  ## the whole suite: unit + e2e
	$(PY) -m pytest -q tests policies e2e

e2e-tools:  ## Debian packages the e2e suite uses (Prometheus)
	@command -v prometheus >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null)

up: install build-plane  ## start the local stack in the background (kubeconfig: .cluster/kubeconfig)
	$(PY) -m e2e.stack up

plane: install build-plane  ## only the local control plane, without Comptroller (to install the chart by hand)
	$(PY) -m e2e.cluster.plane up

down:  ## stop the local stack, leaving no process behind
	$(PY) -m e2e.stack down 2>/dev/null || bash e2e/cluster/down.sh

demo: install build-plane  ## scripted data-scientist session on the local stack
	$(PY) -m e2e.demo

bench: install build-plane  ## benchmarks -> bench/results.json
	$(PY) -m bench.run

clean: down
	rm -rf .cluster $(VENV)
