"""Shared fixtures: the real broker, a trained model, unique topics per test."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from tests.kafka_fixtures import kafka_bootstrap  # noqa: F401  (session fixture re-exported)
from worker.config import TopicSettings

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
