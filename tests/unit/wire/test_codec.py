"""The wire format (design.md, "Wire format"): both framings, byte-level headers, schema
evolution and typed errors for malformed input. The schema registry client is tested against a
real registry in tests/integration/test_schema_registry.py.

Pure: no broker, no HTTP.

Hypothesis example counts (``max_examples`` set explicitly below):

* round trips: 100 records per record type and framing (4 types x 2 framings = 800 records);
* fuzzing ``decode``: 2000 arbitrary byte strings (each tried against 8 codecs) and 2000 mutated
  valid encodings (bit flips, truncations, extensions; each tried against 2 codecs).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import struct
from collections.abc import Iterator, Mapping
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.core.accuracy import LIVE_FIELDS, VersionReport
from worker.core.errors import (
    ConfigError,
    CorruptPayloadError,
    DataError,
    DecodeError,
    OversizedRecordError,
    SchemaMismatchError,
    UnknownFramingError,
    UnknownSchemaError,
)
from worker.testing import InMemorySchemaRegistry
from worker.wire.codec import (
    SCHEMA_FILES,
    SINGLE_OBJECT_MARKER,
    AvroCodec,
    ParsedSchema,
    codec_for,
    load_schema,
    schema_history,
)

NAMES = list(SCHEMA_FILES)

# -- CRC-64-AVRO and parsing canonical form, written from the Avro specification --------------

CRC64_EMPTY = 0xC15D213AA4D7A795


def _crc64_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (CRC64_EMPTY & -(fp & 1))
        table.append(fp)
    return table


_CRC64_TABLE = _crc64_table()


def crc64_avro(data: bytes) -> int:
    """The Rabin fingerprint of the Avro spec ("Schema Fingerprints")."""
    fp = CRC64_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _CRC64_TABLE[(fp ^ byte) & 0xFF]
    return fp


_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def canonical_form(schema: Any, namespace: str = "", defined: set[str] | None = None) -> str:
    """Parsing Canonical Form (Avro spec): [PRIMITIVES] [FULLNAMES] [STRIP] [ORDER] [STRINGS]
    [WHITESPACE]; a named type is written in full once, then by its full name."""
    defined = set() if defined is None else defined

    def dump(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return dump(schema)
        return dump(schema if "." in schema or not namespace else f"{namespace}.{schema}")
    if isinstance(schema, list):
        return "[" + ",".join(canonical_form(s, namespace, defined) for s in schema) + "]"
    kind = schema["type"]
    if kind in _PRIMITIVES:  # also drops logicalType
        return dump(kind)
    if kind in ("record", "enum", "fixed"):
        name = schema["name"]
        if "." in name:
            full, namespace = name, name.rsplit(".", 1)[0]
        else:
            namespace = schema.get("namespace", namespace)
            full = f"{namespace}.{name}" if namespace else name
        if full in defined:
            return dump(full)
        defined.add(full)
        parts = [f'"name":{dump(full)}', f'"type":"{kind}"']
        if kind == "record":
            field_forms = [
                (dump(f["name"]), canonical_form(f["type"], namespace, defined))
                for f in schema["fields"]
            ]
            fields = ",".join(f'{{"name":{n},"type":{t}}}' for n, t in field_forms)
            parts.append(f'"fields":[{fields}]')
        elif kind == "enum":
            parts.append(f'"symbols":{dump(schema["symbols"])}')
        else:
            parts.append(f'"size":{int(schema["size"])}')
        return "{" + ",".join(parts) + "}"
    if kind == "array":
        return f'{{"type":"array","items":{canonical_form(schema["items"], namespace, defined)}}}'
    if kind == "map":
        return f'{{"type":"map","values":{canonical_form(schema["values"], namespace, defined)}}}'
    raise AssertionError(f"schema construct not covered by this test helper: {kind}")


def test_crc64_avro_helper_matches_the_specification_test_vector() -> None:
    """The test's own CRC-64-AVRO gives the Avro project's published fingerprint of "null"."""
    assert crc64_avro(b'"null"') == 7195948357588979594  # avro share/test/data/schema-tests.txt


# -- record strategies ------------------------------------------------------------------------

ids = st.text(min_size=1, max_size=20)
longs = st.integers(min_value=-(2**63), max_value=2**63 - 1)
ints = st.integers(min_value=-(2**31), max_value=2**31 - 1)
doubles = st.floats(allow_nan=False)  # NaN != NaN would defeat the dict comparison
opt = st.none().__or__
VERSION_ACCURACY = st.fixed_dictionaries(
    {
        "model_version": ids,
        **{
            f.name: longs if f.type == "int" else opt(doubles)  # annotations are strings
            for f in dataclasses.fields(VersionReport)
            if f.name != "model_version"
        },
    }
)
VERSION_COMPARISON = st.fixed_dictionaries(
    {
        "champion": ids,
        "challenger": ids,
        **{
            name: longs
            for name in ("champion_attributed", "champion_hits")
            + ("challenger_attributed", "challenger_hits")
        },
        **{name: doubles for name in ("difference", "ci95_low", "ci95_high", "p_value")},
        "significant": st.booleans(),
        "statement": st.text(max_size=40),
        "windows": longs,
    }
)

RECORDS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "BrowsingEvent": st.fixed_dictionaries(
        {
            "event_id": ids,
            "user_id": ids,
            "session_id": ids,
            "event_type": st.sampled_from(["VIEW", "ADD_TO_CART", "REMOVE_FROM_CART"]),
            "product_id": ids,
            "category_id": opt(st.text(max_size=10)),
            "price": opt(doubles),
            "event_time": longs,
        }
    ),
    "ProductSuggestion": st.fixed_dictionaries(
        {
            "suggestion_id": ids,
            "user_id": ids,
            "session_id": ids,
            "event_id": ids,
            "source_topic": ids,
            "source_partition": ints,
            "source_offset": longs,
            "model_version": ids,
            "products": st.lists(
                st.fixed_dictionaries({"product_id": ids, "rank": ints, "score": doubles}),
                max_size=12,
            ),
            "event_time": longs,
            "produced_time": longs,
        }
    ),
    "PurchaseOutcome": st.fixed_dictionaries(
        {
            "order_id": ids,
            "user_id": ids,
            "session_id": opt(ids),
            "product_id": ids,
            "quantity": ints,
            "price": opt(doubles),
            "event_time": longs,
        }
    ),
    "AccuracyReport": st.fixed_dictionaries(
        {
            "window_start": longs,
            "window_end": longs,
            "k": ints,
            "attribution_window_ms": longs,
            "model_versions": st.lists(ids, max_size=4),
            "purchases": longs,
            "attributed": longs,
            "hits": longs,
            "hit_rate_at_k": opt(doubles),
            "precision_at_k": opt(doubles),
            "mrr_at_k": opt(doubles),
            "baseline_hits": longs,
            "baseline_hit_rate_at_k": opt(doubles),
            "cumulative_attributed": longs,
            "cumulative_hit_rate_at_k": opt(doubles),
            "cumulative_baseline_hit_rate_at_k": opt(doubles),
            "emitted_time": longs,
            # The live figures (fields with defaults, added later).
            **{
                name: opt(doubles) if name.endswith(("_at_k", "coverage")) else longs
                for name in LIVE_FIELDS
            },
            # The per-version figures (fields with defaults, added later still).
            "versions": st.lists(VERSION_ACCURACY, max_size=3),
            "version_comparison": opt(VERSION_COMPARISON),
        }
    ),
}

EVENT = {
    "event_id": "e-1",
    "user_id": "u-1",
    "session_id": "s-1",
    "event_type": "ADD_TO_CART",
    "product_id": "p-1",
    "category_id": "c-1",
    "price": 12.5,
    "event_time": 1_700_000_000_000,
}
PURCHASE = {
    "order_id": "o-1",
    "user_id": "u-1",
    "session_id": None,
    "product_id": "p-1",
    "quantity": 2,
    "price": 3.0,
    "event_time": 1_700_000_000_000,
}


class FixedIdRegistry:
    """A registry stub that hands out one multi-byte id, to see its byte order on the wire."""

    SCHEMA_ID = 0x0A0B0C0D

    def __init__(self) -> None:
        self.schema: Mapping[str, Any] | None = None

    def register(self, subject: str, schema_json: Mapping[str, Any]) -> int:
        self.schema = schema_json
        return self.SCHEMA_ID

    def schema_by_id(self, schema_id: int) -> Mapping[str, Any]:
        if schema_id != self.SCHEMA_ID or self.schema is None:
            raise UnknownSchemaError(f"schema id {schema_id} is not registered")
        return self.schema


# -- round trips ------------------------------------------------------------------------------


def _round_trip_test(name: str, with_registry: bool):
    codec = codec_for(name, registry=InMemorySchemaRegistry() if with_registry else None)

    @settings(max_examples=100, deadline=None)
    @given(record=RECORDS[name])
    def check(record: dict[str, Any]) -> None:
        assert codec.decode(codec.encode(record)) == record

    return check


@pytest.mark.parametrize("framing", ["single-object", "confluent"])
@pytest.mark.parametrize("name", NAMES)
def test_every_record_type_round_trips_in_both_framings(name: str, framing: str) -> None:
    """decode(encode(r)) == r for generated records of each type, with either framing."""
    _round_trip_test(name, with_registry=framing == "confluent")()


# -- byte-level contract ----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_single_object_header_is_marker_and_little_endian_crc64_of_canonical_form(
    name: str,
) -> None:
    """Single-object framing: C3 01, then CRC-64-AVRO of the parsing canonical form (8 bytes,
    little-endian), computed here independently of fastavro."""
    schema = load_schema(name)
    canonical = canonical_form(schema)
    expected_fingerprint = crc64_avro(canonical.encode("utf-8")).to_bytes(8, "little")

    codec = codec_for(name)
    assert codec.reader.canonical == canonical
    assert codec.header() == b"\xc3\x01" + expected_fingerprint
    if name == "BrowsingEvent":
        payload = codec.encode(EVENT)
        assert payload[:2] == b"\xc3\x01"
        assert payload[2:10] == expected_fingerprint
        assert len(payload) > 10


def test_canonical_form_ignores_docs_defaults_and_logical_types() -> None:
    """Editing docs, defaults or logical types does not change the fingerprint (same parsing)."""
    schema = load_schema("BrowsingEvent")
    edited = copy.deepcopy(schema)
    edited["doc"] = "another doc"
    edited["fields"][-1]["type"] = "long"  # timestamp-millis dropped
    for f in edited["fields"]:
        f["doc"] = "x"
    assert ParsedSchema.from_json(edited).fingerprint == ParsedSchema.from_json(schema).fingerprint


def test_confluent_header_is_zero_then_big_endian_schema_id() -> None:
    """Confluent framing: 0x00, then the registry id as 4 big-endian bytes, then the body."""
    registry = FixedIdRegistry()
    codec = codec_for("BrowsingEvent", registry=registry)
    payload = codec.encode(EVENT)
    assert payload[:5] == b"\x00\x0a\x0b\x0c\x0d"
    assert struct.unpack(">bI", payload[:5]) == (0, FixedIdRegistry.SCHEMA_ID)
    # Same Avro body as the single-object encoding, only the header differs.
    assert payload[5:] == codec_for("BrowsingEvent").encode(EVENT)[10:]
    assert codec.decode(payload) == EVENT


def test_confluent_writer_registers_under_topic_name_strategy_subject() -> None:
    """The schema is registered once, under '<topic>-value', on first encode."""
    calls: list[str] = []

    class Recording(InMemorySchemaRegistry):
        def register(self, subject: str, schema_json: Mapping[str, Any]) -> int:
            calls.append(subject)
            return super().register(subject, schema_json)

    codec = codec_for("PurchaseOutcome", registry=Recording(), topic="purchases")
    codec.encode(PURCHASE)
    codec.encode(PURCHASE)
    assert calls == ["purchases-value"]


@pytest.mark.parametrize("name", ["BrowsingEvent", "PurchaseOutcome"])
def test_reader_accepts_both_framings_whatever_it_writes(name: str) -> None:
    """A codec with a registry (it writes Confluent) reads single-object payloads too, and a
    fresh codec on the same registry reads another codec's Confluent payloads."""
    record = EVENT if name == "BrowsingEvent" else PURCHASE
    registry = InMemorySchemaRegistry()
    single = codec_for(name).encode(record)
    confluent = codec_for(name, registry=registry).encode(record)
    assert single[:2] == b"\xc3\x01" and confluent[:1] == b"\x00"

    reader = codec_for(name, registry=registry)
    assert reader.decode(single) == record
    assert reader.decode(confluent) == record
    assert codec_for(name).decode(single) == record


