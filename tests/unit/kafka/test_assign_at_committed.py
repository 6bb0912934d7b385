"""Assignments start at offsets the application read itself, with retries (not librdkafka's own
offset lookup, which never retries a request-level NOT_COORDINATOR)."""

from __future__ import annotations

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from worker.core.errors import BrokerError
from worker.kafka import clients
from worker.kafka.clients import assign_at, committed_offsets


class FakeConsumer:
    """Answers ``committed`` from a script of outcomes and records assignments."""

    def __init__(self, outcomes: list) -> None:
        self.outcomes = outcomes
        self.calls = 0
        self.assigned: list[tuple[str, list[tuple[str, int, int]]]] = []

    def committed(self, partitions, timeout):
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return [
            TopicPartition(p.topic, p.partition, outcome.get(p.partition, -1001))
            for p in partitions
        ]

    def incremental_assign(self, partitions):
        self.assigned.append(
            ("incremental", [(p.topic, p.partition, p.offset) for p in partitions])
        )

    def assign(self, partitions):
        self.assigned.append(("eager", [(p.topic, p.partition, p.offset) for p in partitions]))


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(clients.time, "sleep", lambda s: None)


def parts(*numbers: int) -> list[TopicPartition]:
    return [TopicPartition("events", n) for n in numbers]


def test_a_coordinator_error_is_retried_and_the_offsets_returned():
    consumer = FakeConsumer(
        [KafkaException(KafkaError(KafkaError.NOT_COORDINATOR)), {0: 120, 1: 7}]
    )
    assert committed_offsets(consumer, parts(0, 1)) == {("events", 0): 120, ("events", 1): 7}
    assert consumer.calls == 2


def test_still_failing_after_every_attempt_is_a_broker_error_naming_the_cause():
    error = KafkaException(KafkaError(KafkaError.NOT_COORDINATOR))
    consumer = FakeConsumer([error, error, error])
    with pytest.raises(BrokerError, match="committed offsets after 3 attempts"):
        committed_offsets(consumer, parts(0), attempts=3)
    assert consumer.calls == 3


def test_no_partitions_asks_nothing():
    consumer = FakeConsumer([])
    assert committed_offsets(consumer, []) == {}
    assert consumer.calls == 0


@pytest.mark.parametrize("incremental", [True, False])
def test_each_partition_starts_at_its_committed_offset_or_the_beginning(incremental):
    consumer = FakeConsumer([{0: 120}])
    partitions = parts(0, 1)
    committed = committed_offsets(consumer, partitions)
    assign_at(consumer, partitions, committed, incremental=incremental)
    kind = "incremental" if incremental else "eager"
    assert consumer.assigned == [(kind, [("events", 0, 120), ("events", 1, OFFSET_BEGINNING)])]
