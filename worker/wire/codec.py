"""Avro on the wire: Confluent framing and Avro single-object encoding.

Two framings are written and read (see the README, section "Wire format"):

* **Confluent framing**, used when a schema registry is configured::

      0x00 | schema id (4 bytes, big-endian) | Avro binary body

* **Avro single-object encoding**, used otherwise::

      0xC3 0x01 | CRC-64-AVRO fingerprint of the writer schema (8 bytes, little-endian) | body

The reader recognises both on every record, whatever it writes, and rejects anything else with a
typed :class:`~worker.core.errors.DecodeError`. Writer schemas are resolved against the reader
schema (Avro schema resolution), so records written with an older or newer compatible version
decode.

A micro-batch is read with :meth:`AvroCodec.decode_batch`: the same outcome as ``decode`` for
each payload, but bodies written with the reader schema itself are read by a reader compiled for
that schema (:mod:`worker.wire.batch_decoder`) rather than by one fastavro call each: about half
the time for a ``BrowsingEvent``.

Logical types are not applied: ``timestamp-millis`` fields read and write as plain ``int``
epoch milliseconds. Logical types do not change the binary encoding nor the fingerprint (the
parsing canonical form drops them), and plain ints keep the hot path free of datetime objects.

This module is pure: schema registry access goes through the :class:`SchemaRegistry` protocol,
whose implementation (confluent-kafka's ``SchemaRegistryClient``) lives in the Kafka edge,
:mod:`worker.kafka.schema_registry`.
"""

from __future__ import annotations

import io
import json
import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

import fastavro
import fastavro.schema

from worker.core.errors import (
    ConfigError,
    CorruptPayloadError,
    DataError,
    OversizedRecordError,
    SchemaMismatchError,
    UnknownFramingError,
    UnknownSchemaError,
)
from worker.wire.batch_decoder import compile_reader

if TYPE_CHECKING:  # annotations only
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:  # Python 3.10 (requires-python >= 3.10) has it in importlib.abc only
        from importlib.abc import Traversable

CONFLUENT_MAGIC = b"\x00"
SINGLE_OBJECT_MARKER = b"\xc3\x01"
_CONFLUENT_HEADER = struct.Struct(">bI")
_CONFLUENT_HEADER_BYTES = _CONFLUENT_HEADER.size  # 5
_SINGLE_OBJECT_HEADER_BYTES = 10

SCHEMA_FILES = {
    "BrowsingEvent": "browsing_event.avsc",
    "ProductSuggestion": "product_suggestion.avsc",
    "PurchaseOutcome": "purchase_outcome.avsc",
    "AccuracyReport": "accuracy_report.avsc",
}


def schema_file(name: str) -> Traversable:
    """The ``.avsc`` file of a record schema: package data of :mod:`worker.wire` (``schemas/``, a
    link to the repository's top-level ``schemas/`` that the wheel ships as files)."""
    return resources.files("worker.wire") / "schemas" / SCHEMA_FILES[name]


def load_schema(name: str) -> dict[str, Any]:
    """Return the JSON of the named record schema (``BrowsingEvent``, ...).

    Raises:
        ConfigError: the name is unknown or its file is missing or not JSON.
    """
    if name not in SCHEMA_FILES:
        raise ConfigError(f"unknown schema name {name!r}; known: {sorted(SCHEMA_FILES)}")
    path = schema_file(name)
    try:
        schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load schema {name} from {path}: {exc}") from exc
    return schema


def schema_history(name: str) -> tuple[dict[str, Any], ...]:
    """Every released version of the named record schema, oldest first.

    The history is package data too: ``schemas/history/<file stem>/v1.avsc``, ``v2.avsc``, ...,
    one file per version ever released, the newest equal to the current file (README, section
    "Schemas"). Single-object encoding names its writer schema by fingerprint only, so a reader
    must know every writer schema ever used: :func:`codec_for` gives them all to the codec.

    Raises:
        ConfigError: the name is unknown, it has no history, or a version is not JSON.
    """
    if name not in SCHEMA_FILES:
        raise ConfigError(f"unknown schema name {name!r}; known: {sorted(SCHEMA_FILES)}")
    stem = SCHEMA_FILES[name].removesuffix(".avsc")
    folder = resources.files("worker.wire") / "schemas" / "history" / stem
    try:
        numbered = sorted(
            (int(f.name[1:].removesuffix(".avsc")), f)
            for f in folder.iterdir()
            if f.name.startswith("v") and f.name.endswith(".avsc")
        )
        versions = tuple(json.loads(f.read_text(encoding="utf-8")) for _, f in numbered)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the history of schema {name} from {folder}: {exc}") from exc
    if not versions:
        raise ConfigError(f"no released version of schema {name} in {folder}")
    return versions


