# Tidelog — every set-up step lives here, so a fresh Debian machine needs nothing beforehand.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
NODE_DIR := tests/e2e/node
DATA_DIR ?= ./data
LISTEN ?= 127.0.0.1:9092
ADMIN  ?= 127.0.0.1:9644
PYTEST_ARGS ?=

.PHONY: help run tour-deps cluster test test-faults test-all lint bench system-deps node-deps venv clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

# Three install levels, one stamp each: .base (the broker and its CLI: `make run`), .dev (+ the local S3 server
# `make cluster` starts), .installed (+ the test and lint toolchain: `make test`). Each prints one line per step.
$(VENV)/.base: pyproject.toml
	@echo "==> [install 1/3] virtualenv $(VENV) ($(PYTHON))"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "==> [install 2/3] upgrading pip"
	@$(PIP) install -q --disable-pip-version-check --upgrade pip
	@echo "==> [install 3/3] Tidelog and its runtime dependencies (pip install -e .)"
	@PYTHONWARNINGS=ignore $(PIP) install -q --disable-pip-version-check -e .
	@touch $@

$(VENV)/.dev: $(VENV)/.base
	@echo "==> [install] the local S3 server for dev clusters (pip install -e '.[dev]')"
	@PYTHONWARNINGS=ignore $(PIP) install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

$(VENV)/.installed: $(VENV)/.dev
	@echo "==> [install] the test and lint toolchain (pip install -e '.[test]')"
	@PYTHONWARNINGS=ignore $(PIP) install -q --disable-pip-version-check -e '.[test]'
	@touch $@

venv: $(VENV)/.installed  ## create the virtualenv and install Tidelog with its test tools

tour-deps:  ## install kcat (the tour's command-line client) with apt-get if it is missing
	@if command -v kcat >/dev/null 2>&1; then echo "==> kcat: $$(command -v kcat)"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  echo "==> installing kcat (apt-get)"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq kcat >/dev/null; \
	else echo "==> kcat not found and no apt-get: the README's kcat lines need it (tidelog produce/consume do not)"; fi

run: $(VENV)/.base tour-deps  ## start the embedded broker: Kafka on 127.0.0.1:9092, admin HTTP on 127.0.0.1:9644, data in ./data
	@echo "==> starting the broker: Kafka on $(LISTEN), admin HTTP on $(ADMIN), data in $(DATA_DIR) (Ctrl-C stops it)"
	@$(VENV)/bin/tidelog run --data-dir $(DATA_DIR) --listen $(LISTEN) --admin $(ADMIN)

CLUSTER_DIR ?= ./dev-cluster
BROKERS ?= 3
BOOKIES ?= 3

cluster: system-deps $(VENV)/.dev  ## start etcd, an S3 server, 3 bookies and 3 brokers locally (Ctrl-C stops)
	$(VENV)/bin/tidelog dev-cluster --dir $(CLUSTER_DIR) --brokers $(BROKERS) --bookies $(BOOKIES)

system-deps:  ## apt-get the servers and CLI tools the tests drive (etcd, kcat, node, npm, docker-compose, postgresql) if missing
	@missing=""; \
	command -v etcd >/dev/null 2>&1 || missing="$$missing etcd-server"; \
	command -v kcat >/dev/null 2>&1 || missing="$$missing kcat"; \
	command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	command -v docker-compose >/dev/null 2>&1 || missing="$$missing docker-compose"; \
	command -v jq >/dev/null 2>&1 || missing="$$missing jq"; \
	command -v prometheus >/dev/null 2>&1 || missing="$$missing prometheus"; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  echo "installing:$$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package.json
	cd $(NODE_DIR) && npm install --silent --no-audit --no-fund
	touch $@

node-deps: $(NODE_DIR)/node_modules/.installed  ## npm-install the node clients (kafkajs) into tests/e2e/node

lint: $(VENV)/.installed  ## ruff and mypy --strict on brokers, storage, metadata
	$(VENV)/bin/ruff check brokers storage metadata tests bench
	$(VENV)/bin/mypy

test: system-deps node-deps $(VENV)/.installed lint  ## the fast suite (everything but tests marked slow)
	$(PY) -m pytest -m "not slow" -q $(PYTEST_ARGS)

test-all: system-deps node-deps $(VENV)/.installed lint  ## every test, slow fault-injection suites included
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-faults: system-deps $(VENV)/.installed  ## the fault suite: nemesis runs, failover, etcd loss (slow ones included)
	$(PY) -m pytest -m faults -q -s tests/faults $(PYTEST_ARGS)

bench: $(VENV)/.installed  ## run the benchmarks (figures go in docs/benchmarks.md)
	$(PY) bench/produce_consume.py

clean:  ## remove the virtualenv, node modules and local data
	rm -rf $(VENV) $(NODE_DIR)/node_modules $(DATA_DIR)
