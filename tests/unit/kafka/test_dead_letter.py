"""Dead-letter records (headers saying why and where from) and the bounds of the clients'
buffers. Settings (librdkafka pass-through, @file secrets, masking, validation) are tested in
tests/unit/test_config.py."""

from __future__ import annotations

import structlog

from worker.config import KafkaSettings, TopicSettings
from worker.core.errors import CorruptPayloadError, InvalidRecordError
from worker.kafka.dead_letter import MAX_MESSAGE_CHARS, dead_letter
from worker.testing import header_map


def make_dead_letter(**overrides):
    args = dict(
        error=CorruptPayloadError("3 trailing bytes after the Avro body"),
        topic="browsing-events",
        partition=4,
        offset=1234,
        timestamp_ms=1_700_000_000_000,
        key=b"user-1",
        value=b"\xc3\x01" + b"\x00" * 20,
        original_headers=[("traceparent", b"00-abc-def-01")],
        max_value_bytes=1024,
    )
    args.update(overrides)
    return dead_letter(**args)


# -- dead letters -----------------------------------------------------------------------------


def test_dead_letter_headers_say_why_and_where_from() -> None:
    """Class, message, source topic/partition/offset/timestamp and original size; key and value
    are the original bytes; the original headers follow ours."""
    record = make_dead_letter()
    headers = header_map(record.headers)
    assert headers["dlq.error.class"] == "CorruptPayloadError"
    assert headers["dlq.error.message"] == "3 trailing bytes after the Avro body"
    assert headers["dlq.source.topic"] == "browsing-events"
    assert headers["dlq.source.partition"] == "4"
    assert headers["dlq.source.offset"] == "1234"
    assert headers["dlq.source.timestamp"] == "1700000000000"
    assert headers["dlq.original.bytes"] == "22"
    assert "dlq.truncated" not in headers
    assert record.key == b"user-1"
    assert record.value == b"\xc3\x01" + b"\x00" * 20
    assert record.headers[-1] == ("traceparent", b"00-abc-def-01")
    assert [name for name, _ in record.headers[:7]] == [
        "dlq.error.class",
        "dlq.error.message",
        "dlq.source.topic",
        "dlq.source.partition",
        "dlq.source.offset",
        "dlq.source.timestamp",
        "dlq.original.bytes",
    ]
    assert all(isinstance(v, bytes) for _, v in record.headers)


def test_oversized_value_is_truncated_and_flagged() -> None:
    """A value over the dead-letter limit is cut to the limit; the original size and a
    truncation flag are kept in the headers."""
    record = make_dead_letter(value=b"x" * 5000, max_value_bytes=1000)
    headers = header_map(record.headers)
    assert record.value == b"x" * 1000
    assert headers["dlq.truncated"] == "true"
    assert headers["dlq.original.bytes"] == "5000"


def test_value_exactly_at_the_limit_is_kept_whole() -> None:
    """At the limit: no truncation."""
    record = make_dead_letter(value=b"x" * 1000, max_value_bytes=1000)
    assert record.value == b"x" * 1000
    assert "dlq.truncated" not in header_map(record.headers)


def test_long_error_message_is_cut() -> None:
    """The error message header is bounded (MAX_MESSAGE_CHARS characters)."""
    record = make_dead_letter(error=InvalidRecordError("é" * (MAX_MESSAGE_CHARS * 3)))
    message = header_map(record.headers)["dlq.error.message"]
    assert message == "é" * MAX_MESSAGE_CHARS
    assert header_map(record.headers)["dlq.error.class"] == "InvalidRecordError"


def test_null_value_key_and_timestamp_are_recorded_as_such() -> None:
    """A tombstone (null value) without key or timestamp: size -1, timestamp -1, no crash."""
    record = make_dead_letter(value=None, key=None, timestamp_ms=None, original_headers=None)
    headers = header_map(record.headers)
    assert record.value is None and record.key is None
    assert headers["dlq.original.bytes"] == "-1"
    assert headers["dlq.source.timestamp"] == "-1"
    assert len(record.headers) == 7


def test_header_map_last_value_wins_and_handles_none() -> None:
    """header_map decodes to str, the last duplicate wins, a None value reads as ''."""
    assert header_map([("a", b"1"), ("a", b"2"), ("b", None)]) == {"a": "2", "b": ""}
    assert header_map(None) == {}


def test_dead_letter_topic_name() -> None:
    """<topic>.dlq."""
    assert TopicSettings().dead_letter("purchases") == "purchases.dlq"


# -- client buffers ---------------------------------------------------------------------------


def test_client_buffers_are_bounded_by_the_project_not_librdkafka_defaults(monkeypatch) -> None:
    """The consumer's fetch-ahead queue and the producer's output queue have explicit bounds
    (librdkafka's defaults are 64 MiB + one 50 MiB fetch, and 1 GiB); role overrides (the
    worker's --fetch-buffer-mb / --produce-buffer-mb) and pass-through properties replace them."""
    from worker.kafka import clients

    seen: list[dict] = []
    monkeypatch.setattr(clients, "Consumer", lambda config: seen.append(config))
    monkeypatch.setattr(clients, "Producer", lambda config: seen.append(config))
    log = structlog.get_logger()
    clients.make_consumer(KafkaSettings(), "g", log)
    clients.make_producer(KafkaSettings(), log)
    consumer, producer = seen
    assert consumer["queued.max.messages.kbytes"] == 16 * 1024
    assert consumer["fetch.max.bytes"] == 4 * 1024 * 1024
    assert producer["queue.buffering.max.kbytes"] == 32 * 1024
    seen.clear()
    clients.make_consumer(KafkaSettings(), "g", log, **{"queued.max.messages.kbytes": 4096})
    clients.make_producer(KafkaSettings("b:1", {"queue.buffering.max.kbytes": "2048"}), log)
    assert seen[0]["queued.max.messages.kbytes"] == 4096
    assert seen[1]["queue.buffering.max.kbytes"] == "2048"
