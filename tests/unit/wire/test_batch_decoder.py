"""The batch decoder (:mod:`worker.wire.batch_decoder`, :meth:`AvroCodec.decode_batch`): for any
payload, valid or not, its outcome is :meth:`AvroCodec.decode`'s (the same record, to the bits of
every double, or an error of the same type and message).

Pure: no broker, no HTTP. Hypothesis example counts (``EXAMPLES``): per record type and framing,
100 batches of 1 to 4 records (30 for the large AccuracyReport); per record type, 400 mutated
payloads (100 AccuracyReports).
"""

from __future__ import annotations

import copy
import math
import re
import struct
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.core.errors import DataError, SchemaMismatchError, UnknownSchemaError
from worker.testing import InMemorySchemaRegistry
from worker.wire.batch_decoder import compile_reader, read_varint
from worker.wire.codec import SCHEMA_FILES, AvroCodec, codec_for, load_schema

NAMES = list(SCHEMA_FILES)

# -- strategies: records that fit the schemas -------------------------------------------------

texts = st.text(max_size=12)  # any code point but surrogates: multi-byte UTF-8, and empty
longs = st.integers(min_value=-(2**63), max_value=2**63 - 1)
ints = st.integers(min_value=-(2**31), max_value=2**31 - 1)
doubles = st.floats(allow_nan=True, allow_infinity=True)


