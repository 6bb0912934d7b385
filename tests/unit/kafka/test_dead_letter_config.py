"""Dead-letter records (headers saying why and where from) and settings (librdkafka
pass-through, @file secrets, masking)."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from worker.config import (
    KafkaSettings,
    TopicSettings,
    WorkerSettings,
    is_secret,
    kafka_properties,
    mask,
)
from worker.core.errors import ConfigError, CorruptPayloadError, InvalidRecordError
from worker.kafka.dead_letter import MAX_MESSAGE_CHARS, dead_letter, header_map

PASSWORD = "hunter2-Sup3rS3cret"


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


# -- kafka_properties -------------------------------------------------------------------------


def test_environment_variables_become_dotted_librdkafka_properties() -> None:
    """WORKER_KAFKA_SASL_USERNAME -> sasl.username; other variables and empty values ignored."""
    environ = {
        "WORKER_KAFKA_SASL_USERNAME": "alice",
        "WORKER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "WORKER_KAFKA_EMPTY": "",
        "WORKER_TOP_K": "5",
        "KAFKA_SASL_PASSWORD": "not ours",
    }
    assert kafka_properties(None, environ) == {
        "sasl.username": "alice",
        "security.protocol": "SASL_SSL",
    }


def test_cli_pairs_pass_through_and_override_the_environment() -> None:
    """-X key=value pairs are taken as is (values may contain '='), after the environment."""
    props = kafka_properties(
        [
            "sasl.mechanism=SCRAM-SHA-512",
            "sasl.username=bob",
            "sasl.oauthbearer.config=scope=a b=c",
        ],
        {"WORKER_KAFKA_SASL_USERNAME": "alice"},
    )
    assert props == {
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "bob",
        "sasl.oauthbearer.config": "scope=a b=c",
    }


def test_at_file_values_are_read_from_the_file(tmp_path: Path) -> None:
    """A value '@/path' is the file's content, stripped (secrets mounted as files), from the
    environment and from -X alike."""
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n", encoding="utf-8")
    props = kafka_properties(
        [f"ssl.key.password=@{secret}"], {"WORKER_KAFKA_SASL_PASSWORD": f"@{secret}"}
    )
    assert props == {"sasl.password": PASSWORD, "ssl.key.password": PASSWORD}


def test_unreadable_at_file_is_config_error(tmp_path: Path) -> None:
    """A missing @file is a ConfigError naming the key, never a raw OSError."""
    with pytest.raises(ConfigError, match="sasl.password"):
        kafka_properties([f"sasl.password=@{tmp_path / 'missing'}"], {})
    with pytest.raises(ConfigError):
        kafka_properties(None, {"WORKER_KAFKA_SASL_PASSWORD": f"@{tmp_path / 'missing'}"})


@pytest.mark.parametrize("pair", ["sasl.username", "=value", ""])
def test_malformed_cli_pair_is_config_error(pair: str) -> None:
    """-X without 'key=' is a ConfigError."""
    with pytest.raises(ConfigError):
        kafka_properties([pair], {})


def test_malformed_cli_pair_error_never_echoes_a_secret_value() -> None:
    """The ConfigError for a malformed pair may name the key, never the secret after it."""
    with pytest.raises(ConfigError) as raised:
        kafka_properties([f"sasl.password:{PASSWORD}"], {})
    assert PASSWORD not in str(raised.value)


def test_kafka_properties_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit mapping, the process environment is used."""
    monkeypatch.setenv("WORKER_KAFKA_CLIENT_ID", "recommender-7")
    assert kafka_properties(None)["client.id"] == "recommender-7"


# -- masking ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "SASL.PASSWORD",
        "sasl.oauthbearer.client.secret",
        "ssl.key.pem",
        "sasl.jaas.config",
        "token",
    ],
)
def test_mask_hides_secret_values(key: str) -> None:
    """Secret-looking keys have their value replaced by ***; the key stays visible."""
    assert is_secret(key)
    assert mask({key: PASSWORD, "sasl.username": "alice"}) == {key: "***", "sasl.username": "alice"}


def test_mask_keeps_ordinary_values_and_copies() -> None:
    """Non-secret values are kept; the input mapping is not modified."""
    props = {"security.protocol": "SSL", "sasl.password": PASSWORD}
    masked = mask(props)
    assert masked["security.protocol"] == "SSL"
    assert props["sasl.password"] == PASSWORD


def test_repr_of_settings_never_contains_a_password() -> None:
    """repr/str of KafkaSettings, and of the WorkerSettings holding it, mask secrets, while
    client_config still hands the real value to the client."""
    kafka = KafkaSettings(
        bootstrap_servers="broker:9093",
        properties={
            "sasl.username": "alice",
            "sasl.password": PASSWORD,
            "ssl.key.password": PASSWORD,
        },
    )
    worker = WorkerSettings(kafka=kafka, topics=TopicSettings())
    for text in (repr(kafka), str(kafka), repr(worker), str(worker)):
        assert PASSWORD not in text
        assert "alice" in text and "broker:9093" in text
    assert kafka.client_config()["sasl.password"] == PASSWORD


def test_client_config_pass_through_wins_over_role_defaults() -> None:
    """bootstrap first, then role overrides, then pass-through properties."""
    kafka = KafkaSettings("b:1", {"linger.ms": "50"})
    config = kafka.client_config(**{"linger.ms": 5, "enable.idempotence": True})
    assert config == {"bootstrap.servers": "b:1", "linger.ms": "50", "enable.idempotence": True}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"top_k": 0},
        {"top_k": 60, "n_candidates": 50},
        {"max_batch_size": 0},
        {"max_batch_wait_ms": -1},
        {"fetch_buffer_mb": 0},
        {"produce_buffer_mb": 0},
    ],
)
def test_invalid_worker_settings_are_config_errors(kwargs: dict) -> None:
    """Settings that cannot work fail fast with ConfigError."""
    with pytest.raises(ConfigError):
        WorkerSettings(kafka=KafkaSettings(), topics=TopicSettings(), **kwargs)


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
