"""The harness's input feeder over the real broker: messages a producer keeps queued while the
broker answers are purged, re-sent through a fresh producer, and arrive once each, in order.

They are kept queued for real by sending them to a topic that does not exist yet (and that the
producer may not create): librdkafka holds them, asking for the topic's metadata, while the
broker answers every request. That is how a partition librdkafka lost for good looks from the
feeder (librdkafka #5430)."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka.admin import NewTopic

from devtools.input_feeder import InputFeeder
from tests.helpers import read_all
from worker.config import KafkaSettings
from worker.kafka.admin import admin_client
from worker.kafka.watches import AckWatch

pytestmark = pytest.mark.kafka


def test_queued_input_is_resent_once_each_in_order(kafka_bootstrap):
    topic = f"feeder-{uuid.uuid4().hex[:8]}"
    feeder = InputFeeder(
        {"bootstrap.servers": kafka_bootstrap, "linger.ms": 5, "message.timeout.ms": 120000},
        topic,
        watch=lambda: AckWatch(quiet_s=1.0, stuck_s=1.0, probe_every_s=0.25),
    )
    keys = [f"user-{i % 7}".encode() for i in range(700)]
    for i, key in enumerate(keys):
        feeder.send(key, str(i).encode())
    deadline = time.monotonic() + 20
    while feeder.replaced < 2 and time.monotonic() < deadline:
        feeder.check()
        time.sleep(0.05)
    assert feeder.replaced >= 2, "the queued messages were never given up"
    assert feeder.resent >= 2 * len(keys)

    admin = admin_client(KafkaSettings(kafka_bootstrap))
    for future in admin.create_topics([NewTopic(topic, 3, 1)]).values():
        future.result(30)
    feeder.close(90)

    got = read_all(kafka_bootstrap, topic, 3, expect=len(keys), timeout_s=30)
    values = [int(m.value()) for m in got]
    assert sorted(values) == list(range(len(keys)))  # every message, none twice
    by_key: dict[bytes, list[int]] = {}
    for m in got:
        by_key.setdefault(m.key(), []).append(int(m.value()))
    for key, seen in by_key.items():
        assert seen == sorted(seen), f"{key!r} out of order"
