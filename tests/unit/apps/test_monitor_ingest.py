"""The monitor's input step (``Monitor._ingest``) without a broker: a consumed batch of
suggestions, events and purchases (good, bad, and consumer events) is decoded a topic at a
time, yet its records reach the join in consumption order, exactly as when the same messages
come one per batch. Clients are made but never connect (nothing listens at the address)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError

from worker.apps.monitor import Monitor
from worker.config import KafkaSettings, MonitorSettings, TopicSettings
from worker.testing import FakeMessage
from worker.wire.codec import codec_for


class _Log:
    def __getattr__(self, _name: str) -> Any:
        return lambda *_a, **_k: None


class _Eof:
    def code(self) -> int:
        return KafkaError._PARTITION_EOF


def _monitor(models: Path) -> tuple[Monitor, list[tuple[str, bytes | None, bytes | None]]]:
    settings = MonitorSettings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"),
        topics=TopicSettings(),
        models_dir=models,
    )
    monitor = Monitor(settings, _Log())
    produced: list[tuple[str, bytes | None, bytes | None]] = []

    def produce(topic: str, key: bytes | None, value: bytes | None, headers: Any) -> None:
        produced.append((topic, key, value))

    monitor.checkpoint.produce = produce  # type: ignore[method-assign]
    return monitor, produced


def _messages(topics: TopicSettings) -> list[FakeMessage]:
    now = int(time.time() * 1000)
    events, suggestions, purchases = (
        codec_for("BrowsingEvent"),
        codec_for("ProductSuggestion"),
        codec_for("PurchaseOutcome"),
    )

    def event(n: int, user: str, **changes: Any) -> bytes:
        return events.encode(
            {
                "event_id": f"e{n}",
                "user_id": user,
                "session_id": "s1",
                "event_type": "VIEW",
                "product_id": f"p{n % 3}",
                "category_id": None,
                "price": 12.5,
                "event_time": now - 60_000 + n,
                **changes,
            }
        )

    def suggestion(n: int, user: str) -> bytes:
        return suggestions.encode(
            {
                "suggestion_id": f"events/0/{n}",
                "user_id": user,
                "session_id": "s1",
                "event_id": f"e{n}",
                "source_topic": "events",
                "source_partition": 0,
                "source_offset": n,
                "model_version": "m1",
                "products": [
                    {"product_id": f"p{i}", "rank": 3 - i, "score": 1.0} for i in range(3)
                ],
                "event_time": now - 60_000 + n,
                "produced_time": now - 59_000 + n,
            }
        )

    def purchase(n: int, user: str, **changes: Any) -> bytes:
        return purchases.encode(
            {
                "order_id": f"o{n}",
                "user_id": user,
                "session_id": None,
                "product_id": f"p{n % 3}",
                "quantity": 1,
                "price": None,
                "event_time": now - 30_000 + n,
                **changes,
            }
        )

    ev, sg, pu = topics.events, topics.suggestions, topics.purchases
    rows: list[tuple[str, bytes | None, bytes | None]] = []
    for n in range(6):
        user = f"u{n % 2}".encode()
        rows += [(ev, user, event(n, user.decode())), (sg, user, suggestion(n, user.decode()))]
        rows.append((pu, user, purchase(n, user.decode())))
    rows += [
        (ev, b"u0", event(7, "u0", event_time=5)),  # invalid: counted, not dead-lettered
        (ev, b"u0", b"\x07junk"),
        (sg, b"u1", suggestion(8, "u0")),  # key of another user
        (sg, b"u1", suggestion(9, "u1")[:-2]),
        (sg, b"u1", suggestion(3, "u1")),  # a duplicate
        (pu, b"u1", purchase(10, "u1", quantity=0)),
        (pu, b"u1", None),
        (pu, b"u1", events.encode(_event_dict(now))),  # an event on the purchases topic
    ]
    offsets: dict[str, int] = {}
    out = []
    for topic, key, value in rows:
        offset = offsets[topic] = offsets.get(topic, 100) + 1
        out.append(FakeMessage(topic, 0, offset, key, value, [("h", b"1")], now))
    out.insert(5, FakeMessage(ev, 1, 7, None, None, error=_Eof()))
    return out


def _event_dict(now: int) -> dict[str, Any]:
    return {
        "event_id": "x",
        "user_id": "u1",
        "session_id": "s",
        "event_type": "VIEW",
        "product_id": "p1",
        "category_id": None,
        "price": None,
        "event_time": now,
    }


def _state(monitor: Monitor) -> Any:
    m = monitor.metrics
    counters = {
        name: getattr(m, name)._value.get()
        for name in ("suggestions_in", "purchases_in", "duplicates", "late", "events_in")
        + ("late_events", "invalid_events")
    }
    dead = {
        s.labels["error_class"]: s.value
        for metric in m.dead_letters.collect()
        for s in metric.samples
        if s.name.endswith("_total")
    }
    return (
        counters,
        dead,
        dict(monitor._marks),
        dict(monitor._at_end),
        {tp: list(q) for tp, q in monitor._replay.items()},
        monitor.tracker.pending,
    )


def test_a_batch_reaches_the_join_as_its_messages_one_by_one(tmp_path: Path) -> None:
    (tmp_path / "metadata.json").write_text(json.dumps({"popular_top": ["p0", "p1"]}))
    batch, batch_out = _monitor(tmp_path)
    single, single_out = _monitor(tmp_path)
    messages = _messages(batch.settings.topics)

    offsets = batch._ingest(messages)
    single_offsets: dict[tuple[str, int], int] = {}
    for msg in messages:
        single_offsets.update(single._ingest([msg]))

    assert offsets == single_offsets
    assert _state(batch) == _state(single)
    assert batch_out == single_out
    counters, dead = _state(batch)[:2]
    assert counters["events_in"] == 6 and counters["invalid_events"] == 2
    assert counters["suggestions_in"] == 7 and counters["duplicates"] == 1
    assert counters["purchases_in"] == 6
    assert dead == {
        "InvalidRecordError": 2.0,
        "CorruptPayloadError": 1.0,
        "UnknownFramingError": 1.0,
        "SchemaMismatchError": 1.0,
    }
    assert len(batch_out) == 5
    for consumer in (batch.consumer, single.consumer):
        consumer.close()
