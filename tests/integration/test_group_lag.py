"""The broker-side lag probe over the real broker: committed offsets of a group against the
topic's read_committed end offsets, with plain and transactional records."""

from __future__ import annotations

import time
import uuid

import pytest
import structlog
from confluent_kafka import Consumer, Producer, TopicPartition

from worker.config import KafkaSettings
from worker.kafka.admin import admin_client, ensure_topics
from worker.kafka.clients import make_consumer
from worker.kafka.group_lag import GroupLagProbe, lag_by_partition

pytestmark = pytest.mark.kafka


class _Log:
    def info(self, *a, **k):
        pass


def _probe(settings: KafkaSettings, group: str, topic: str) -> GroupLagProbe:
    """The monitor's probe of ``group`` on ``topic`` (its offsets consumer never subscribes)."""
    return GroupLagProbe(
        admin_client(settings),
        make_consumer(settings, group, structlog.get_logger(), auto_commit=False),
        group,
        topic,
        timeout_s=30,
    )


def test_lag_by_partition_counts_uncommitted_partitions_from_earliest() -> None:
    assert lag_by_partition({0: 4, 1: -1001}, {0: 10, 1: 7, 2: 5}, {0: 0, 1: 2, 2: 0}) == {
        0: 6,
        1: 5,
        2: 5,
    }
    # A committed offset past the read_committed end (an open transaction): no negative lag.
    assert lag_by_partition({0: 12}, {0: 10}, {0: 0}) == {0: 0}


def test_probe_reports_lag_members_and_ignores_open_transactions(kafka_bootstrap, topics) -> None:
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    ensure_topics(settings, topics, _Log())
    topic, group = topics.events, f"lag-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(30):
        producer.produce(topic, b"x", key=str(i).encode(), partition=i % 3)
    producer.flush(30)
    probe = _probe(settings, group, topic)
    consumer = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    consumer.subscribe([topic])
    for _ in range(120):  # join the group (the first group of a fresh broker waits for its
        consumer.poll(0.5)  # coordinator to load)
        if consumer.assignment():
            break

    before = probe.probe()
    assert before.lag == {0: 10, 1: 10, 2: 10, 3: 0, 4: 0, 5: 0}  # nothing committed yet
    assert before.members == 1

    # Commit 4 records of partition 0 and all of partition 1.
    consumer.commit(
        offsets=[TopicPartition(topic, 0, 4), TopicPartition(topic, 1, 10)], asynchronous=False
    )
    joined = probe.probe()
    assert joined.lag == {0: 6, 1: 0, 2: 10, 3: 0, 4: 0, 5: 0}
    assert joined.total == 16
    assert joined.members == 1
    assert joined.state == "STABLE"

    # An open transaction on partition 3 is not lag yet (read_committed end); once committed,
    # its records are.
    txn = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"t-{group}"})
    txn.init_transactions(30)
    txn.begin_transaction()
    for _ in range(5):
        txn.produce(topic, b"y", partition=3)
    txn.flush(30)
    assert probe.probe().lag[3] == 0
    txn.commit_transaction(30)
    # The coordinator writes the commit marker after commit_transaction returns.
    deadline = time.monotonic() + 15
    while probe.probe().lag[3] == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert probe.probe().lag[3] == 6  # 5 records and the commit marker
    consumer.close()
    assert probe.probe().members == 0


def test_probe_of_a_group_the_broker_has_never_seen(kafka_bootstrap, topics) -> None:
    """The monitor's first probe after a broker start names a group no member has joined yet.
    Through the admin client's ``list_consumer_group_offsets`` that request could kill the
    process (librdkafka#5040: SIGSEGV on a ``NOT_COORDINATOR`` answer); the probe reads the
    committed offsets through a consumer instead and counts the whole range as lag. Probed
    several times with fresh groups, each answered before its coordinator is known."""
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap)
    ensure_topics(settings, topics, _Log())
    topic = topics.events
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(12):
        producer.produce(topic, b"x", key=str(i).encode(), partition=i % 2)
    producer.flush(30)
    for _ in range(5):
        group = f"never-{uuid.uuid4().hex[:8]}"
        probe = _probe(settings, group, topic)
        lag = probe.probe()
        probe.close()
        assert lag.lag == {0: 6, 1: 6, 2: 0, 3: 0, 4: 0, 5: 0}
        assert (lag.members, lag.state) == (0, "DEAD")