def _strip_logical_types(node: Any) -> Any:
    """Copy of a schema without ``logicalType`` annotations (same binary encoding)."""
    if isinstance(node, dict):
        return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


def full_name(schema: Mapping[str, Any]) -> str:
    """Namespace-qualified name of a record schema."""
    name = str(schema.get("name", ""))
    if "." in name or not schema.get("namespace"):
        return name
    return f"{schema['namespace']}.{name}"


@dataclass(frozen=True)
class ParsedSchema:
    """A schema parsed once: JSON, fastavro form, canonical form and fingerprint."""

    json: Mapping[str, Any]
    parsed: Any
    name: str
    canonical: str
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO, as written on the wire

    @classmethod
    def from_json(cls, schema_json: Mapping[str, Any]) -> ParsedSchema:
        # fastavro takes a dict (it tests isinstance(schema, dict)); a shallow copy of a mapping.
        canonical = fastavro.schema.to_parsing_canonical_form(dict(schema_json))
        return cls(
            json=schema_json,
            # Each ParsedSchema gets its own named-type table so that two versions of one record
            # can live side by side (fastavro otherwise shares names across parse calls).
            parsed=fastavro.parse_schema(_strip_logical_types(schema_json), named_schemas={}),
            name=full_name(schema_json),
            canonical=canonical,
            fingerprint=bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO")),
        )


class SchemaRegistry(Protocol):
    """What the codec needs of a Confluent-compatible schema registry."""

    def register(self, subject: str, schema_json: Mapping[str, Any]) -> int:
        """Register (or look up) the schema under the subject; return its global id."""

    def schema_by_id(self, schema_id: int) -> Mapping[str, Any]:
        """Return the schema JSON with that global id. Raises UnknownSchemaError if none."""


