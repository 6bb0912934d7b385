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
    metric,
    produce,
    read_all,
    simulated_events,
    spawn,
    stop,
    wait_metric,
)
from worker.config import KafkaSettings
from worker.kafka.admin import ensure_topics
from worker.model.artifact import load_tables
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


def group_of(topics) -> str:
    """The test's consumer group, hence its own session changelog (``<group>.sessions-changelog``):
    a group shared by the tests would restore one test's sessions, recorded at that test's input
    offsets, into the next test's worker."""
    return f"{topics.events}-workers"


def start_worker(
    bootstrap,
    topics,
    models_dir,
    tmp_path: Path,
    name: str = "worker",
    group: str | None = None,
    metrics_port: int = 0,
):
    return spawn(
        [
            "run",
            *cli_args(bootstrap, topics),
            "--models-dir",
            str(models_dir),
            "--group-id",
            group or group_of(topics),
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
    assert committed_offsets(
        kafka_bootstrap, group_of(topics), topics.events, topics.partitions
    ) == end_offsets(kafka_bootstrap, topics.events, topics.partitions)


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


COLD_EVENTS = 3000
NEW_PRODUCTS = 150


def test_every_valid_event_is_answered_also_on_products_and_categories_the_model_does_not_know(
    kafka_bootstrap, topics, trained_models_dir, simulator_settings, tmp_path
):
    """A stream where a third of the events are on products the model does not know (most of
    them of categories it does not know either; half on 5 hot new products), with malformed
    records among them: every valid event gets exactly one suggestion, schema-valid, naming only
    products of the model or of the stream; new products reach the suggestions of events on
    other products; the dead-letter topic holds exactly the malformed records; every offset is
    committed; the cold-start metrics count what was sent."""
    ensure_topics(KafkaSettings(kafka_bootstrap), topics, _Log())
    codec = codec_for("BrowsingEvent")
    tables = load_tables(trained_models_dir)
    model_products = set(tables.product_ids.tolist())
    model_categories = tables.category_ids.tolist()
    valid = simulated_events(simulator_settings, COLD_EVENTS)
    new_products: set[str] = set()
    for i, event in enumerate(valid):
        if i % 3 == 0:
            j = i // 3  # every other one on 5 hot new products, the others on 150
            k = j // 2 % 5 if j % 2 else (j * 7919) % NEW_PRODUCTS
            category = model_categories[k % len(model_categories)] if k % 3 == 0 else f"new-{k % 9}"
            event.update(product_id=f"new-product-{k}", category_id=category, price=1.0 + k)
            new_products.add(event["product_id"])
    assert not new_products & model_products
    cold = sum(e["product_id"] in new_products for e in valid)
    good = valid[0]
    encoded = codec.encode(good)
    key = good["user_id"].encode()
    malformed = [
        (key, b"not avro at all"),
        (key, encoded[: len(encoded) // 2]),
        (None, encoded),
        (b"someone-else", encoded),
        (key, codec.encode({**good, "event_time": 5})),
        (key, codec.encode({**good, "product_id": ""})),
        (key, None),
    ]
    records = []
    pending = list(malformed)
    every = len(valid) // len(malformed)
    for i, event in enumerate(valid):
        records.append((topics.events, event["user_id"].encode(), codec.encode(event)))
        if pending and i % every == every // 2:
            records.append((topics.events, *pending.pop(0)))
    assert not pending
    assert len(records) == len(valid) + len(malformed)
    port = free_port()
    worker = start_worker(kafka_bootstrap, topics, trained_models_dir, tmp_path, metrics_port=port)
    try:
        assert wait_ready(port), "the worker never reported ready (/readyz)"
        produce(kafka_bootstrap, records)
        answered = read_all(
            kafka_bootstrap,
            topics.suggestions,
            topics.partitions,
            expect=len(valid),
            timeout_s=ANSWER_TIMEOUT_S,
        )
        dead = read_all(
            kafka_bootstrap,
            topics.dead_letter(topics.events),
            topics.partitions,
            expect=len(malformed),
            timeout_s=30,
        )
        metrics = wait_metric(port, "worker_suggestions_produced_total", len(valid), 30)
    finally:
        assert stop(worker) == 0

    schema = fastavro.parse_schema(load_schema("ProductSuggestion"))
    suggestion_codec = codec_for("ProductSuggestion")
    by_event = {e["event_id"]: e for e in valid}
    answers: dict[str, list[str]] = {}
    for msg in answered:
        s = suggestion_codec.decode(msg.value())
        assert fastavro.validate(s, schema, raise_errors=True)
        assert s["event_id"] not in answers, "an event answered twice"
        assert msg.key() == by_event[s["event_id"]]["user_id"].encode()
        answers[s["event_id"]] = [p["product_id"] for p in s["products"]]
    assert set(answers) == set(by_event) and len(answered) == len(valid)
    for products in answers.values():
        assert len(set(products)) == len(products) == 10
        assert set(products) <= model_products | new_products
    # New products reach the suggestions of events on other products (sessions, trending). Of
    # users who never viewed one, only through trending: counted, not required (the ranker
    # rarely puts a product without views in the training window into the top 10).
    shown_new = {
        eid
        for eid, products in answers.items()
        if set(products) & new_products - {by_event[eid]["product_id"]}
    }
    viewed_new: set[str] = set()
    by_trending = 0
    for event in valid:  # in event time order
        if event["product_id"] in new_products:
            viewed_new.add(event["user_id"])
        elif event["user_id"] not in viewed_new:
            by_trending += bool(set(answers[event["event_id"]]) & new_products)
    assert shown_new

    assert sorted(m.value() or b"" for m in dead) == sorted(v or b"" for _, v in malformed)
    assert sorted(m.key() or b"" for m in dead) == sorted(k or b"" for k, _ in malformed)
    assert committed_offsets(
        kafka_bootstrap, group_of(topics), topics.events, topics.partitions
    ) == end_offsets(kafka_bootstrap, topics.events, topics.partitions)
    assert metric(metrics, "worker_cold_start_events_total") == cold
    assert metric(metrics, "worker_new_products_total") == len(new_products)
    assert metric(metrics, "worker_live_catalogue_products") == len(new_products)
    assert metric(metrics, "worker_dead_letters_total") == len(malformed)
    assert metric(metrics, "worker_suggestions_produced_total") == len(valid)
    print(
        f"events {len(records)}: valid {len(valid)}, cold starts {cold} "
        f"({cold / len(valid):.1%}; {len(new_products)} new products), suggestions "
        f"{len(answered)} ({len(shown_new)} showing a new product beyond the event's own, "
        f"{by_trending} of them to users who never viewed one), "
        f"dead letters {len(dead)} (malformed sent {len(malformed)})"
    )
