"""The checkpoint over the real broker: a stuck producer (both modes) and a zombie.

* An exactly-once batch whose outputs the broker answers for but never acknowledges is
  abandoned well before the transaction timeout, and its open transaction stops holding
  read_committed readers back. The stuck output is made for real: it goes to a topic that does
  not exist (and that the producer may not create). librdkafka keeps it queued, asking the
  broker for the topic's metadata, until ``topic.metadata.propagation.max.ms`` (30 s) has
  passed, while the broker itself answers every request. That is how a producer that lost a
  partition's leader after a broker freeze looks from the worker: queued outputs, no
  acknowledgement, a broker that is up.
* At-least-once cannot drop such a batch; it re-sends its queued outputs through a fresh
  producer once, and reports itself stuck if that one is stuck too.
* A zombie (a worker that lost its partitions but still runs) is fenced by its successor with
  the same transactional id: its open transaction is aborted, its commit fails fatally (the
  process exits instead of rewinding) and readers see only the successor's outputs.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from confluent_kafka.admin import NewTopic

from tests.helpers import read_all
from worker.config import KafkaSettings
from worker.kafka.admin import admin_client
from worker.kafka.checkpoint import (
    Checkpoint,
    DeliveryError,
    TransactionAbandonedError,
    TransactionalCheckpoint,
)
from worker.kafka.clients import make_consumer, make_producer
from worker.kafka.watches import AckWatch

pytestmark = pytest.mark.kafka


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict]] = []
        self.times: list[tuple[str, float]] = []  # event, seconds since the log was made
        self._t0 = time.monotonic()

    def _record(self, event: str, **kw) -> None:
        self.lines.append((event, kw))
        self.times.append((event, time.monotonic() - self._t0))

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


def _alo_checkpoint(kafka_bootstrap: str, suffix: str, log: _Log, reports: list, started: float):
    settings = KafkaSettings(kafka_bootstrap)
    consumer = make_consumer(settings, f"group-{suffix}", log)

    def new_producer():
        # An absent topic's output fails after 15 s instead of librdkafka's default 30 s.
        return make_producer(
            settings,
            log,
            **{"allow.auto.create.topics": False, "topic.metadata.propagation.max.ms": 15000},
        )

    checkpoint = Checkpoint(
        new_producer(),
        consumer,
        on_stuck=lambda reason: reports.append((time.monotonic() - started, reason)),
        ack_watch=lambda: AckWatch(quiet_s=2.0, stuck_s=3.0, probe_every_s=1.0),
        replacement=new_producer,
        log=log,
    )
    return checkpoint, consumer


def test_at_least_once_resends_queued_outputs_through_a_fresh_producer(kafka_bootstrap):
    """At-least-once cures a producer that keeps outputs queued while the broker answers (a
    partition librdkafka lost, #5430): the queued outputs are purged and re-sent, in order,
    through a fresh producer. Here the topic appears once the first producer was given up:
    every output then arrives exactly once, and the worker never reported itself stuck."""
    suffix = uuid.uuid4().hex[:8]
    healthy, late = f"healthy-{suffix}", f"late-{suffix}"
    _create(kafka_bootstrap, healthy)
    log, reports, started = _Log(), [], time.monotonic()
    checkpoint, consumer = _alo_checkpoint(kafka_bootstrap, suffix, log, reports, started)

    def create_once_replaced() -> None:
        deadline = time.monotonic() + 60
        while checkpoint.replaced == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        _create(kafka_bootstrap, late)

    creator = threading.Thread(target=create_once_replaced, daemon=True)
    creator.start()
    try:
        checkpoint.produce(healthy, b"k", b"first")
        for i in range(50):
            checkpoint.produce(
                late, b"k", str(i).encode(), headers=[("n", str(i).encode())], timestamp_ms=1000 + i
            )
        checkpoint.complete({})
        assert checkpoint.replaced == 1
        assert reports == [], reports
        replaced = [kw for e, kw in log.lines if e == "producer_replaced"]
        assert len(replaced) == 1 and replaced[0]["resent"] == 50, replaced
        assert [m.value() for m in read_all(kafka_bootstrap, healthy, 1)] == [b"first"]
        got = read_all(kafka_bootstrap, late, 1, expect=50)
        assert [m.value() for m in got] == [str(i).encode() for i in range(50)]  # once, in order
        # Re-sent as they were: key, headers and timestamp.
        assert [(m.key(), m.headers(), m.timestamp()[1]) for m in got] == [
            (b"k", [("n", str(i).encode())], 1000 + i) for i in range(50)
        ]
    finally:
        creator.join(5)
        checkpoint.producer.flush(0)
        consumer.close()


def test_at_least_once_reports_a_second_stuck_producer_and_keeps_its_outputs(kafka_bootstrap):
    """The fresh producer is given up on once per batch. If its outputs are stuck too, it does
    not drop them (per-user order): it reports itself stuck (the worker fails liveness), keeps
    waiting, and clears the report once the wait ends (here: librdkafka's verdict)."""
    suffix = uuid.uuid4().hex[:8]
    healthy, stuck = f"healthy-{suffix}", f"absent-{suffix}"
    _create(kafka_bootstrap, healthy)
    log, reports, started = _Log(), [], time.monotonic()
    checkpoint, consumer = _alo_checkpoint(kafka_bootstrap, suffix, log, reports, started)
    try:
        checkpoint.produce(healthy, b"k", b"first")
        checkpoint.produce(stuck, b"k", b"never")
        with pytest.raises(DeliveryError, match="UNKNOWN_TOPIC"):
            checkpoint.complete({})
        waited = time.monotonic() - started
        replaced_at = next(t for e, t in log.times if e == "producer_replaced")
        assert 5 <= replaced_at < 12, replaced_at
        # The fresh producer's output fails 15 s after it was sent: it waited for that.
        assert waited > replaced_at + 14, (waited, replaced_at)
        (stuck_at, reason), (cleared_at, cleared) = reports
        assert "while the broker answers" in reason, reason
        assert replaced_at + 5 <= stuck_at < replaced_at + 12, (reports, replaced_at)
        assert cleared is None and cleared_at >= replaced_at + 14, reports
        assert [e for e, _ in log.lines].count("outputs_stuck") == 1
        assert checkpoint.replaced == 1
    finally:
        checkpoint.producer.flush(0)
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

    # The checkpoints know the producers' 60 s timeout: the zombie's fatal error is a fencing,
    # not a transaction the broker timed out.
    zombie = TransactionalCheckpoint(
        new_producer, consumers[0], log=log, transaction_timeout_s=60.0
    )
    try:
        zombie.produce(topic, b"k", b"zombie")
        zombie.producer.flush(10)  # its output is written, inside its still open transaction
        successor = TransactionalCheckpoint(
            new_producer, consumers[1], log=log, transaction_timeout_s=60.0
        )
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


def test_a_transaction_the_broker_times_out_is_redone_without_a_restart(kafka_bootstrap):
    """A worker paused mid-transaction for longer than transaction.timeout.ms (here 2 s; the
    broker's sweep runs every 10 s) finds its transaction aborted by the broker: the batch is
    abandoned and redone with a fresh producer, and only the redone batch is visible."""
    suffix = uuid.uuid4().hex[:8]
    topic = f"timed-out-{suffix}"
    _create(kafka_bootstrap, topic)
    settings = KafkaSettings(kafka_bootstrap)
    log = _Log()
    consumer = make_consumer(settings, f"group-{suffix}", log, auto_commit=False)

    def new_producer():
        return make_producer(
            settings, log, **{"transactional.id": f"txn-{suffix}", "transaction.timeout.ms": 2000}
        )

    checkpoint = TransactionalCheckpoint(new_producer, consumer, log=log, transaction_timeout_s=2.0)
    try:
        checkpoint.produce(topic, b"k", b"timed out")
        checkpoint.producer.flush(10)  # written, inside the open transaction
        time.sleep(14)  # the transaction timeout plus the broker's abort sweep
        with pytest.raises(TransactionAbandonedError):
            checkpoint.complete({})
        checkpoint.produce(topic, b"k", b"redone")
        checkpoint.complete({})
        values, _ = _read_committed(kafka_bootstrap, topic)
        assert values == [b"redone"], values
    finally:
        checkpoint.producer.flush(0)
        consumer.close()
