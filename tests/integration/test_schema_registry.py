"""The schema registry path against a real Confluent-compatible registry: Apicurio Registry 3.3.3
(its ``/apis/ccompat/v7`` API), started without Docker by ``devtools.localregistry``.

What is checked: each schema of ``schemas/`` registers and its Confluent-framed records round
trip through the codec and a fresh client that knows only the id; the codec's Confluent framing
and confluent-kafka's own ``AvroSerializer`` / ``AvroDeserializer`` (an independent
implementation) read each other's records; an unknown id is a data error and a registry that is
down (or a URL without the API path) an infrastructure error; and ``worker run``, configured with
the registry, answers Confluent-framed events over the real broker and dead-letters one whose id
the registry does not know.

A registry that cannot start fails these tests (the message says why); it never skips them.
The first start fetches the registry from Maven Central (158 MB, about 30 s) into
``~/.cache/worker-registry``; later starts take 15-35 s.
"""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import struct
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient, topic_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from hypothesis import HealthCheck, given, settings

from devtools.localkafka import free_ports
from devtools.localregistry import (
    CCOMPAT_PATH,
    LocalRegistryConfig,
    LocalRegistryError,
    start,
    stop,
)
from tests.helpers import cli_args, produce, read_all, simulated_events, spawn
from tests.helpers import stop as stop_process
from tests.integration.test_end_to_end import group_of, wait_ready
from tests.unit.wire.test_codec import RECORDS
from worker.config import KafkaSettings
from worker.core.errors import SchemaRegistryError, UnknownSchemaError
from worker.kafka.admin import ensure_topics
from worker.kafka.schema_registry import ConfluentSchemaRegistry
from worker.testing import header_map
from worker.wire.codec import SCHEMA_FILES, ParsedSchema, codec_for, load_schema

NAMES = list(SCHEMA_FILES)
UNKNOWN_ID = 987_654


@pytest.fixture(scope="module")
def registry_url() -> Iterator[str]:
    """A real Apicurio Registry on a free port with its own state dir; stopped afterwards."""
    home = Path(tempfile.mkdtemp(prefix="worker-test-registry-"))
    cfg = LocalRegistryConfig(home=home, port=free_ports(1)[0])
    try:
        url = start(cfg)
    except LocalRegistryError as exc:
        shutil.rmtree(home, ignore_errors=True)
        pytest.fail(f"the local schema registry (devtools.localregistry) did not start: {exc}")
    try:
        yield url
    finally:
        stop(cfg)
        shutil.rmtree(home, ignore_errors=True)


def _subject(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}-value"


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
#: 2100-01-01 in epoch ms: timestamps below it are datetimes that fastavro can build.
_YEAR_2100_MS = 4_102_444_800_000