def _value(schema: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of an Avro schema (the subset the project uses), for generated records."""
    if isinstance(schema, list):
        return st.one_of(*(_value(branch, named) for branch in schema))
    if isinstance(schema, dict):
        kind = schema["type"]
        if kind == "record":
            named[schema["name"]] = schema
            return st.fixed_dictionaries(
                {f["name"]: _value(f["type"], named) for f in schema["fields"]}
            )
        if kind == "enum":
            return st.sampled_from(schema["symbols"])
        if kind == "array":
            return st.lists(_value(schema["items"], named), max_size=30)
        return _value(kind, named)
    return {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": ints,
        "long": longs,
        "double": doubles,
        "string": texts,
    }[schema]


RECORDS = {name: _value(load_schema(name), {}) for name in NAMES}
#: Examples per test: (valid batches, mutated payloads). AccuracyReport has 70-odd fields and
#: is no hot path (one record a window): fewer.
EXAMPLES = {name: (30, 100) if name == "AccuracyReport" else (100, 400) for name in NAMES}


def _bits(value: Any) -> Any:
    """A value with each float replaced by its 8 bytes, and each scalar tagged with its type:
    equal results are equal to the bit (NaN, -0.0) and in type (bool is not int)."""
    if isinstance(value, dict):
        return {k: _bits(v) for k, v in value.items()}, list(value)
    if isinstance(value, list):
        return [_bits(v) for v in value]
    if isinstance(value, float):
        return struct.pack("<d", value)
    return type(value).__name__, value


def _outcome(result: dict[str, Any] | DataError) -> Any:
    if isinstance(result, DataError):
        # fastavro names its stream in some messages ("cannot read double from <_io.BytesIO
        # object at 0x7f...>"): the address differs between any two decode calls.
        return type(result).__name__, re.sub(r" at 0x[0-9a-f]+>", " at 0x…>", str(result))
    return _bits(result)


def _decode_outcome(codec: AvroCodec, payload: bytes | None) -> Any:
    try:
        return _outcome(codec.decode(payload))
    except DataError as exc:
        return _outcome(exc)


def _assert_same_as_decode(codec: AvroCodec, payloads: Sequence[bytes | None]) -> None:
    batch = codec.decode_batch(payloads)
    assert len(batch) == len(payloads)
    for payload, result in zip(payloads, batch, strict=True):
        assert _outcome(result) == _decode_outcome(codec, payload), payload


# -- valid records ----------------------------------------------------------------------------


def test_every_project_schema_compiles() -> None:
    for name in NAMES:
        assert compile_reader(load_schema(name)) is not None, name


@pytest.mark.parametrize("framing", ["single-object", "confluent"])
@pytest.mark.parametrize("name", NAMES)
def test_batch_of_valid_records_decodes_as_decode_does(name: str, framing: str) -> None:
    """decode_batch of encoded records equals decode of each; the compiled reader alone (no
    fallback) reads every one of them to the same record and to its end."""
    registry = InMemorySchemaRegistry() if framing == "confluent" else None
    writer = codec_for(name, registry=registry)
    reader = codec_for(name, registry=registry)
    compiled = compile_reader(load_schema(name))
    assert compiled is not None
    start = 5 if registry else 10

    @settings(
        max_examples=EXAMPLES[name][0], deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(records=st.lists(RECORDS[name], min_size=1, max_size=4))
    def check(records: list[dict[str, Any]]) -> None:
        payloads = [writer.encode(r) for r in records]
        _assert_same_as_decode(reader, payloads)
        for payload in payloads:
            record, end = compiled(payload, start)
            assert end == len(payload)
            assert _bits(record) == _bits(reader.decode(payload))

    check()


def test_nan_and_signed_zero_keep_their_bits() -> None:
    codec = codec_for("BrowsingEvent")
    base = load_event()
    for price in (math.nan, -0.0, math.inf, -math.inf, 5e-324):
        _assert_same_as_decode(codec, [codec.encode({**base, "price": price})])


def load_event() -> dict[str, Any]:
    return {
        "event_id": "e-123-abcdef",
        "user_id": "u000123",
        "session_id": "s-456",
        "event_type": "ADD_TO_CART",
        "product_id": "p01234",
        "category_id": "c12",
        "price": 12.5,
        "event_time": 1_796_190_000_000,
    }


SAMPLES: dict[str, dict[str, Any]] = {
    "BrowsingEvent": load_event(),
    "ProductSuggestion": {
        "suggestion_id": "events/3/42",
        "user_id": "u000123",
        "session_id": "s-456",
        "event_id": "e-123-abcdef",
        "source_topic": "events",
        "source_partition": 3,
        "source_offset": 42,
        "model_version": "v1",
        "products": [{"product_id": f"p{i:05}", "rank": i, "score": 1.0 / i} for i in range(1, 11)],
        "event_time": 1_796_190_000_000,
        "produced_time": 1_796_190_000_050,
    },
    "PurchaseOutcome": {
        "order_id": "o-1",
        "user_id": "u000123",
        "session_id": None,
        "product_id": "p01234",
        "quantity": 2,
        "price": 12.5,
        "event_time": 1_796_190_000_000,
    },
}


# -- malformed payloads -----------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, name: str) -> bytes:
    base = bytearray(codec_for(name).encode(draw(RECORDS[name])))
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "splice", "body", "set"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(10, len(base) - 1))  # the body: the header is decode's
            base[pos] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        base = base[: draw(st.integers(0, len(base) - 1))]
    elif kind == "extend":
        base += draw(st.binary(min_size=1, max_size=20))
    elif kind == "splice":
        pos = draw(st.integers(10, len(base)))
        base[pos:pos] = draw(st.binary(min_size=1, max_size=10))
    elif kind == "body":  # random bytes behind the reader's own header
        base = base[:10] + draw(st.binary(max_size=80))
    else:  # one byte set to a value that is special to varints, lengths, indexes, booleans
        pos = draw(st.integers(10, len(base) - 1))
        base[pos] = draw(st.sampled_from([0x00, 0x01, 0x02, 0x03, 0x7F, 0x80, 0xFF]))
    return bytes(base)


@pytest.mark.parametrize("name", NAMES)
def test_mutated_payloads_have_the_outcome_of_decode(name: str) -> None:
    """Truncated, extended, spliced, bit-flipped payloads and random bodies: decode_batch gives
    the record decode gives, or an error of the same type and message."""
    codec = codec_for(name)

    @settings(
        max_examples=EXAMPLES[name][1], deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(payload=mutated(name))
    def check(payload: bytes) -> None:
        _assert_same_as_decode(codec, [payload])

    check()


def _zigzag(n: int, *, pad_to: int = 0) -> bytes:
    """A zigzag varint; ``pad_to`` > its length adds redundant continuation bytes."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        out.append(n & 0x7F)
        n >>= 7
        if not n and len(out) >= pad_to:
            break
        out[-1] |= 0x80
    return bytes(out)


def _string(s: str) -> bytes:
    raw = s.encode()
    return _zigzag(len(raw)) + raw


def _suggestion_body(products: bytes) -> bytes:
    head = b"".join(_string(s) for s in ("sug", "u1", "s1", "e1", "events"))
    head += _zigzag(3) + _zigzag(42) + _string("v1")
    return head + products + _zigzag(1_796_190_000_000) + _zigzag(1_796_190_000_050)


def _product(pid: str, rank: int) -> bytes:
    return _string(pid) + _zigzag(rank) + struct.pack("<d", 1.0 / rank)


def test_array_blocks_with_negative_counts_and_byte_sizes() -> None:
    """Avro lets a block's count be negative, followed by the block's size in bytes; several
    blocks make one array."""
    codec = codec_for("ProductSuggestion")
    one, two, three = _product("p1", 1), _product("p2", 2), _product("p3", 3)
    bodies = [
        _zigzag(-2) + _zigzag(len(one + two)) + one + two + _zigzag(1) + three + _zigzag(0),
        _zigzag(1) + one + _zigzag(-1) + _zigzag(len(two)) + two + _zigzag(0),
        _zigzag(0),
        _zigzag(-1) + _zigzag(999) + one + _zigzag(0),  # a wrong size is skipped, not checked
    ]
    payloads = [codec.header() + _suggestion_body(b) for b in bodies]
    _assert_same_as_decode(codec, payloads)
    first = codec.decode_batch(payloads[:1])[0]
    assert isinstance(first, dict)
    assert [p["product_id"] for p in first["products"]] == ["p1", "p2", "p3"]


def test_long_and_odd_varints() -> None:
    """Varints of every length, redundant continuation bytes, and over 64 bits (fastavro's
    compiled reader wraps those: the fast path leaves them to it)."""
    codec = codec_for("ProductSuggestion")
    payloads = []
    for offset in (0, -1, 63, -64, 64, 2**31, 2**62, 2**63 - 1, -(2**63)):
        for pad in (0, 10, 11):
            partition = _zigzag(offset, pad_to=pad)
            head = b"".join(_string(s) for s in ("sug", "u1", "s1", "e1", "events"))
            body = head + partition + _zigzag(offset, pad_to=pad) + _string("v1")
            payloads.append(codec.header() + body + _zigzag(0) + _zigzag(1) + _zigzag(2))
    head = b"".join(_string(s) for s in ("sug", "u1", "s1", "e1", "events"))
    # Ten bytes whose last carries bits 63 to 69 (only bit 63 fits), and eleven bytes.
    overs = [fill * 9 + bytes([last]) for fill in (b"\xff", b"\x80") for last in (0, 1, 2, 3, 0x7F)]
    overs.append(b"\xff" * 10 + b"\x01")
    for over in overs:
        for body in (over + _zigzag(1), _zigzag(1) + over):
            payloads.append(codec.header() + head + body + _string("v1") + b"\x00\x02\x04")
    _assert_same_as_decode(codec, payloads)
    assert read_varint(_zigzag(-(2**63)), 0) == (-(2**63), 10)


def test_booleans_other_than_zero_and_one() -> None:
    """fastavro reads any non-zero byte as True; the fast path leaves such bytes to it."""
    codec = codec_for("AccuracyReport")
    record = _accuracy_report_with_comparison()
    payload = codec.encode(record)
    # The comparison's boolean is followed by the statement "s" and the windows count 0.
    tail = b"\x01" + _string("s") + _zigzag(0)
    assert payload.endswith(tail)
    for byte in (0x00, 0x02, 0xFF):
        changed = payload[: -len(tail)] + bytes([byte]) + tail[1:]
        _assert_same_as_decode(codec, [changed])


def _accuracy_report_with_comparison() -> dict[str, Any]:
    schema = load_schema("AccuracyReport")
    record: dict[str, Any] = {}
    for f in schema["fields"]:
        t = f["type"]
        if f["name"] == "version_comparison":
            fields = t[1]["fields"]
            record[f["name"]] = {
                g["name"]: {"string": "s", "double": 0.5, "boolean": True}.get(g["type"], 0)
                for g in fields
            }
        elif isinstance(t, list):
            record[f["name"]] = None
        elif isinstance(t, dict) and t["type"] == "array":
            record[f["name"]] = []
        else:
            record[f["name"]] = 1 if f["name"] == "k" else 0
    return record


def test_null_empty_and_oversized_payloads() -> None:
    codec = codec_for("BrowsingEvent", max_record_bytes=60)
    event = codec.encode(load_event())
    big = codec.encode({**load_event(), "event_id": "e" * 80})
    _assert_same_as_decode(codec, [None, b"", event, big, b"\x01\x02", event[:7], b"\x00\x00"])


# -- other writers, other framings ------------------------------------------------------------


def _newer_event_schema() -> dict[str, Any]:
    """A compatible newer BrowsingEvent: one more field, with a default (made up)."""
    newer = copy.deepcopy(load_schema("BrowsingEvent"))
    newer["fields"].insert(3, {"name": "referrer", "type": "string", "default": ""})
    return newer


def test_another_writer_schema_goes_through_fastavro_resolution() -> None:
    """A payload written with a schema other than the reader's is resolved by fastavro (the
    compiled reader never sees it) and reads as decode reads it."""
    newer = _newer_event_schema()
    codec = AvroCodec(load_schema("BrowsingEvent"), extra_writer_schemas=(newer,))
    seen: list[int] = []
    compiled = codec._fast_reader
    assert compiled is not None

    def spy(buf: bytes, pos: int) -> tuple[dict[str, Any], int]:
        seen.append(pos)
        return compiled(buf, pos)

    codec._fast_reader = spy
    old_payload = codec.encode(load_event())
    new_payload = AvroCodec(newer).encode({**load_event(), "referrer": "https://x"})
    _assert_same_as_decode(codec, [new_payload, old_payload, new_payload[:-3]])
    result = codec.decode_batch([new_payload])[0]
    assert result == load_event()
    seen.clear()
    codec.decode_batch([new_payload, old_payload])
    assert seen == [10]  # the reader's own payload only


def test_released_browsing_event_versions_decode_alike() -> None:
    """Every released BrowsingEvent version (v1 differs from the reader in docs only, so it
    has the reader's fingerprint) reads as decode reads it."""
    codec = codec_for("BrowsingEvent")
    from worker.wire.codec import schema_history

    payloads = [AvroCodec(v).encode(load_event()) for v in schema_history("BrowsingEvent")]
    _assert_same_as_decode(codec, payloads)


@pytest.mark.parametrize("name", ["BrowsingEvent", "ProductSuggestion", "PurchaseOutcome"])
def test_confluent_framing_through_a_registry(name: str) -> None:
    """Registry ids: the reader's own id takes the compiled reader, a newer writer's id
    fastavro, an unknown id and another record type's id the errors decode raises."""
    registry = InMemorySchemaRegistry()
    record = SAMPLES[name]
    own = codec_for(name, registry=registry).encode(record)
    reader = codec_for(name, registry=registry)
    payloads: list[bytes | None] = [own, own[:-1], own + b"\x00"]
    if name == "BrowsingEvent":
        payloads.append(AvroCodec(_newer_event_schema(), registry=registry).encode(load_event()))
    foreign = codec_for("PurchaseOutcome" if name != "PurchaseOutcome" else "BrowsingEvent")
    foreign_id = registry.register("other-value", foreign.reader.json)
    payloads.append(b"\x00" + struct.pack(">I", foreign_id) + b"\x00")
    payloads.append(b"\x00" + struct.pack(">I", 999) + own[5:])
    _assert_same_as_decode(reader, payloads)
    results = reader.decode_batch(payloads)
    assert isinstance(results[-1], UnknownSchemaError)
    assert isinstance(results[-2], SchemaMismatchError)
    assert _bits(results[0]) == _bits(reader.decode(own))


def test_unsupported_schema_has_no_compiled_reader_and_decodes_by_fastavro() -> None:
    schema = {
        "type": "record",
        "name": "WithFixed",
        "fields": [{"name": "id", "type": {"type": "fixed", "name": "Id", "size": 4}}],
    }
    assert compile_reader(schema) is None
    codec = AvroCodec(schema)
    payload = codec.encode({"id": b"abcd"})
    assert codec.decode_batch([payload, payload[:-1]])[0] == {"id": b"abcd"}
    _assert_same_as_decode(codec, [payload, payload[:-1]])


def test_maps_named_references_and_recursion_compile() -> None:
    """Types the project does not use yet, read as fastavro reads them."""
    schema = {
        "type": "record",
        "name": "Node",
        "namespace": "t",
        "fields": [
            {"name": "tags", "type": {"type": "map", "values": "long"}},
            {"name": "flag", "type": "boolean"},
            {"name": "ratio", "type": "float"},
            {"name": "raw", "type": "bytes"},
            {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}},
            {"name": "again", "type": ["Kind", "null"]},
            {"name": "children", "type": {"type": "array", "items": "t.Node"}},
            {"name": "next", "type": ["null", "Node"]},
        ],
    }
    assert compile_reader(schema) is not None
    codec = AvroCodec(schema)
    leaf = {
        "tags": {},
        "flag": False,
        "ratio": 0.5,
        "raw": b"",
        "kind": "B",
        "again": None,
        "children": [],
        "next": None,
    }
    node = {
        **leaf,
        "tags": {"a": 1, "é": -(2**40)},
        "flag": True,
        "raw": b"\x00\xff",
        "again": "A",
        "children": [leaf, leaf],
        "next": leaf,
    }
    payload = codec.encode(node)
    assert codec.decode_batch([payload]) == [codec.decode(payload)]
    _assert_same_as_decode(codec, [payload, payload[:-2], payload + b"\x00"])
