"""The local Kafka launcher against a real Apache Kafka broker (JVM + Maven needed, no Docker).

Each test runs its own broker on free ports in a temp home, so it never meets a developer's demo
broker. A broker that cannot start fails the test: nothing here is skipped.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from devtools import localkafka
from devtools.localkafka import LocalKafkaConfig, free_ports

pytestmark = pytest.mark.kafka


def make_cfg(home: Path, **kwargs: object) -> LocalKafkaConfig:
    port, controller_port = free_ports(2)
    return LocalKafkaConfig(
        home=home, port=port, controller_port=controller_port, heap_mb=384, **kwargs
    )


@pytest.fixture
def plain_cfg(tmp_path: Path) -> Iterator[LocalKafkaConfig]:
    cfg = make_cfg(tmp_path / "kafka")
    yield cfg
    localkafka.stop(cfg)


@pytest.fixture
def sasl_cfg(tmp_path: Path) -> Iterator[LocalKafkaConfig]:
    cfg = make_cfg(tmp_path / "kafka-sasl", sasl_users=(("alice", "alice-pw"),))
    yield cfg
    localkafka.stop(cfg)


def test_start_produce_consume_idempotent_stop(plain_cfg: LocalKafkaConfig) -> None:
    bootstrap = localkafka.start(plain_cfg)
    assert bootstrap == f"127.0.0.1:{plain_cfg.port}"
    first = localkafka.status(plain_cfg)
    assert first["running"] is True
    assert first["bootstrap"] == bootstrap
    assert (plain_cfg.home / "logs" / "server.log").stat().st_size > 0

    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = f"lk-{uuid.uuid4().hex[:8]}"
    for future in admin.create_topics([NewTopic(topic, num_partitions=3)]).values():
        future.result(timeout=30)
    assert len(admin.list_topics(topic, timeout=10).topics[topic].partitions) == 3

    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, key=b"k", value=b"hello kafka", partition=1)
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{topic}",
            "auto.offset.reset": "earliest",
        }
    )
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        msg = None
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                break
        assert msg is not None and msg.error() is None
        assert (msg.key(), msg.value(), msg.partition()) == (b"k", b"hello kafka", 1)
    finally:
        consumer.close()

    assert localkafka.start(plain_cfg) == bootstrap
    assert localkafka.status(plain_cfg)["pid"] == first["pid"]

    assert localkafka.stop(plain_cfg) is True
    assert localkafka.status(plain_cfg)["running"] is False
    assert not plain_cfg.pid_file.exists()
    assert localkafka.stop(plain_cfg) is False


def test_sasl_scram_accepts_right_and_refuses_wrong_credentials(
    sasl_cfg: LocalKafkaConfig,
) -> None:
    bootstrap = localkafka.start(sasl_cfg)
    scram = {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice",
    }
    good = AdminClient({**scram, "sasl.password": "alice-pw"})
    assert good.list_topics(timeout=10) is not None

    errors: list[str] = []
    bad = AdminClient(
        {**scram, "sasl.password": "wrong-pw", "error_cb": lambda err: errors.append(str(err))}
    )
    started = time.monotonic()
    with pytest.raises(KafkaException):
        bad.list_topics(timeout=5)
    assert time.monotonic() - started < 10
    bad.poll(0)  # serves the queued error callbacks
    assert any("Authentication failed" in err or "SASL" in err for err in errors), errors

    plain = AdminClient({"bootstrap.servers": bootstrap, "error_cb": lambda err: None})
    with pytest.raises(KafkaException):
        plain.list_topics(timeout=3)

    assert localkafka.stop(sasl_cfg) is True
