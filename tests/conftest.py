"""Shared fixtures: the real broker, a trained model, unique topics per test."""

from __future__ import annotations

import sys
import threading
import uuid
import warnings
from dataclasses import replace
from pathlib import Path

import lightgbm
import pytest
import structlog

from tests.kafka_fixtures import kafka_bootstrap  # noqa: F401  (session fixture re-exported)
from worker.config import TopicSettings

#: The session fixture that yields a real broker (tests/kafka_fixtures.py).
BROKER_FIXTURE = "kafka_bootstrap"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that reaches the broker fixture, directly or through other fixtures, carries
    the `kafka` marker, so that `-m kafka` / `-m "not kafka"` split the suite truthfully
    (`make test-unit` runs the latter). Checked on every collection; a test without it fails the
    run before anything starts. Tests that start brokers of their own (tests/integration/
    test_security.py, test_tls.py, tests/devtools/test_localkafka.py, test_chaos.py) carry the
    marker at module level too."""
    unmarked = [
        item.nodeid
        for item in items
        if BROKER_FIXTURE in getattr(item, "fixturenames", ())
        and item.get_closest_marker("kafka") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            f"tests using the {BROKER_FIXTURE} fixture without @pytest.mark.kafka "
            "(add it, or `pytestmark = pytest.mark.kafka` to the module):\n  "
            + "\n  ".join(unmarked)
        )


#: Small but real: a simulated history and a LightGBM ranker trained on it by `worker.apps.train`.
TEST_SIM = dict(n_products=800, n_categories=20, n_users=3000, seed=3)


@pytest.fixture(scope="session")
def simulator_settings():
    from worker.apps.simulate import SimulatorSettings

    return SimulatorSettings(**TEST_SIM)


@pytest.fixture(scope="session")
def trained_models_dir(tmp_path_factory, simulator_settings) -> Path:
    """A models directory with one artifact trained on half a day of simulated history."""
    from worker.apps.simulate import write_history
    from worker.apps.train import TrainSettings, train

    root = tmp_path_factory.mktemp("model")
    write_history(root / "history", simulator_settings, days=0.5)
    settings = replace(
        TrainSettings(), num_trees=30, num_leaves=15, max_train_queries=3000, min_data_in_leaf=20
    )
    train(root / "history", root / "models", settings)
    return root / "models"


@pytest.fixture(scope="session")
def bench_env_root(tmp_path_factory) -> Path:
    """Where devtools build their venvs (the peers', the worker's runtime one): one per test
    session, or ``WORKER_BENCH_ENV_ROOT`` to reuse venvs built before (they are rebuilt when
    their requirements change)."""
    import os

    root = os.environ.get("WORKER_BENCH_ENV_ROOT")
    return Path(root) if root else tmp_path_factory.mktemp("envs")


@pytest.fixture
def topics(request) -> TopicSettings:
    """Topic names unique to this test (the broker is shared by the session)."""
    suffix = f"{request.node.name[:40]}-{uuid.uuid4().hex[:8]}".replace("[", "-").replace("]", "")
    return TopicSettings(
        events=f"events-{suffix}",
        suggestions=f"suggestions-{suffix}",
        purchases=f"purchases-{suffix}",
        accuracy=f"accuracy-{suffix}",
        partitions=6,
    )


@pytest.fixture(autouse=True)
def _structlog_defaults_after_each_test():
    """A test that runs a command in-process (``worker.cli.main``) configures structlog to write
    to that test's captured stderr, which pytest closes afterwards; later tests must not log into
    the closed stream."""
    hooks = (warnings.showwarning, sys.excepthook, threading.excepthook)
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
    # configure_logging also routes warnings, uncaught exceptions and LightGBM's lines through
    # structlog (worker.ops.logging.route_library_output): give them back to Python and LightGBM.
    warnings.showwarning, sys.excepthook, threading.excepthook = hooks
    lightgbm.register_logger(_LightGBMDefault())


class _LightGBMDefault:
    """LightGBM's own default: print info lines, warn with ``warnings``."""

    def info(self, message: str) -> None:
        print(message)

    def warning(self, message: str) -> None:
        warnings.warn(message, stacklevel=2)
