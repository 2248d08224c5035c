# sae-pipeline: `make run` trains the default stack, `make test` runs the checks. Both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export DO_NOT_TRACK := 1
export MLFLOW_ENABLE_TELEMETRY := false
# OpenMP threads that spin while waiting made small layers 5-20x slower whenever the other core was busy.
# An OMP_WAIT_POLICY already in the environment wins (README: Measured numbers, thread wait policy).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: run test test-quick lint ui servers servers-stop benchmarks config-docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/sae-pipeline run $(CONFIG)

lint: $(STAMP)
	$(BIN)/ruff check .

# Two pytest-xdist workers, a test file each at a time (module fixtures stay shared): the serial suite kept one
# of two cores idle while tests waited on servers and subprocesses. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
TEST_PARALLEL = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: $(STAMP) lint
	$(BIN)/python -m pytest -q $(TEST_PARALLEL) $(PYTEST_ARGS)

# Everything but the slow and the real-server tests: the loop to run while editing (CI runs `make test`).
test-quick: $(STAMP) lint
	$(BIN)/python -m pytest -q -m "not slow and not e2e" --durations=5 $(TEST_PARALLEL) $(PYTEST_ARGS)

ui: $(STAMP)
	$(BIN)/sae-pipeline ui

servers: $(STAMP)
	$(BIN)/sae-pipeline servers start

servers-stop: $(STAMP)
	$(BIN)/sae-pipeline servers stop

benchmarks: $(STAMP)
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/quality.py
	$(BIN)/python benchmarks/tracking_overhead.py
	$(BIN)/python benchmarks/pipeline_overhead.py

# docs/configuration.md's config block is generated from the schema and the digits example (a test fails while stale).
config-docs: $(STAMP)
	$(BIN)/python -m pipeline.config.docs

clean:
	rm -rf .sae-cache outputs lightning_logs .pytest_cache .ruff_cache