# -- schema evolution -------------------------------------------------------------------------


def _with_extra_field(schema: dict[str, Any]) -> dict[str, Any]:
    newer = copy.deepcopy(schema)
    newer["fields"].append(
        {"name": "referrer", "type": ["null", "string"], "default": None, "doc": "Added in v2."}
    )
    return newer


def _without_field(schema: dict[str, Any], field: str) -> dict[str, Any]:
    older = copy.deepcopy(schema)
    older["fields"] = [f for f in older["fields"] if f["name"] != field]
    return older


@pytest.mark.parametrize("framing", ["single-object", "confluent"])
def test_newer_writer_with_added_defaulted_field_is_read_by_current_reader(framing: str) -> None:
    """Compatibility rule (design.md): a producer on a newer schema version that adds a field
    with a default is readable by today's reader; the new field is dropped."""
    newer = _with_extra_field(load_schema("BrowsingEvent"))
    record = {**EVENT, "referrer": "https://example.com"}
    if framing == "confluent":
        registry = InMemorySchemaRegistry()
        payload = AvroCodec(newer, registry=registry).encode(record)
        reader = codec_for("BrowsingEvent", registry=registry)
    else:
        payload = AvroCodec(newer).encode(record)
        reader = AvroCodec(load_schema("BrowsingEvent"), extra_writer_schemas=(newer,))
    assert reader.decode(payload) == EVENT


