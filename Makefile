# shardwallet: every entry point. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
PORT ?= 8000
export PORT
# The settings refuse to start without a real deployment's variables unless told they run on
# a development machine (docs/DEPLOY.md). Every target here is one.
SHARDWALLET_ENV ?= development
export SHARDWALLET_ENV

.DEFAULT_GOAL := help

.PHONY: help lock run test lint lint-deploy format stack-up stack-down stack-status clean bench venv audit-sql audit-query reconcile cdc-status bench-cdc bench-reconcile chaos test-hosts ha-probe pitr-probe

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
		echo "python3 -m venv failed; installing python3-venv"; \
		apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --require-hashes -r requirements.txt
	@touch $@

venv: $(VENV)/.installed ## create the virtualenv and install pinned requirements (every file's hash checked)

# pip-tools in a virtualenv of its own: the lock files are made from the .in pins, with the
# hashes of every file PyPI has for each version.
LOCK_VENV := var/lock-venv
PIP_COMPILE := $(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	--no-emit-index-url --no-emit-find-links --annotation-style line
lock: ## write requirements.txt, requirements-runtime.txt and hosts/patroni-requirements.txt (with hashes) from the .in pins
	@test -x $(LOCK_VENV)/bin/pip-compile || { $(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install -q pip-tools==7.6.2; }
	$(PIP_COMPILE) -o requirements.txt requirements.in
	$(PIP_COMPILE) -o requirements-runtime.txt requirements-runtime.in
	$(PIP_COMPILE) -o hosts/patroni-requirements.txt hosts/patroni-requirements.in

run: $(VENV)/.installed ## start PostgreSQL shards, Redis and the API on http://127.0.0.1:$(PORT) (Ctrl-C stops all)
	$(PY) manage.py serve --port $(PORT)

# Test processes in parallel (pytest-xdist), one per core up to 4, each on a throw-away stack of
# its own (wallet_project/settings_test.py); PYTEST_ARGS="-n 0 ..." runs one process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)
PYTEST_ARGS ?= -n $(TEST_WORKERS) --dist loadfile --durations=20

test: $(VENV)/.installed ## run the test suite against its own throw-away stacks, in parallel
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed ## ruff lint and format check, mypy on apps/ (django-stubs, drf-stubs)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

lint-deploy: $(VENV)/.installed ## the image, compose file and supervisord config: hadolint, shellcheck, compose schema, references (no Docker needed)
	$(PY) -m pytest -q tests/deploy

format: $(VENV)/.installed ## ruff format and autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

stack-up: $(VENV)/.installed ## start the local stack of `make run` without the API
	$(PY) manage.py devstack up

stack-down: $(VENV)/.installed ## stop the local stack of `make run`
	$(PY) manage.py devstack down

stack-status: $(VENV)/.installed ## show the local stack of `make run`
	$(PY) manage.py devstack status

audit-sql: $(VENV)/.installed ## run auditor SQL on the audit store: make audit-sql Q="SELECT * FROM audit.currency_totals"
	@$(PY) manage.py audit_sql "$(Q)"

audit-query: $(VENV)/.installed ## a named audit query: make audit-query N=wallet_history P="wallet=<id>" (no N: list them)
	@$(PY) manage.py audit_query $(N) $(foreach p,$(P),--param $(p)) $(if $(N),,--list)

reconcile: $(VENV)/.installed ## compare the audit store with the shards (exit 1 on any difference)
	$(PY) manage.py reconcile

cdc-status: $(VENV)/.installed ## the CDC process's lag per shard
	$(PY) manage.py cdc_status

bench-cdc: $(VENV)/.installed ## CDC reader throughput (changes/s) on a scratch database of the test stack
	DJANGO_SETTINGS_MODULE=wallet_project.settings_test $(PY) manage.py bench_cdc $(BENCH_ARGS)

bench-reconcile: $(VENV)/.installed ## reconcile at scale on a throw-away stack: 10M entries on 4 shards (BENCH_ARGS="--entries 1000000")
	nice -n 10 $(PY) -m bench.reconcile $(BENCH_ARGS)

clean: ## stop both stacks and delete var/ (all local data)
	-$(PY) manage.py devstack down --purge
	-DJANGO_SETTINGS_MODULE=wallet_project.settings_test $(PY) manage.py devstack down --purge
	rm -rf var

bench: $(VENV)/.installed ## end-to-end transfers vs the raw-SQL ceiling on a throw-away stack (BENCH_ARGS=...)
	$(PY) -m bench $(BENCH_ARGS)

chaos: $(VENV)/.installed ## randomized fault run on a throw-away stack, checked like a bank test: make chaos SEED=123 DURATION=180
	$(PY) -m chaos $(if $(SEED),--seed $(SEED)) $(if $(DURATION),--duration $(DURATION)) $(CHAOS_ARGS)

ha-probe: $(VENV)/.installed ## one shard as a 3-member Patroni cluster (root): its primary killed under writes; the pause, and no acknowledged write lost
	$(PY) -m hosts.ha_probe

pitr-probe: $(VENV)/.installed ## one server archived and backed up with pgBackRest (root), restored to a point in time: the rows before it, none after
	$(PY) -m hosts.pitr_probe

test-hosts: $(VENV)/.installed ## the service as separate hosts in network namespaces (root): workload, partition, slow link, a replicated shard's and Redis's failovers (HOSTS_ARGS=--scenarios a; e: the control database's)
	$(PY) -m hosts $(HOSTS_ARGS)
