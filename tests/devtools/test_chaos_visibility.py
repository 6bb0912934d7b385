"""The harness's view of an open transaction, over the real broker.

A worker killed with records of an open transaction written leaves them ahead of what its
successor commits: a ``read_committed`` reader stops at the first of them until the broker aborts
the transaction. The harness must count those records as written (end offsets of every record,
not librdkafka's default ``read_committed`` view, which answers the last stable offset), see the
transaction as open, and wait for visibility until it ends; else it reads too early and reports
the successor's answers as missing.
"""

from __future__ import annotations

import math
import time
import uuid

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic

from devtools.chaos import _OpenTransactions, _partition_ends, _read_committed, _wait_visible
from worker.config import KafkaSettings
from worker.kafka.admin import admin_client

pytestmark = pytest.mark.kafka


def _transactional(bootstrap: str, name: str) -> Producer:
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": name})
    producer.init_transactions(30)
    producer.begin_transaction()
    return producer


def test_an_open_transaction_is_seen_and_waited_for(kafka_bootstrap):
    topic = f"visible-{uuid.uuid4().hex[:8]}"
    admin = admin_client(KafkaSettings(kafka_bootstrap))
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(30)

    dead = _transactional(kafka_bootstrap, f"dead-{topic}")  # the killed worker's transaction
    for _ in range(5):
        dead.produce(topic, b"dead", partition=0)
    dead.flush(30)
    successor = _transactional(kafka_bootstrap, f"next-{topic}")
    for _ in range(5):
        successor.produce(topic, b"next", partition=0)
        successor.produce(topic, b"next", partition=1)
    successor.commit_transaction(30)

    ends = _partition_ends(kafka_bootstrap, topic, 2)
    assert ends[0] >= 10 and ends[1] >= 5, ends  # every record written, open or committed
    probe = _OpenTransactions(kafka_bootstrap, topic)
    try:
        # The successor's commit markers land a moment after commit_transaction returns, so
        # partition 1 may look open briefly; partition 0 stays open until the dead one aborts.
        deadline = time.monotonic() + 15
        while (found := probe.partitions()) != {0} and time.monotonic() < deadline:
            assert 0 in found, found
            time.sleep(0.2)
        assert found == {0}
    finally:
        probe.close()

    started = time.monotonic()
    assert math.isnan(
        _wait_visible(kafka_bootstrap, topic, ends, started, until_at_least=0.0, timeout_s=1.0)
    )
    dead.abort_transaction(30)
    seen = _wait_visible(kafka_bootstrap, topic, ends, started, until_at_least=0.0, timeout_s=30)
    assert not math.isnan(seen)
    values = [m.value() for m in _read_committed(kafka_bootstrap, topic, 2)]
    assert values == [b"next"] * 10


def test_an_unknown_end_is_never_taken_for_visible(kafka_bootstrap):
    assert math.isnan(
        _wait_visible(kafka_bootstrap, "any", [], time.monotonic(), until_at_least=0.0)
    )