@pytest.mark.parametrize("framing", ["single-object", "confluent"])
def test_current_writer_is_read_by_older_reader_without_the_field(framing: str) -> None:
    """An old consumer whose schema lacks a (defaulted) field reads today's records."""
    current = load_schema("BrowsingEvent")
    older = _without_field(current, "price")
    expected = {k: v for k, v in EVENT.items() if k != "price"}
    if framing == "confluent":
        registry = InMemorySchemaRegistry()
        payload = codec_for("BrowsingEvent", registry=registry).encode(EVENT)
        reader = AvroCodec(older, registry=registry)
    else:
        payload = codec_for("BrowsingEvent").encode(EVENT)
        reader = AvroCodec(older, extra_writer_schemas=(current,))
    assert reader.decode(payload) == expected


@pytest.mark.parametrize("framing", ["single-object", "confluent"])
def test_old_writer_without_defaulted_field_reads_as_the_default(framing: str) -> None:
    """An old producer that does not know a defaulted field: today's reader fills the default."""
    current = load_schema("PurchaseOutcome")
    older = _without_field(_without_field(current, "quantity"), "session_id")
    record = {k: v for k, v in PURCHASE.items() if k not in ("quantity", "session_id")}
    if framing == "confluent":
        registry = InMemorySchemaRegistry()
        payload = AvroCodec(older, registry=registry).encode(record)
        reader = codec_for("PurchaseOutcome", registry=registry)
    else:
        payload = AvroCodec(older).encode(record)
        reader = AvroCodec(current, extra_writer_schemas=(older,))
    assert reader.decode(payload) == {**record, "quantity": 1, "session_id": None}


