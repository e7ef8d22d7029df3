# Two commands matter: `make run` (install and start the server on its embedded default) and
# `make test` (install the test dependencies and run the whole suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test lint openapi bench-targeting bench-download bench-device-poll bench-mqtt-fanout bench-rollout clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,agent,iothub]'
	touch $@ $(VENV)/.installed-run

# Test-only tools from npm (Azurite, the Azure Storage emulator).
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: $(VENV)/.installed-run
	$(BIN)/fleetlift migrate
	exec $(BIN)/fleetlift serve --no-migrate

test: $(VENV)/.installed-test node_modules/.installed
	scripts/install-test-tools.sh
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy --strict src/fleetlift src/fleetlift_agent src/fleetlift_sim src/fleetlift_wire
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

openapi: $(VENV)/.installed-test
	$(BIN)/python -m fleetlift.openapi > openapi.yaml

bench-targeting: $(VENV)/.installed-test
	$(BIN)/python bench/targeting.py

bench-download: $(VENV)/.installed-test
	$(BIN)/python bench/download.py

bench-device-poll: $(VENV)/.installed-test
	$(BIN)/python bench/device_poll.py $(BENCH_ARGS)

# Needs Mosquitto on 127.0.0.1:1883 (started when down); about 80 s.
bench-mqtt-fanout: $(VENV)/.installed-test
	$(BIN)/python bench/mqtt_fanout.py $(BENCH_ARGS)

bench-rollout: $(VENV)/.installed-test
	$(BIN)/python bench/rollout.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
