"""librdkafka configurations of the worker's consumers: the group protocol an operator chooses."""

from __future__ import annotations

from typing import Any

import pytest

from worker.config import KafkaSettings
from worker.kafka import clients


class _Log:
    def __getattr__(self, _name: str) -> Any:
        return lambda *a, **k: None


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The configs ``make_consumer`` hands to confluent_kafka's Consumer (not created)."""
    configs: list[dict[str, Any]] = []
    monkeypatch.setattr(clients, "Consumer", lambda config: configs.append(config))
    return configs


def test_the_classic_protocol_keeps_the_worker_session_and_assignor(made) -> None:
    clients.make_consumer(
        KafkaSettings(),
        "g",
        _Log(),
        **{"session.timeout.ms": 45000, "partition.assignment.strategy": "cooperative-sticky"},
    )
    (config,) = made
    assert config["session.timeout.ms"] == 45000
    assert config["heartbeat.interval.ms"] == 1000
    assert config["partition.assignment.strategy"] == "cooperative-sticky"


def test_the_consumer_protocol_leaves_session_and_assignor_to_the_broker(made) -> None:
    """KIP-848 (``-X group.protocol=consumer``): librdkafka refuses session.timeout.ms,
    heartbeat.interval.ms and partition.assignment.strategy; the broker's
    group.consumer.session.timeout.ms and assignors apply instead."""
    settings = KafkaSettings(properties={"group.protocol": "consumer"})
    clients.make_consumer(
        settings,
        "g",
        _Log(),
        **{"session.timeout.ms": 10000, "partition.assignment.strategy": "cooperative-sticky"},
    )
    (config,) = made
    assert config["group.protocol"] == "consumer"
    assert not set(clients.CLASSIC_ONLY) & set(config)


def test_a_real_consumer_accepts_the_consumer_protocol_configuration() -> None:
    """confluent_kafka itself creates the consumer (no broker needed to construct it)."""
    settings = KafkaSettings("127.0.0.1:1", properties={"group.protocol": "consumer"})
    consumer = clients.make_consumer(
        settings, "g", _Log(), **{"partition.assignment.strategy": "cooperative-sticky"}
    )
    consumer.close()