def test_unknown_enum_symbol_from_newer_writer_reads_as_view() -> None:
    """The EventType enum's default: a symbol added by a newer producer reads as VIEW."""
    current = load_schema("BrowsingEvent")
    newer = copy.deepcopy(current)
    newer["fields"][3]["type"]["symbols"] = ["VIEW", "ADD_TO_CART", "REMOVE_FROM_CART", "WISH"]
    payload = AvroCodec(newer).encode({**EVENT, "event_type": "WISH"})
    reader = AvroCodec(current, extra_writer_schemas=(newer,))
    assert reader.decode(payload) == {**EVENT, "event_type": "VIEW"}


def _released_version_test(name: str, version: int):
    """A record of today's schema written with an older released version (the fields that version
    has), single-object framed with that version's fingerprint."""
    current = load_schema(name)
    writer = ParsedSchema.from_json(schema_history(name)[version - 1])
    codec = codec_for(name)

    def record_branch(schema: Any) -> dict[str, Any] | None:
        """The record schema of a field type (itself, an array's items or a union's branch)."""
        if isinstance(schema, dict) and schema.get("type") == "record":
            return schema
        if isinstance(schema, dict) and schema.get("type") == "array":
            return record_branch(schema["items"])
        if isinstance(schema, list):
            branches = [b for b in map(record_branch, schema) if b is not None]
            return branches[0] if branches else None
        return None

    def project(value: Any, reader: dict[str, Any], writer_: dict[str, Any]) -> Any:
        """What the writer keeps of ``value`` (records: only its fields, nested too) and what
        the reader then reads: the fields the writer lacks at the reader's defaults."""
        if value is None:
            return None
        if isinstance(value, list):
            return [project(v, reader, writer_) for v in value]
        writer_types = {f["name"]: f["type"] for f in writer_["fields"]}
        out = {}
        for f in reader["fields"]:
            if f["name"] not in writer_types:
                out[f["name"]] = f.get("default")
                continue
            nested_r, nested_w = record_branch(f["type"]), record_branch(writer_types[f["name"]])
            v = value[f["name"]]
            out[f["name"]] = project(v, nested_r, nested_w) if nested_r and nested_w else v
        return out

    def written_part(value: Any, writer_: dict[str, Any]) -> Any:
        if value is None:
            return None
        if isinstance(value, list):
            return [written_part(v, writer_) for v in value]
        out = {}
        for f in writer_["fields"]:
            nested = record_branch(f["type"])
            v = value[f["name"]]
            out[f["name"]] = written_part(v, nested) if nested else v
        return out

    @settings(max_examples=25, deadline=None)
    @given(record=RECORDS[name])
    def check(record: dict[str, Any]) -> None:
        written = written_part(record, writer.json)
        body = io.BytesIO()
        fastavro.schemaless_writer(body, writer.parsed, written)
        payload = SINGLE_OBJECT_MARKER + writer.fingerprint + body.getvalue()
        assert codec.decode(payload) == project(record, current, writer.json)

    return check


