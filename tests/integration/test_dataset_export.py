"""``worker dataset export`` over the real broker, then training on what it wrote.

The topics hold an hour of a simulated shop inside the window, and around it: records before
``since - grace`` (never read: reading starts by timestamp), records in the grace before
``since`` and after ``until`` (read, skipped as outside the window), undecodable values inside
the window (counted and skipped), an aborted transaction of in-window events (read_committed:
never exported), and records stamped after ``until + grace`` (each partition stops there). The
exported directory must hold exactly the window's committed, valid records; its ``source``
block's offset ranges must read back to exactly the records counted; and a model trained on it
must carry that block in its metadata.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from worker import cli
from worker.apps import dataset
from worker.apps.simulate import build
from worker.config import KafkaSettings
from worker.kafka.admin import admin_client
from worker.wire.codec import codec_for

pytestmark = pytest.mark.kafka

MIN = 60_000
GRACE_S = 120
EVENT_CODEC = codec_for("BrowsingEvent")
PURCHASE_CODEC = codec_for("PurchaseOutcome")


def _create(bootstrap: str, topics: dict[str, int]) -> None:
    admin = admin_client(KafkaSettings(bootstrap))
    futures = admin.create_topics([NewTopic(t, n, 1) for t, n in topics.items()])
    for future in futures.values():
        future.result(30)


def _producer(bootstrap: str, **extra: Any) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 5,
            "partitioner": "murmur2_random",
            **extra,
        }
    )


def _send(producer: Producer, topic: str, key: str, value: bytes, ts: int) -> None:
    while True:
        try:
            producer.produce(topic, key=key.encode(), value=value, timestamp=ts)
            return
        except BufferError:
            producer.poll(0.1)


def _read_range(bootstrap: str, topic: str, partition: int, start: int, stop: int) -> int:
    """Records a read_committed reader gets from offsets [start, stop) of one partition."""
    if stop <= start:
        return 0
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{uuid.uuid4().hex[:6]}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, partition, start)])
        n, deadline = 0, time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                break  # end of the partition
            if msg.offset() >= stop:
                break
            n += 1
        return n
    finally:
        consumer.close()


def test_export_the_window_then_train_on_it(kafka_bootstrap, tmp_path, capsys):
    suffix = uuid.uuid4().hex[:8]
    events_topic, purchases_topic = f"export-ev-{suffix}", f"export-pu-{suffix}"
    _create(kafka_bootstrap, {events_topic: 3, purchases_topic: 2})
    # The simulated shop's traffic follows the time of day (lowest at 08:00 UTC, highest at
    # 20:00 UTC) and is anchored to the wall clock, so the window is the most recent 18:00-19:00
    # UTC hour that ended at least two hours ago: the same traffic whenever the test runs.
    now = int(time.time() * 1000)
    day = 24 * 60 * MIN
    since = (now - 2 * 60 * MIN - 60 * MIN - 18 * 60 * MIN) // day * day + 18 * 60 * MIN
    until = since + 60 * MIN
    assert until <= now - 2 * 60 * MIN and now - since <= day + 3 * 60 * MIN

    # An hour of a small simulated shop, in the window.
    from worker.apps.simulate import SimulatorSettings

    _, simulator = build(SimulatorSettings(n_products=300, n_categories=10, n_users=3000, seed=5))
    in_window = [
        (k, r) for k, r in simulator.records(since, until) if since <= r["event_time"] < until
    ]
    expected_events = Counter(r["event_id"] for k, r in in_window if k == "event")
    expected_purchases = Counter(
        (r["order_id"], r["product_id"]) for k, r in in_window if k == "purchase"
    )
    assert len(expected_events) > 500 and expected_purchases

    def ev(i: int, t: int) -> dict[str, Any]:
        return {
            "event_id": f"extra-{i}",
            "user_id": f"x{i % 7}",
            "session_id": f"xs{i % 7}",
            "event_type": "VIEW",
            "product_id": "p-extra",
            "category_id": None,
            "price": None,
            "event_time": t,
        }

    producer = _producer(kafka_bootstrap)
    # Before since - grace: never read. In the grace before since: read, outside the window.
    old = [ev(i, since - 30 * MIN + i) for i in range(20)]
    early = [ev(100 + i, since - GRACE_S * 1000 // 2 + i) for i in range(10)]
    for r in old + early:
        _send(producer, events_topic, r["user_id"], EVENT_CODEC.encode(r), r["event_time"])
    for kind, r in in_window:
        topic, codec = (
            (events_topic, EVENT_CODEC) if kind == "event" else (purchases_topic, PURCHASE_CODEC)
        )
        _send(producer, topic, r["user_id"], codec.encode(r), r["event_time"])
    # Undecodable values stamped inside the window, on both topics (two ways).
    for i in range(9):
        _send(producer, events_topic, f"x{i}", b"\x00garbage" * (i + 1), since + 10 * MIN + i)
    for i in range(4):
        _send(producer, purchases_topic, f"x{i}", b"not avro", since + 20 * MIN + i)
    # Stamped after until but within the grace: read, outside the window.
    late = [ev(200 + i, until + i) for i in range(6)]
    for r in late:
        _send(producer, events_topic, r["user_id"], EVENT_CODEC.encode(r), r["event_time"])
    assert producer.flush(30) == 0

    # An aborted transaction of in-window events: read_committed never delivers them.
    txn = _producer(kafka_bootstrap, **{"transactional.id": f"export-test-{suffix}"})
    txn.init_transactions(30)
    txn.begin_transaction()
    aborted = [ev(300 + i, since + 30 * MIN + i) | {"event_id": f"aborted-{i}"} for i in range(25)]
    for r in aborted:
        _send(txn, events_topic, r["user_id"], EVENT_CODEC.encode(r), r["event_time"])
    txn.flush(30)
    txn.abort_transaction(30)

    # After until + grace on every partition (every user x0..x6 and a few more keys): the stop.
    producer = _producer(kafka_bootstrap)
    after = [ev(400 + i, until + (GRACE_S + 60) * 1000 + i) for i in range(40)]
    for r in after:
        r["user_id"] = f"after{r['event_id']}"
        _send(producer, events_topic, r["user_id"], EVENT_CODEC.encode(r), r["event_time"])
    for i in range(10):
        p = {
            "order_id": f"after-{i}",
            "user_id": f"after{i}",
            "session_id": None,
            "product_id": "p-extra",
            "quantity": 1,
            "price": None,
            "event_time": until + (GRACE_S + 60) * 1000 + i,
        }
        _send(producer, purchases_topic, p["user_id"], PURCHASE_CODEC.encode(p), p["event_time"])
    assert producer.flush(30) == 0

    out = tmp_path / "exported"
    code = cli.main(
        [
            "dataset",
            "export",
            "--out",
            str(out),
            "--since",
            str(since),
            "--until",
            str(until),
            "--grace-s",
            str(GRACE_S),
            "--bootstrap-servers",
            kafka_bootstrap,
            "--events-topic",
            events_topic,
            "--purchases-topic",
            purchases_topic,
            "--log-format",
            "json",
        ]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err[-3000:]

    # Exactly the window's committed, valid records.
    assert Counter(e["event_id"] for e in dataset.iter_events(out)) == expected_events
    assert (
        Counter((p["order_id"], p["product_id"]) for p in dataset.iter_purchases(out))
        == expected_purchases
    )
    meta = json.loads((out / "dataset.json").read_text())
    source = meta["source"]
    assert (meta["n_events"], meta["n_purchases"]) == (
        sum(expected_events.values()),
        sum(expected_purchases.values()),
    )
    assert source["skipped"] == {
        "UnknownSchemaError": 9,  # Confluent framing (0x00), and no registry to ask
        "UnknownFramingError": 4,
        "outside_window": len(early) + len(late),
    }
    assert source["written"] == len(in_window)
    assert source["read"] == len(in_window) + 9 + 4 + len(early) + len(late)
    assert source["complete"] is True
    assert source["topics"] == {events_topic: "event", purchases_topic: "purchase"}
    assert (source["since_ms"], source["until_ms"], source["grace_ms"]) == (
        since,
        until,
        GRACE_S * 1000,
    )
    assert source["bootstrap_servers"] == kafka_bootstrap
    parts = {(p["topic"], p["partition"]): p for p in source["partitions"]}
    assert sorted(parts) == [(events_topic, i) for i in range(3)] + [
        (purchases_topic, i) for i in range(2)
    ]
    for p in parts.values():
        # Each partition started past the old records (by timestamp) and stopped at a record
        # stamped after until + grace (every partition got some), before its end.
        assert p["stop"] == "passed_until", p
        assert p["start_offset"] <= p["first_offset"] <= p["last_offset"] < p["next_offset"]
        assert p["next_offset"] < p["end_offset_at_start"]
        # The recorded range reads back to exactly the records counted: reproducible.
        got = _read_range(
            kafka_bootstrap, p["topic"], p["partition"], p["start_offset"], p["next_offset"]
        )
        assert got == p["records"], p
    assert sum(p["start_offset"] for p in parts.values() if p["topic"] == events_topic) >= len(old)
    # The summary printed: rate, skips and per-partition ranges.
    assert "records/s" in printed.out and "UnknownSchemaError 9" in printed.out
    assert f"{events_topic}[0] offsets [" in printed.out

    # Training reads the directory and carries the source block into the artifact.
    from worker.apps.train import TrainSettings, train

    settings = replace(
        TrainSettings(),
        num_trees=5,
        num_leaves=4,
        max_train_queries=500,
        min_data_in_leaf=5,
        num_threads=1,
        refit=False,
        max_dropped_share=0.0,
    )
    path, metadata = train(out, tmp_path / "models", settings)
    assert metadata["dataset_source"] == source
    saved = json.loads((Path(path) / "metadata.json").read_text())
    assert saved["dataset_source"]["partitions"] == source["partitions"]
    assert metadata["data"]["events"]["read"] == sum(expected_events.values())
