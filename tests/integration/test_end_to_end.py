"""End to end over the real broker: the `worker run` process answers every event exactly once
when nothing fails, dead-letters bad records without stalling, and shuts down cleanly."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import fastavro
import pytest

from devtools.localkafka import free_ports
from tests.helpers import (
    cli_args,
    committed_offsets,
    end_offsets,
    produce,
    read_all,
    simulated_events,
    spawn,
    stop,
)
from worker.config import KafkaSettings
from worker.kafka.admin import ensure_topics
from worker.testing import header_map
from worker.wire.codec import codec_for, load_schema

pytestmark = pytest.mark.kafka


def free_port() -> int:
    return free_ports(1)[0]


def wait_ready(port: int, timeout_s: float = 60.0) -> bool:
    """Poll /readyz until 200 (model loaded, partitions assigned, loop turning)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    return False


N_EVENTS = 3000
ANSWER_TIMEOUT_S = 90.0


class _Log:
    def info(self, *a, **k):
        pass


def start_worker(
    bootstrap,
    topics,
    models_dir,
    tmp_path: Path,
    name: str = "worker",
    group: str = "g",
    metrics_port: int = 0,
):
    return spawn(
        [
            "run",
            *cli_args(bootstrap, topics),
            "--models-dir",
            str(models_dir),
            "--group-id",
            group,
            "--metrics-port",
            str(metrics_port),
            "--max-batch-wait-ms",
            "20",
        ],
        tmp_path / f"{name}.log",
    )


def test_every_event_gets_exactly_one_valid_suggestion_for_its_user(
    kafka_bootstrap, topics, trained_models_dir, simulator_settings, tmp_path
):
    """N events in -> exactly N suggestions out, each keyed and addressed to the event's user,
    schema-valid, naming its source offset, with K ranked products, within a time bound."""
    ensure_topics(KafkaSettings(kafka_bootstrap), topics, _Log())
    codec = codec_for("BrowsingEvent")
    events = simulated_events(simulator_settings, N_EVENTS)
    port = free_port()
    worker = start_worker(kafka_bootstrap, topics, trained_models_dir, tmp_path, metrics_port=port)
    try:
        assert wait_ready(port), "the worker never reported ready (/readyz)"
        started = time.monotonic()
        produce(
            kafka_bootstrap,
            ((topics.events, e["user_id"].encode(), codec.encode(e)) for e in events),
        )
        messages = read_all(
            kafka_bootstrap,
            topics.suggestions,
            topics.partitions,
            expect=N_EVENTS,
            timeout_s=ANSWER_TIMEOUT_S,
        )
        elapsed_s = time.monotonic() - started
    finally:
        assert stop(worker) == 0
    assert len(messages) == N_EVENTS, f"{len(messages)} suggestions for {N_EVENTS} events"
    assert elapsed_s < ANSWER_TIMEOUT_S

    schema = fastavro.parse_schema(load_schema("ProductSuggestion"))
    suggestion_codec = codec_for("ProductSuggestion")
    by_event = {e["event_id"]: e for e in events}
    seen: set[str] = set()
    for msg in messages:
        s = suggestion_codec.decode(msg.value())
        assert fastavro.validate(s, schema, raise_errors=True)
        event = by_event[s["event_id"]]
        assert s["event_id"] not in seen
        seen.add(s["event_id"])
        assert msg.key() == event["user_id"].encode() == s["user_id"].encode()
        assert s["session_id"] == event["session_id"]
        assert s["source_topic"] == topics.events
        assert s["event_time"] == event["event_time"]
        assert 0 <= s["produced_time"] - s["event_time"] < ANSWER_TIMEOUT_S * 1000
        ranks = [p["rank"] for p in s["products"]]
        scores = [p["score"] for p in s["products"]]
        assert ranks == list(range(1, 11))
        assert scores == sorted(scores, reverse=True)
        assert len({p["product_id"] for p in s["products"]}) == 10
    assert seen == set(by_event)