@pytest.mark.parametrize(
    ("name", "version"),
    [(name, v + 1) for name in NAMES for v in range(len(schema_history(name)))],
)
def test_every_released_writer_schema_decodes_by_fingerprint(name: str, version: int) -> None:
    """Single-object encoding names the writer schema by fingerprint only: a payload written with
    any released version (schemas/history/) decodes with codec_for, the fields that version lacks
    at today's defaults."""
    assert ParsedSchema.from_json(schema_history(name)[version - 1]).fingerprint in (
        codec_for(name).writer_fingerprints
    )
    _released_version_test(name, version)()


def test_schema_history_is_oldest_first_and_ends_with_the_current_schema() -> None:
    """v1, v2, ... in number order (v10 after v9), the newest equal to the current file."""
    for name in NAMES:
        history = schema_history(name)
        assert history[-1] == load_schema(name)
    report = schema_history("AccuracyReport")
    assert [len(v["fields"]) for v in report] == sorted(len(v["fields"]) for v in report)


def test_a_docs_only_version_takes_the_readers_fast_path() -> None:
    """BrowsingEvent v1 and v2 differ in a doc only (one fingerprint): the reader, not the older
    parse, is the writer of that fingerprint, so its payloads decode without resolution."""
    v1, v2 = schema_history("BrowsingEvent")[:2]
    assert (
        v1 != v2
        and ParsedSchema.from_json(v1).fingerprint == ParsedSchema.from_json(v2).fingerprint
    )
    codec = codec_for("BrowsingEvent")
    assert codec._writer_for(codec.encode(EVENT))[0] is codec.reader


def test_schema_history_of_an_unknown_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown schema name"):
        schema_history("Nope")


def test_incompatible_version_of_the_same_record_is_a_decode_error() -> None:
    """A same-named schema that retypes a field cannot be resolved: a typed DecodeError."""
    current = load_schema("BrowsingEvent")
    retyped = copy.deepcopy(current)
    retyped["fields"][-1]["type"] = "string"
    registry = InMemorySchemaRegistry()
    payload = AvroCodec(retyped, registry=registry).encode({**EVENT, "event_time": "yesterday"})
    with pytest.raises(DecodeError):
        codec_for("BrowsingEvent", registry=registry).decode(payload)


# -- malformed inputs -------------------------------------------------------------------------


