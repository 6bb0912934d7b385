# Set-up and everyday commands. Everything installs into .venv (created on first use).
# Needs: Python >= 3.10 with venv, and for the local broker Java >= 17 and Maven
# (`apt-get install openjdk-17-jre-headless maven`).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-unit test-integration lint format kafka-start kafka-stop kafka-status clean

$(STAMP): pyproject.toml devtools/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,fast]" -e devtools
	touch $(STAMP)

install: $(STAMP)

## Command one: the whole system on a local Apache Kafka for about a minute.
demo: $(STAMP)
	$(BIN)/worker-dev demo

## Command two: lint, unit and integration tests (integration tests start a real broker).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

test-integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .

kafka-start: $(STAMP)
	$(BIN)/worker-dev kafka start

kafka-stop: $(STAMP)
	$(BIN)/worker-dev kafka stop

kafka-status: $(STAMP)
	$(BIN)/worker-dev kafka status

clean:
	rm -rf $(VENV) var build *.egg-info