def _as_millis(value: Any) -> Any:
    """fastavro applies logical types (timestamp-millis -> datetime); the codec keeps epoch ms."""
    if isinstance(value, dt.datetime):
        return (value - _EPOCH) // dt.timedelta(milliseconds=1)
    if isinstance(value, dict):
        return {k: _as_millis(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_millis(v) for v in value]
    return value


@pytest.mark.parametrize("name", NAMES)
def test_every_schema_registers_and_round_trips_through_a_client_that_knows_only_the_id(
    registry_url: str, name: str
) -> None:
    """The writer registers the schema under <topic>-value and frames records with its id; a
    fresh client fetches the same schema (same canonical form) by that id, and a fresh codec
    reads the records."""
    topic = _subject(name).removesuffix("-value")
    writer = codec_for(name, registry=ConfluentSchemaRegistry(registry_url), topic=topic)
    fresh = ConfluentSchemaRegistry(registry_url)
    reader = codec_for(name, registry=fresh, topic=topic)

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(record=RECORDS[name])
    def check(record: dict[str, Any]) -> None:
        payload = writer.encode(record)
        assert payload[:1] == b"\x00"
        assert reader.decode(payload) == record

    check()
    schema_id = struct.unpack(">I", writer.header()[1:5])[0]
    # Apicurio stores the schema rewritten (it drops a nested type's namespace equal to the
    # enclosing one): the same schema, so the same Parsing Canonical Form and fingerprint.
    fetched = ParsedSchema.from_json(fresh.schema_by_id(schema_id))
    assert fetched.canonical == ParsedSchema.from_json(load_schema(name)).canonical
    registered = SchemaRegistryClient({"url": registry_url}).get_latest_version(f"{topic}-value")
    assert registered.schema_id == schema_id


@pytest.mark.parametrize("name", NAMES)
def test_codec_and_confluent_kafkas_own_avro_serdes_read_each_others_records(
    registry_url: str, name: str
) -> None:
    """Records written by confluent-kafka's AvroSerializer decode with the codec, and records the
    codec writes decode with AvroDeserializer: the framing and the ids agree with an independent
    implementation."""
    topic = _subject(name).removesuffix("-value")
    # A timeout, so that a registry that never answers fails the test instead of hanging it.
    client = SchemaRegistryClient({"url": registry_url, "timeout": 20})
    ctx = SerializationContext(topic, MessageField.VALUE)
    # Confluent's TopicNameStrategy (`<topic>-value`), what the codec registers under, named
    # explicitly: confluent-kafka 2.16's default first asks the registry's associations API
    # (Confluent-only; Apicurio answers 404), and once hung a CI run on a pooled connection.
    serializer = AvroSerializer(
        client,
        schema_str=_schema_text(name),
        conf={"subject.name.strategy": topic_subject_name_strategy},
    )
    deserializer = AvroDeserializer(client)
    codec = codec_for(name, registry=ConfluentSchemaRegistry(registry_url), topic=topic)

    timestamps = [
        f["name"]
        for f in load_schema(name)["fields"]
        if isinstance(f["type"], dict) and f["type"].get("logicalType") == "timestamp-millis"
    ]

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(generated=RECORDS[name])
    def check(generated: dict[str, Any]) -> None:
        # AvroDeserializer turns timestamp-millis into datetimes: keep them within 1970-2100.
        record = {**generated, **{f: generated[f] % _YEAR_2100_MS for f in timestamps}}
        theirs = serializer(record, ctx)
        assert theirs is not None and theirs[:1] == b"\x00"
        assert codec.decode(theirs) == record
        ours = codec.encode(record)
        assert _as_millis(deserializer(ours, ctx)) == record

    check()


def _schema_text(name: str) -> str:
    return (Path(__file__).parents[2] / "schemas" / SCHEMA_FILES[name]).read_text()


def test_an_id_the_registry_does_not_know_is_an_unknown_schema_error(registry_url: str) -> None:
    """A data error (the record is dead-lettered), from the client and through the codec."""
    registry = ConfluentSchemaRegistry(registry_url)
    with pytest.raises(UnknownSchemaError, match=str(UNKNOWN_ID)):
        registry.schema_by_id(UNKNOWN_ID)
    payload = b"\x00" + struct.pack(">I", UNKNOWN_ID) + b"\x02"
    with pytest.raises(UnknownSchemaError):
        codec_for("BrowsingEvent", registry=registry).decode(payload)


def test_a_registry_that_is_down_is_a_schema_registry_error() -> None:
    """Nobody listening: SchemaRegistryError (infrastructure) for both calls, after the client's
    bounded retries, never UnknownSchemaError."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
        url = f"http://127.0.0.1:{sock.getsockname()[1]}{CCOMPAT_PATH}"
        registry = ConfluentSchemaRegistry(url, timeout_s=2, max_retries=1, retries_wait_ms=50)
        with pytest.raises(SchemaRegistryError) as caught:
            registry.schema_by_id(1)
        assert not isinstance(caught.value, UnknownSchemaError)
        with pytest.raises(SchemaRegistryError):
            registry.register("x-value", load_schema("BrowsingEvent"))


def test_a_url_without_the_api_path_is_a_schema_registry_error(registry_url: str) -> None:
    """The registry's root answers 404 without Confluent's 40403: a configuration error that must
    stop the worker, not an unknown id that would dead-letter every record."""
    root = registry_url.removesuffix(CCOMPAT_PATH)
    registry = ConfluentSchemaRegistry(root, max_retries=0)
    with pytest.raises(SchemaRegistryError) as caught:
        registry.schema_by_id(1)
    assert not isinstance(caught.value, UnknownSchemaError)


N_EVENTS = 300


@pytest.mark.kafka
def test_worker_with_the_registry_answers_confluent_framed_events_end_to_end(
    registry_url, kafka_bootstrap, topics, trained_models_dir, simulator_settings, tmp_path
) -> None:
    """`worker run --schema-registry-url`: Confluent-framed events in, one Confluent-framed
    suggestion per event out (readable by AvroDeserializer), and an event whose id the registry
    does not know in the dead-letter topic as UnknownSchemaError."""
    ensure_topics(KafkaSettings(kafka_bootstrap), topics, _Log())
    event_codec = codec_for(
        "BrowsingEvent", registry=ConfluentSchemaRegistry(registry_url), topic=topics.events
    )
    events = simulated_events(simulator_settings, N_EVENTS)
    unknown = b"\x00" + struct.pack(">I", UNKNOWN_ID) + event_codec.encode(events[0])[5:]
    records = [(topics.events, e["user_id"].encode(), event_codec.encode(e)) for e in events]
    records.insert(N_EVENTS // 2, (topics.events, b"u-unknown", unknown))
    port = free_ports(1)[0]
    worker = spawn(
        [
            "run",
            *cli_args(kafka_bootstrap, topics),
            "--schema-registry-url",
            registry_url,
            "--models-dir",
            str(trained_models_dir),
            "--group-id",
            group_of(topics),
            "--metrics-port",
            str(port),
        ],
        tmp_path / "worker.log",
    )
    try:
        assert wait_ready(port), "the worker never reported ready (/readyz)"
        produce(kafka_bootstrap, records)
        answered = read_all(
            kafka_bootstrap, topics.suggestions, topics.partitions, expect=N_EVENTS, timeout_s=90
        )
        dead = read_all(
            kafka_bootstrap,
            topics.dead_letter(topics.events),
            topics.partitions,
            expect=1,
            timeout_s=30,
        )
    finally:
        assert stop_process(worker) == 0
    assert len(answered) == N_EVENTS
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry_url}))
    ctx = SerializationContext(topics.suggestions, MessageField.VALUE)
    suggestions = [m.value() for m in answered]
    assert all(value[:1] == b"\x00" for value in suggestions)
    assert {deserializer(v, ctx)["event_id"] for v in suggestions} == {
        e["event_id"] for e in events
    }
    assert [header_map(m.headers())["dlq.error.class"] for m in dead] == ["UnknownSchemaError"]
    assert dead[0].value() == unknown


class _Log:
    def info(self, *a: Any, **k: Any) -> None:
        pass