def _bad_records(topics, good: dict) -> list[tuple[str, bytes | None, bytes | None, str]]:
    """(topic, key, value, expected error class) for each kind of bad input."""
    events = codec_for("BrowsingEvent")
    purchase = codec_for("PurchaseOutcome").encode(
        {
            "order_id": "o1",
            "user_id": good["user_id"],
            "session_id": None,
            "product_id": "p1",
            "quantity": 1,
            "price": None,
            "event_time": good["event_time"],
        }
    )
    valid = events.encode(good)
    key = good["user_id"].encode()
    return [
        (topics.events, key, b"\x7f" + valid[1:], "UnknownFramingError"),
        (topics.events, key, valid[: len(valid) // 2], "CorruptPayloadError"),
        (topics.events, key, purchase, "SchemaMismatchError"),
        (topics.events, None, valid, "InvalidRecordError"),
        (topics.events, key, events.encode({**good, "event_time": 5}), "InvalidRecordError"),
        (topics.events, key, valid + b"\x00" * 70_000, "OversizedRecordError"),
        (topics.events, key, None, "UnknownFramingError"),
        (topics.events, key, b"\xc3\x01" + bytes(range(8)) + valid[10:], "UnknownSchemaError"),
        (topics.events, key, b"\x00\x00\x00\x00\x07" + valid[10:], "UnknownSchemaError"),
        (
            topics.events,
            key,
            events.encode({**good, "event_time": 4 * 10**12}),
            "InvalidRecordError",
        ),
        (topics.events, b"", valid, "InvalidRecordError"),
        (topics.events, b"someone-else", valid, "InvalidRecordError"),
        (topics.events, key, events.encode({**good, "event_id": ""}), "InvalidRecordError"),
    ]


def test_bad_records_go_to_the_dead_letter_topic_and_the_good_ones_around_them_are_answered(
    kafka_bootstrap, topics, trained_models_dir, simulator_settings, tmp_path
):
    """Each malformed record (13 kinds) lands in <topic>.dlq with its error class, message and
    source offset; every good record before and after it, on the same partitions, is
    answered."""
    ensure_topics(KafkaSettings(kafka_bootstrap), topics, _Log())
    codec = codec_for("BrowsingEvent")
    good = simulated_events(simulator_settings, 200)
    bad = _bad_records(topics, good[0])
    records = []
    every = len(good) // (len(bad) + 1)
    for i, e in enumerate(good):
        records.append((topics.events, e["user_id"].encode(), codec.encode(e)))
        if i % every == every // 2 and bad:
            topic, key, value, _ = bad.pop(0)
            records.append((topic, key, value))
    assert not bad
    worker = start_worker(kafka_bootstrap, topics, trained_models_dir, tmp_path)
    try:
        produce(kafka_bootstrap, records)
        answered = read_all(
            kafka_bootstrap,
            topics.suggestions,
            topics.partitions,
            expect=len(good),
            timeout_s=ANSWER_TIMEOUT_S,
        )
        dead = read_all(
            kafka_bootstrap,
            topics.dead_letter(topics.events),
            topics.partitions,
            expect=13,
            timeout_s=30,
        )
    finally:
        assert stop(worker) == 0
    assert len(answered) == len(good)
    suggestion_codec = codec_for("ProductSuggestion")
    assert {suggestion_codec.decode(m.value())["event_id"] for m in answered} == {
        e["event_id"] for e in good
    }
    expected = sorted(err for *_, err in _bad_records(topics, good[0]))
    headers = [header_map(m.headers()) for m in dead]
    assert sorted(h["dlq.error.class"] for h in headers) == expected
    for h in headers:
        assert h["dlq.source.topic"] == topics.events
        assert int(h["dlq.source.offset"]) >= 0 and int(h["dlq.source.partition"]) >= 0
        assert h["dlq.error.message"]
    # Every input offset is committed: nothing stalls behind a bad record.
    assert committed_offsets(kafka_bootstrap, "g", topics.events, topics.partitions) == end_offsets(
        kafka_bootstrap, topics.events, topics.partitions
    )


def test_sigterm_drains_commits_and_leaves_the_group_within_the_bound(
    kafka_bootstrap, topics, trained_models_dir, simulator_settings, tmp_path
):
    """SIGTERM while events flow: the worker exits 0 within its shutdown bound, every offset it
    committed is answered, and a second worker answers the rest without gaps."""
    ensure_topics(KafkaSettings(kafka_bootstrap), topics, _Log())
    codec = codec_for("BrowsingEvent")
    events = simulated_events(simulator_settings, 2000)
    first = start_worker(kafka_bootstrap, topics, trained_models_dir, tmp_path, "first")
    produce(
        kafka_bootstrap,
        ((topics.events, e["user_id"].encode(), codec.encode(e)) for e in events[:1000]),
    )
    read_all(kafka_bootstrap, topics.suggestions, topics.partitions, expect=1, timeout_s=60)
    first.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    assert first.wait(timeout=40) == 0
    assert time.monotonic() - t0 < 35
    log_lines = [
        json.loads(line)
        for line in (tmp_path / "first.log").read_text().splitlines()
        if line.startswith("{")
    ]
    assert any(line["event"] == "worker_stopped" for line in log_lines)
    produce(
        kafka_bootstrap,
        ((topics.events, e["user_id"].encode(), codec.encode(e)) for e in events[1000:]),
    )
    second = start_worker(kafka_bootstrap, topics, trained_models_dir, tmp_path, "second")
    try:
        messages = read_all(
            kafka_bootstrap,
            topics.suggestions,
            topics.partitions,
            expect=len(events),
            timeout_s=ANSWER_TIMEOUT_S,
        )
    finally:
        assert stop(second) == 0
    suggestion_codec = codec_for("ProductSuggestion")
    ids = [suggestion_codec.decode(m.value())["event_id"] for m in messages]
    assert set(ids) == {e["event_id"] for e in events}
    # A graceful stop commits what it answered: no event is answered twice.
    assert len(ids) == len(events)
