# lambdaflow — the two commands are `make run` and `make test`; everything else is optional.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SPARK_CLASSES := $(VENV)/spark-classes.jsa
SPARK_JAR := $(VENV)/lambdaflow-spark.jar
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYSPARK_PYTHON := $(abspath $(BIN)/python)
export PYSPARK_DRIVER_PYTHON := $(abspath $(BIN)/python)
export PYTHONPATH := $(abspath .)

.PHONY: venv browser azurite run reset test test-fast chaos bench lint format lock compose-check clean

venv: $(STAMP) $(SPARK_JAR) $(SPARK_CLASSES)

# uv resolves and installs the ~230 pinned packages in well under a minute; pip is only used to fetch uv.
# Bytecode is compiled at install (~30 s): where PYTHONDONTWRITEBYTECODE is set (as on the CI machine), Python
# never caches it, and every process compiled pandas, PySpark, Airflow, ... from source again (~2 s more per
# Spark application's start, ~1 s per CLI run, more per Airflow task).
$(STAMP): requirements.txt constraints.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==0.13.8
	$(BIN)/uv pip install --python $(BIN)/python --quiet --compile-bytecode -r requirements.txt -c constraints.txt
	$(BIN)/uv pip install --python $(BIN)/python --quiet --no-deps -e .
	@touch $(STAMP)

# lambdaflow's own Spark classes (lambdaflow/java, ~2 s with the JDK's javac); sessions also compile them when stale.
$(SPARK_JAR): $(STAMP) $(wildcard lambdaflow/java/*.java)
	@$(BIN)/python -m lambdaflow.spark_jar $@ >/dev/null

# A class-data-sharing archive of the classes Spark's driver loads (~1 min, once per install): every Spark
# session then starts ~4 s sooner. Best effort: without it Spark starts as usual.
$(SPARK_CLASSES): $(STAMP)
	@echo "writing the Spark class archive (once per install, ~1 min)"
	@$(BIN)/python -m lambdaflow.spark_classes $@

run: venv
	$(BIN)/lambdaflow up

# The broker keeps its topics under <data dir>/broker across runs; this empties the data directory but its
# secrets, so the next `make run` starts afresh (the broker alone cannot go: see cli/reset.py).
reset: venv
	$(BIN)/lambdaflow reset

# The dashboard test renders the page in Debian's headless Chromium (~25 s to install, once).
browser:
	@command -v chromium >/dev/null || (echo "installing Debian's chromium for the dashboard test" && \
		(apt-get install -y -qq chromium >/dev/null 2>&1 || \
		 (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)))

# Azurite, the Azure Storage emulator the lake's Azure copy is tested and benchmarked against, from npm into
# .cache/azurite (Node.js from the machine; no global install).
AZURITE_VERSION := 3.37.0
AZURITE := .cache/azurite/node_modules/.bin/azurite-blob
azurite: $(AZURITE)
$(AZURITE):
	npm install --prefix .cache/azurite --no-audit --no-fund --silent azurite@$(AZURITE_VERSION)

# Two steps, each with its own summary: the slowest tests (a Spark cluster, the demo in a browser) run last,
# after everything else has passed.
test: venv browser azurite
	$(BIN)/pytest -m "not slow"
	$(BIN)/pytest -m slow

test-fast: venv
	$(BIN)/pytest -m "not integration"

# SIGKILLs of the streaming app, broker restarts and a serving kill under load, with the summary printed
# (also part of `make test`).
chaos: venv
	$(BIN)/pytest -m chaos -s tests/chaos

bench: venv azurite
	$(BIN)/python -m benchmarks

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

lock: venv
	@echo '# Full lock of the environment made from requirements.txt (`make lock` regenerates it).' > constraints.txt
	$(BIN)/uv pip freeze --python $(BIN)/python --exclude-editable >> constraints.txt

# Validates docker-compose.yaml with Debian's docker-compose (no Docker engine is needed for `config`), every
# secret that .env.example names set to a placeholder.
compose-check:
	@command -v docker-compose >/dev/null || (apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null)
	env $$(sed -n 's/^\([A-Z][A-Z0-9_]*\)=$$/\1=check-only/p' .env.example) \
		docker-compose -f docker-compose.yaml config --quiet && echo "docker-compose.yaml is valid"

clean:
	rm -rf .lambdaflow .pytest_cache