def _malformed_corpus() -> Iterator[Any]:
    single = codec_for("BrowsingEvent").encode(EVENT)
    registry = InMemorySchemaRegistry()
    confluent = codec_for("BrowsingEvent", registry=registry).encode(EVENT)
    foreign_single = codec_for("PurchaseOutcome").encode(PURCHASE)
    foreign_confluent = codec_for("PurchaseOutcome", registry=registry).encode(PURCHASE)
    with_registry = {"registry": registry}
    cases = [
        ("none", None, {}, UnknownFramingError),
        ("empty", b"", {}, UnknownFramingError),
        ("wrong magic byte", b"\x01" + confluent[1:], with_registry, UnknownFramingError),
        ("wrong marker second byte", b"\xc3\x02" + single[2:], {}, UnknownFramingError),
        ("plain JSON", json.dumps(EVENT).encode(), {}, UnknownFramingError),
        ("single-object header truncated", single[:7], {}, CorruptPayloadError),
        ("marker only", b"\xc3\x01", {}, CorruptPayloadError),
        ("confluent header truncated", confluent[:3], with_registry, CorruptPayloadError),
        ("single-object body truncated", single[:-1], {}, CorruptPayloadError),
        ("single-object header without body", single[:10], {}, CorruptPayloadError),
        ("confluent body truncated", confluent[:-3], with_registry, CorruptPayloadError),
        ("single-object trailing bytes", single + b"\x00", {}, CorruptPayloadError),
        ("confluent trailing bytes", confluent + b"junk", with_registry, CorruptPayloadError),
        ("unknown fingerprint", b"\xc3\x01" + b"\x42" * 8 + single[10:], {}, UnknownSchemaError),
        (
            "unregistered id",
            b"\x00" + struct.pack(">I", 999) + confluent[5:],
            with_registry,
            UnknownSchemaError,
        ),
        ("confluent without registry", confluent, {}, UnknownSchemaError),
        ("other record type, single-object", foreign_single, {}, SchemaMismatchError),
        ("other record type, confluent", foreign_confluent, with_registry, SchemaMismatchError),
        ("oversized", single, {"max_record_bytes": len(single) - 1}, OversizedRecordError),
        ("oversized garbage", b"\xff" * 100, {"max_record_bytes": 64}, OversizedRecordError),
    ]
    for label, payload, kwargs, error in cases:
        yield pytest.param(payload, kwargs, error, id=label)


@pytest.mark.parametrize(("payload", "codec_kwargs", "error"), list(_malformed_corpus()))
def test_malformed_input_raises_its_typed_error(
    payload: bytes | None, codec_kwargs: dict[str, Any], error: type[Exception]
) -> None:
    """Each kind of bad input raises its own DecodeError/DataError subclass, with a message."""
    codec = codec_for("BrowsingEvent", **codec_kwargs)
    with pytest.raises(error) as raised:
        codec.decode(payload)
    assert type(raised.value) is error
    assert isinstance(raised.value, DataError)
    assert str(raised.value)


def test_oversized_check_does_not_depend_on_content() -> None:
    """A payload one byte over the limit is rejected; one at the limit decodes."""
    payload = codec_for("BrowsingEvent").encode(EVENT)
    assert codec_for("BrowsingEvent", max_record_bytes=len(payload)).decode(payload) == EVENT
    with pytest.raises(OversizedRecordError):
        codec_for("BrowsingEvent", max_record_bytes=len(payload) - 1).decode(payload)


def test_corrupt_payload_error_chains_the_parser_error() -> None:
    """Errors carry evidence: the fastavro exception is the __cause__ of CorruptPayloadError."""
    payload = codec_for("BrowsingEvent").encode(EVENT)
    with pytest.raises(CorruptPayloadError) as raised:
        codec_for("BrowsingEvent").decode(payload[:-4])
    assert raised.value.__cause__ is not None


@pytest.mark.parametrize("extra", [b"\x00", b"junk", EVENT["event_id"].encode() * 40])
@pytest.mark.parametrize("framing", ["single-object", "confluent"])
def test_valid_record_followed_by_extra_bytes_is_corrupt_with_trailing_bytes_message(
    framing: str, extra: bytes
) -> None:
    """A complete, valid event with anything after it is dead-lettered as CorruptPayloadError,
    whose message says how many trailing bytes follow the record and where it ends."""
    registry = InMemorySchemaRegistry() if framing == "confluent" else None
    codec = codec_for("BrowsingEvent", registry=registry)
    valid = codec.encode(EVENT)
    assert codec.decode(valid) == EVENT
    with pytest.raises(CorruptPayloadError) as raised:
        codec.decode(valid + extra)
    assert type(raised.value) is CorruptPayloadError
    message = str(raised.value)
    assert message.startswith(f"{len(extra)} trailing bytes after a complete ")
    assert "com.shop.recommender.BrowsingEvent record" in message
    assert f"ends at byte {len(valid)} of the {len(valid) + len(extra)}-byte payload" in message


