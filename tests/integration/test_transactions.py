"""The exactly-once checkpoint over the real broker: a stuck producer and a zombie.

* An exactly-once batch whose outputs the broker answers for but never acknowledges is
  abandoned well before the transaction timeout, and its open transaction stops holding
  read_committed readers back. The stuck output is made for real: it goes to a topic that does
  not exist (and that the producer may not create). librdkafka keeps it queued, asking the
  broker for the topic's metadata, until ``topic.metadata.propagation.max.ms`` (30 s) has
  passed, while the broker itself answers every request. That is how a producer that lost a
  partition's leader after a broker freeze looks from the worker: queued outputs, no
  acknowledgement, a broker that is up.
* A zombie (a worker that lost its partitions but still runs) is fenced by its successor with
  the same transactional id: its open transaction is aborted, its commit fails fatally (the
  process exits instead of rewinding) and readers see only the successor's outputs.
"""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka.admin import NewTopic
from helpers import read_all  # type: ignore[import-not-found]

from worker.ack_watch import AckWatch
from worker.config import KafkaSettings
from worker.kafka.admin import admin_client
from worker.kafka.checkpoint import (
    Checkpoint,
    DeliveryError,
    TransactionAbandonedError,
    TransactionalCheckpoint,
)
from worker.kafka.clients import make_consumer, make_producer


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict]] = []

    def _record(self, event: str, **kw) -> None:
        self.lines.append((event, kw))

    info = warning = error = debug = _record


def _create(bootstrap: str, *topics: str) -> None:
    admin = admin_client(KafkaSettings(bootstrap))
    for future in admin.create_topics([NewTopic(name, 1, 1) for name in topics]).values():
        future.result(30)


def _read_committed(bootstrap: str, topic: str) -> tuple[list[bytes], float]:
    """Values a read_committed reader gets from ``topic`` until it reaches the end, and how
    long that took (the end is the last stable offset: an open transaction holds it back)."""
    started = time.monotonic()
    messages = read_all(bootstrap, topic, 1, timeout_s=30)
    return [m.value() for m in messages], time.monotonic() - started


def test_stuck_outputs_abandon_the_transaction_early(kafka_bootstrap):
    suffix = uuid.uuid4().hex[:8]
    healthy, stuck = f"healthy-{suffix}", f"absent-{suffix}"
    _create(kafka_bootstrap, healthy)
    settings = KafkaSettings(kafka_bootstrap)
    log = _Log()
    consumer = make_consumer(settings, f"group-{suffix}", log, auto_commit=False)
    transactional_id = f"txn-{suffix}"

    def new_producer():
        return make_producer(
            settings,
            log,
            **{
                "transactional.id": transactional_id,
                "transaction.timeout.ms": 60000,
                "allow.auto.create.topics": False,
            },
        )

    checkpoint = TransactionalCheckpoint(
        new_producer,
        consumer,
        ack_watch=lambda: AckWatch(quiet_s=3.0, stuck_s=4.0, probe_every_s=1.0),
        log=log,
    )
    try:
        checkpoint.produce(healthy, b"k", b"first")
        checkpoint.produce(stuck, b"k", b"never")
        started = time.monotonic()
        with pytest.raises(TransactionAbandonedError, match="while the broker answers"):
            checkpoint.complete({})
        abandoned_after = time.monotonic() - started
        # Quiet 3 s + answering 4 s, plus a flush slice and a probe: well below the 30 s after
        # which librdkafka would fail the stuck output (and 60 s for a producer that lost a
        # partition's leader).
        assert abandoned_after < 20, abandoned_after
        assert [e for e, _ in log.lines].count("transactional_producer_replaced") == 1

        # The replacement producer works, and the abandoned transaction no longer holds
        # read_committed readers back: they reach the end at once and see only the new batch.
        checkpoint.produce(healthy, b"k", b"second")
        checkpoint.complete({})
        values, took = _read_committed(kafka_bootstrap, healthy)
        assert values == [b"second"], values
        assert took < 15, took
    finally:
        checkpoint.producer.flush(0)
        consumer.close()


def test_at_least_once_reports_stuck_outputs_and_keeps_them(kafka_bootstrap):
    """At-least-once does not drop a stuck batch (per-user order): it reports itself stuck (the
    worker fails liveness) and keeps waiting, and clears the report once the wait ends."""
    suffix = uuid.uuid4().hex[:8]
    healthy, stuck = f"healthy-{suffix}", f"absent-{suffix}"
    _create(kafka_bootstrap, healthy)
    settings = KafkaSettings(kafka_bootstrap)
    log = _Log()
    consumer = make_consumer(settings, f"group-{suffix}", log)
    # The absent topic's output fails after 15 s instead of librdkafka's default 30 s.
    producer = make_producer(
        settings,
        log,
        **{"allow.auto.create.topics": False, "topic.metadata.propagation.max.ms": 15000},
    )
    reports: list[tuple[float, str | None]] = []
    started = time.monotonic()
    checkpoint = Checkpoint(
        producer,
        consumer,
        on_stuck=lambda reason: reports.append((time.monotonic() - started, reason)),
        ack_watch=lambda: AckWatch(quiet_s=2.0, stuck_s=3.0, probe_every_s=1.0),
        log=log,
    )
    try:
        checkpoint.produce(healthy, b"k", b"first")
        checkpoint.produce(stuck, b"k", b"never")
        with pytest.raises(DeliveryError, match="UNKNOWN_TOPIC"):
            checkpoint.complete({})
        waited = time.monotonic() - started
        assert waited > 14, waited  # it waited for librdkafka's verdict, did not give up
        (stuck_at, reason), (cleared_at, cleared) = reports
        assert "while the broker answers" in reason and 5 <= stuck_at < 12, reports
        assert cleared is None and cleared_at >= 14, reports
        assert [e for e, _ in log.lines].count("outputs_stuck") == 1
    finally:
        producer.flush(0)
        consumer.close()


def test_a_successor_fences_the_zombie_and_only_its_outputs_are_visible(kafka_bootstrap):
    suffix = uuid.uuid4().hex[:8]
    topic = f"fenced-{suffix}"
    _create(kafka_bootstrap, topic)
    settings = KafkaSettings(kafka_bootstrap)
    log = _Log()
    consumers = [make_consumer(settings, f"group-{suffix}", log, auto_commit=False) for _ in "ab"]

    def new_producer():
        return make_producer(
            settings, log, **{"transactional.id": f"txn-{suffix}", "transaction.timeout.ms": 60000}
        )

    zombie = TransactionalCheckpoint(new_producer, consumers[0], log=log)
    try:
        zombie.produce(topic, b"k", b"zombie")
        zombie.producer.flush(10)  # its output is written, inside its still open transaction
        successor = TransactionalCheckpoint(new_producer, consumers[1], log=log)
        successor.produce(topic, b"k", b"successor")
        successor.complete({})
        with pytest.raises(DeliveryError, match="fatal") as raised:
            zombie.complete({})
        assert not isinstance(raised.value, TransactionAbandonedError)  # exit, do not rewind
        values, _ = _read_committed(kafka_bootstrap, topic)
        assert values == [b"successor"], values
    finally:
        for c in consumers:
            c.close()
