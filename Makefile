# Set-up and everyday commands. Everything installs into .venv (created on first use).
# Needs: Python 3.11 with venv (the lock files are compiled for CPython 3.11 on Linux x86_64, the
# CI machine and the image), and for the local broker Java >= 17 and Maven
# (`apt-get install openjdk-17-jre-headless maven`), for the local schema registry
# (devtools/localregistry, Apicurio Registry) Java >= 21 as well (a Temurin JDK under
# /usr/lib/jvm, or WORKER_LOCAL_REGISTRY_JAVA), and for the alert rule tests promtool
# (`apt-get install --no-install-recommends prometheus`; tests/deploy/test_alert_rules.py fails
# without it).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCKS  := requirements/runtime.txt requirements/dev.txt

.PHONY: install demo test test-unit test-integration lint format typecheck lock kafka-start \
	kafka-stop kafka-status clean

# The exact, hashed dependency set of requirements/dev.txt, then this checkout's two packages
# (the product and devtools) editable, without their dependencies: `worker`, which devtools
# depends on, is the checkout itself and never comes from an index. The build backend is in the
# lock too, hence no build isolation.
$(STAMP): $(LOCKS) pyproject.toml devtools/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e . -e devtools
	touch $(STAMP)

install: $(STAMP)

## Command one: the whole system on a local Apache Kafka for about a minute.
demo: $(STAMP)
	$(BIN)/worker-dev demo

## Command two: lint, layer contracts, schema compatibility, type check, unit and integration
## tests (the integration tests start a real broker). Cheapest first: a lint error fails in seconds.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/worker-dev schemas check
	$(BIN)/mypy
	$(BIN)/python -m pytest

# Every test that needs no broker (tests/conftest.py makes sure the others carry the marker).
test-unit: $(STAMP)
	$(BIN)/python -m pytest -m "not kafka"

test-integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/worker-dev schemas check

typecheck: $(STAMP)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .

# Regenerates both lock files from pyproject.toml (extras `fast`; `dev`, `fast` and `dask`) and
# requirements/dev.in (devtools' own dependencies, the build backend, `-c runtime.txt`). Pins
# already in the files are kept; to move some, e.g. `make lock LOCK_ARGS="--upgrade-package
# numpy"`, or `LOCK_ARGS=--upgrade` for everything. Needs the package index (network).
LOCK_FLAGS := --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-find-links \
	--no-emit-index-url
lock: $(STAMP)
	@$(BIN)/python -c 'import platform, sys; sys.exit(0 if sys.version_info[:2] == (3, 11) \
	  and platform.machine() == "x86_64" and sys.platform == "linux" else \
	  "make lock: compile on CPython 3.11, Linux x86_64 (the CI machine and the image)")'
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile $(LOCK_FLAGS) $(LOCK_ARGS) \
		--extra fast --output-file requirements/runtime.txt pyproject.toml
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile $(LOCK_FLAGS) $(LOCK_ARGS) \
		--extra dev --extra fast --extra dask --output-file requirements/dev.txt \
		pyproject.toml requirements/dev.in

kafka-start: $(STAMP)
	$(BIN)/worker-dev kafka start

kafka-stop: $(STAMP)
	$(BIN)/worker-dev kafka stop

kafka-status: $(STAMP)
	$(BIN)/worker-dev kafka status

clean:
	rm -rf $(VENV) var build *.egg-info