def test_unknown_fingerprint_message_names_received_and_known_fingerprints() -> None:
    """UnknownSchemaError says which fingerprint came, which are known (hex as on the wire and
    as a signed 64-bit integer), and how to compute the right one."""
    older = copy.deepcopy(load_schema("BrowsingEvent"))
    older["fields"] = older["fields"][:-2] + older["fields"][-1:]  # without "price"
    codec = AvroCodec(load_schema("BrowsingEvent"), extra_writer_schemas=(older,))
    received = bytes.fromhex("0102030405060708")
    payload = b"\xc3\x01" + received + codec.encode(EVENT)[10:]
    with pytest.raises(UnknownSchemaError) as raised:
        codec.decode(payload)
    message = str(raised.value)
    assert message.startswith(
        "unknown writer schema fingerprint 0102030405060708 "
        f"({int.from_bytes(received, 'little', signed=True)} as a signed 64-bit integer); "
        "known fingerprints of com.shop.recommender.BrowsingEvent: b5c077aa6d1166bd "
        "(-4799129190207602507), "
    )
    assert ParsedSchema.from_json(older).fingerprint.hex() in message
    assert message.endswith(
        "Compute the fingerprint of the Parsing Canonical Form per the Avro specification (it "
        "drops logicalType, doc and defaults); see `worker schemas --fingerprints`"
    )


# -- fuzzing ----------------------------------------------------------------------------------


def _fuzz_codecs() -> list[AvroCodec]:
    codecs = []
    for name in NAMES:
        codecs.append(codec_for(name))
        registry = InMemorySchemaRegistry()
        for other in NAMES:  # ids 1..4 are valid, so random Confluent ids sometimes resolve
            registry.register(f"{other}-value", load_schema(other))
        codecs.append(codec_for(name, registry=registry))
    return codecs


FUZZ_CODECS = _fuzz_codecs()


def _decode_or_typed_error(codec: AvroCodec, payload: bytes) -> None:
    try:
        result = codec.decode(payload)
    except (DecodeError, DataError):
        return
    assert isinstance(result, dict)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payload=st.one_of(
        st.binary(max_size=200),
        st.binary(max_size=120).map(lambda b: b"\xc3\x01" + b),
        st.binary(max_size=120).map(lambda b: b"\x00" + b),
        st.tuples(st.integers(1, 4), st.binary(max_size=120)).map(
            lambda t: b"\x00" + struct.pack(">I", t[0]) + t[1]
        ),
    )
)
def test_fuzz_arbitrary_bytes_decode_or_raise_typed_error(payload: bytes) -> None:
    """2000 examples x 8 codecs: arbitrary bytes (also behind valid headers) either decode to a
    dict or raise a DecodeError/DataError subclass, never another exception type."""
    for codec in FUZZ_CODECS:
        _decode_or_typed_error(codec, payload)


_VALID_PAYLOADS = [
    codec_for("BrowsingEvent").encode(EVENT),
    codec_for("PurchaseOutcome").encode(PURCHASE),
]


@st.composite
def mutated_payloads(draw: st.DrawFn) -> bytes:
    base = bytearray(draw(st.sampled_from(_VALID_PAYLOADS)))
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "splice"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(0, len(base) - 1))
            base[pos] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        base = base[: draw(st.integers(0, len(base) - 1))]
    elif kind == "extend":
        base += draw(st.binary(min_size=1, max_size=50))
    else:
        pos = draw(st.integers(0, len(base)))
        base[pos:pos] = draw(st.binary(min_size=1, max_size=10))
    return bytes(base)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=mutated_payloads())
def test_fuzz_mutated_valid_encodings_decode_or_raise_typed_error(payload: bytes) -> None:
    """2000 bit-flipped / truncated / extended / spliced valid encodings: a dict or a typed
    error, never another exception type."""
    _decode_or_typed_error(FUZZ_CODECS[NAMES.index("BrowsingEvent") * 2], payload)
    _decode_or_typed_error(FUZZ_CODECS[NAMES.index("PurchaseOutcome") * 2], payload)