class AvroCodec:
    """Encodes and decodes one record type.

    ``decode`` accepts both framings. ``encode`` writes Confluent framing when a registry is
    given (the schema is registered under ``subject`` on first use) and single-object encoding
    otherwise.

    Args:
        reader_schema: JSON of the record type this codec reads and writes.
        registry: a schema registry; ``None`` for single-object encoding.
        subject: registry subject (Confluent's TopicNameStrategy: ``<topic>-value``).
        extra_writer_schemas: other versions of the record that single-object payloads may have
            been written with (older or newer), known by fingerprint.
        known_foreign_schemas: schemas of *other* record types, so that a payload of the wrong
            type is reported as :class:`SchemaMismatchError` rather than an unknown fingerprint.
        max_record_bytes: payloads longer than this raise :class:`OversizedRecordError`.
    """

    def __init__(
        self,
        reader_schema: Mapping[str, Any],
        *,
        registry: SchemaRegistry | None = None,
        subject: str | None = None,
        extra_writer_schemas: tuple[Mapping[str, Any], ...] = (),
        known_foreign_schemas: tuple[Mapping[str, Any], ...] = (),
        max_record_bytes: int = 1 << 20,
    ) -> None:
        self.reader = ParsedSchema.from_json(reader_schema)
        self._registry = registry
        self._subject = subject or f"{self.reader.name}-value"
        self._max_record_bytes = max_record_bytes
        self._by_fingerprint: dict[bytes, ParsedSchema] = {self.reader.fingerprint: self.reader}
        for extra in extra_writer_schemas:
            parsed = ParsedSchema.from_json(extra)
            # setdefault: a version that differs from the reader only in docs has its
            # fingerprint, and payloads written with it take the reader's fast path.
            self._by_fingerprint.setdefault(parsed.fingerprint, parsed)
        self._foreign_names: dict[bytes, str] = {}
        for foreign in known_foreign_schemas:
            parsed = ParsedSchema.from_json(foreign)
            self._foreign_names[parsed.fingerprint] = parsed.name
        self._by_registry_id: dict[int, ParsedSchema] = {}
        self._writer_id: int | None = None
        # decode_batch's fast path: the reader schema's own bodies, read without fastavro.
        self._fast_reader = compile_reader(_strip_logical_types(reader_schema))
        self._fast_header = SINGLE_OBJECT_MARKER + self.reader.fingerprint

    @property
    def name(self) -> str:
        return self.reader.name

    @property
    def writer_fingerprints(self) -> frozenset[bytes]:
        """The fingerprints of the writer schemas single-object payloads may carry (the reader's
        and ``extra_writer_schemas``'), 8 bytes each as on the wire."""
        return frozenset(self._by_fingerprint)

    # -- writing ------------------------------------------------------------------------------

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """Serialize one record with this codec's framing.

        Raises:
            ValueError / TypeError from fastavro when the record does not fit the schema.
            SchemaRegistryError: the registry could not register the schema.
        """
        buf = io.BytesIO()
        buf.write(self.header())
        fastavro.schemaless_writer(buf, self.reader.parsed, record)
        return buf.getvalue()

    def header(self) -> bytes:
        """The framing prefix this codec writes."""
        if self._registry is None:
            return SINGLE_OBJECT_MARKER + self.reader.fingerprint
        if self._writer_id is None:
            self._writer_id = self._registry.register(self._subject, self.reader.json)
        return _CONFLUENT_HEADER.pack(0, self._writer_id)

    # -- reading ------------------------------------------------------------------------------

    def decode(self, payload: bytes | None) -> dict[str, Any]:
        """Deserialize one framed record into a dict of the reader schema.

        Raises:
            OversizedRecordError: longer than ``max_record_bytes``.
            UnknownFramingError: empty, or neither framing.
            UnknownSchemaError: the id or fingerprint cannot be resolved.
            SchemaMismatchError: the writer schema is another record type.
            CorruptPayloadError: the body does not parse or has trailing bytes.
        """
        if payload is None or len(payload) == 0:
            raise UnknownFramingError("empty payload (null or zero-length value)")
        if len(payload) > self._max_record_bytes:
            raise OversizedRecordError(
                f"payload of {len(payload)} bytes exceeds the limit of {self._max_record_bytes}"
            )
        writer, body_start = self._writer_for(payload)
        return self._read_body(payload, writer, body_start)

    def decode_batch(self, payloads: Sequence[bytes | None]) -> list[dict[str, Any] | DataError]:
        """Deserialize a micro-batch: for each payload, in order, the record :meth:`decode`
        returns or the :class:`~worker.core.errors.DataError` it raises (same type, same
        message), so that one bad record costs its own dead letter only.

        Payloads written with the reader schema itself (its single-object header, or a registry
        id that resolves to it) are read by the reader compiled for that schema
        (:mod:`worker.wire.batch_decoder`), without a fastavro call; a body it finds malformed,
        and every other writer schema, goes through fastavro as in :meth:`decode`. Errors
        other than data errors (a registry that cannot be reached) propagate, as from
        :meth:`decode`.
        """
        fast = self._fast_reader
        header = self._fast_header
        limit = self._max_record_bytes
        reader = self.reader
        out: list[dict[str, Any] | DataError] = []
        append = out.append
        for payload in payloads:
            if fast is not None and payload is not None and payload[:10] == header:
                size = len(payload)
                if size <= limit:
                    try:
                        record, end = fast(payload, 10)
                    except Exception:  # malformed: fastavro says how, below
                        pass
                    else:
                        if end == size:
                            append(record)
                            continue
            try:
                if payload is None or len(payload) == 0 or len(payload) > limit:
                    append(self.decode(payload))  # raises
                    continue
                writer, body_start = self._writer_for(payload)
                if fast is not None and writer is reader and body_start != 10:
                    try:
                        record, end = fast(payload, body_start)
                    except Exception:
                        pass
                    else:
                        if end == len(payload):
                            append(record)
                            continue
                append(self._read_body(payload, writer, body_start))
            except DataError as exc:
                append(exc)
        return out

    def _read_body(self, payload: bytes, writer: ParsedSchema, body_start: int) -> dict[str, Any]:
        """The record in ``payload[body_start:]`` written with ``writer``, through fastavro.

        Raises:
            CorruptPayloadError: the body does not parse or has trailing bytes.
        """
        buf = io.BytesIO(payload)
        buf.seek(body_start)
        try:
            if writer is self.reader:
                record = fastavro.schemaless_reader(buf, self.reader.parsed, None)
            else:
                record = fastavro.schemaless_reader(buf, writer.parsed, self.reader.parsed)
        except Exception as exc:  # fastavro raises EOFError, ValueError, SchemaResolutionError...
            raise CorruptPayloadError(
                f"Avro body of {len(payload) - body_start} bytes does not parse as "
                f"{writer.name}: {type(exc).__name__}: {exc}"
            ) from exc
        end = buf.tell()
        trailing = len(payload) - end
        if trailing:
            raise CorruptPayloadError(
                f"{trailing} trailing bytes after a complete {writer.name} record: its Avro "
                f"body ends at byte {end} of the {len(payload)}-byte payload (one record per "
                "Kafka value, nothing after it)"
            )
        return record  # type: ignore[return-value]  # a record schema always reads as a dict

    def _writer_for(self, payload: bytes) -> tuple[ParsedSchema, int]:
        if payload[:2] == SINGLE_OBJECT_MARKER:
            if len(payload) < _SINGLE_OBJECT_HEADER_BYTES:
                raise CorruptPayloadError(
                    f"single-object header truncated: {len(payload)} of 10 bytes"
                )
            fingerprint = payload[2:10]
            writer = self._by_fingerprint.get(fingerprint)
            if writer is None:
                foreign = self._foreign_names.get(fingerprint)
                if foreign is not None:
                    raise SchemaMismatchError(
                        f"payload was written as {foreign}, expected {self.reader.name}"
                    )
                raise UnknownSchemaError(self._unknown_fingerprint_message(fingerprint))
            return writer, _SINGLE_OBJECT_HEADER_BYTES
        if payload[:1] == CONFLUENT_MAGIC:
            if len(payload) < _CONFLUENT_HEADER_BYTES:
                raise CorruptPayloadError(f"Confluent header truncated: {len(payload)} of 5 bytes")
            _, schema_id = _CONFLUENT_HEADER.unpack_from(payload)
            return self._writer_by_id(schema_id), _CONFLUENT_HEADER_BYTES
        raise UnknownFramingError(
            f"first bytes {payload[:2].hex()} are neither Confluent framing (00) "
            "nor Avro single-object encoding (c301)"
        )

    def _unknown_fingerprint_message(self, fingerprint: bytes) -> str:
        """What an unknown fingerprint was, what is known, and how to compute it right."""
        known = ", ".join(f"{fp.hex()} ({fingerprint_int64(fp)})" for fp in self._by_fingerprint)
        return (
            f"unknown writer schema fingerprint {fingerprint.hex()} "
            f"({fingerprint_int64(fingerprint)} as a signed 64-bit integer); known fingerprints "
            f"of {self.reader.name}: {known}. Compute the fingerprint of the Parsing Canonical "
            "Form per the Avro specification (it drops logicalType, doc and defaults); see "
            "`worker schemas --fingerprints`"
        )

    def _writer_by_id(self, schema_id: int) -> ParsedSchema:
        cached = self._by_registry_id.get(schema_id)
        if cached is not None:
            return cached
        if self._registry is None:
            raise UnknownSchemaError(
                f"Confluent-framed payload with schema id {schema_id}, "
                "but no schema registry is configured"
            )
        schema_json = self._registry.schema_by_id(schema_id)
        parsed = ParsedSchema.from_json(schema_json)
        if parsed.name != self.reader.name:
            raise SchemaMismatchError(
                f"schema id {schema_id} is {parsed.name}, expected {self.reader.name}"
            )
        writer = self._by_fingerprint.get(parsed.fingerprint, parsed)
        self._by_registry_id[schema_id] = writer
        return writer


def fingerprint_int64(fingerprint: bytes) -> int:
    """A wire fingerprint (8 bytes, little-endian) as a signed 64-bit integer: Java's ``long``
    from ``SchemaNormalization.parsingFingerprint64``."""
    return int.from_bytes(fingerprint, "little", signed=True)


def codec_for(
    name: str,
    *,
    registry: SchemaRegistry | None = None,
    topic: str | None = None,
    max_record_bytes: int = 1 << 20,
) -> AvroCodec:
    """A codec for one of the project's record types: it reads single-object payloads written
    with any released version of it (:func:`schema_history`) and knows the others as foreign.

    Raises:
        ConfigError: a schema file or its history is missing or not JSON.
    """
    others = tuple(load_schema(other) for other in SCHEMA_FILES if other != name)
    return AvroCodec(
        load_schema(name),
        registry=registry,
        subject=f"{topic}-value" if topic else None,
        extra_writer_schemas=schema_history(name),
        known_foreign_schemas=others,
        max_record_bytes=max_record_bytes,
    )
