# zoe-vllm — `make up` starts the server on the embedded CPU profile,
# `make test` runs the tests. See README.md.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK := requirements/cpu.lock
STAMP := $(VENV)/.zoe-installed
PROFILE ?=
ZOE := $(PY) -m gateway.cli $(if $(PROFILE),--profile $(PROFILE))

.PHONY: install up down status logs test test-unit lint check-config provision clean

install: $(STAMP)

# The CPU build of vLLM pins torch==2.13.0+cpu, which pip takes from the
# machine's wheel folder. Everything is installed from the lock without
# dependency resolution, so torchvision/torchaudio/torchcodec (which break
# imports beside the CPU torch) never enter the environment.
$(STAMP): $(LOCK) pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) scripts/check_env.py
	touch $@

up: install
	$(ZOE) up

down:
	@if [ -x $(PY) ]; then $(ZOE) down; else echo "not installed"; fi

status: install
	$(ZOE) status

logs:
	@test -n "$(MODEL)" || { echo "usage: make logs MODEL=<name>  (or MODEL=server)"; exit 2; }
	tail -n 50 -F logs/$(MODEL).log

check-config: install
	$(ZOE) check-config

provision: install
	$(ZOE) provision

test: install
	$(PY) -m pytest

test-unit: install
	$(PY) -m pytest tests/unit

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf run logs .pytest_cache .mypy_cache .ruff_cache
