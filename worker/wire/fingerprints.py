"""The fingerprints of the package's schemas, as ``worker schemas --fingerprints`` prints them.

A producer in another language that writes Avro single-object encoding must put, after the
marker ``C3 01``, the CRC-64-AVRO fingerprint of its writer schema's *Parsing Canonical Form* as
the Avro specification defines it, 8 bytes little-endian. This module shows, for each record type
of the project, the exact values the reader knows (those :class:`~worker.wire.codec.AvroCodec`
computes), so that a producer's own computation can be compared with them byte for byte.

The canonical form keeps only ``type``, ``name``, ``fields``, ``symbols``, ``items``,
``values`` and ``size``: ``logicalType`` is dropped, so ``{"type": "long", "logicalType":
"timestamp-millis"}`` is ``"long"``. A library that keeps the annotated primitive as
``{"type":"long"}`` computes another fingerprint, and its events are dead-lettered as
``UnknownSchemaError`` (see the README, "Writing events from other languages").

Pure: no Kafka, no registry.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.wire.codec import (
    SCHEMA_FILES,
    SINGLE_OBJECT_MARKER,
    ParsedSchema,
    fingerprint_int64,
    load_schema,
    schema_history,
)


@dataclass(frozen=True)
class SchemaFingerprint:
    """One record schema: its full name, canonical form and fingerprint."""

    schema: str  # the package's short name, e.g. "BrowsingEvent"
    full_name: str  # e.g. "com.shop.recommender.BrowsingEvent"
    file: str  # e.g. "browsing_event.avsc"
    canonical: str  # Parsing Canonical Form (Avro specification)
    fingerprint: bytes  # CRC-64-AVRO, 8 bytes little-endian, as written on the wire
    released: tuple[bytes, ...] = ()  # of each released version, v1 first (schemas/history/)

    @property
    def wire_hex(self) -> str:
        """The 8 fingerprint bytes in the order they are written on the wire (little-endian)."""
        return self.fingerprint.hex()

    @property
    def as_int64(self) -> int:
        """The fingerprint as a signed 64-bit integer (Java's ``long`` from
        ``SchemaNormalization.parsingFingerprint64``), whose little-endian bytes are on the wire."""
        return fingerprint_int64(self.fingerprint)

    @property
    def header_hex(self) -> str:
        """The whole single-object header: marker ``c301`` then the fingerprint."""
        return (SINGLE_OBJECT_MARKER + self.fingerprint).hex()


def schema_fingerprints() -> list[SchemaFingerprint]:
    """The fingerprint of every schema of the package, in ``SCHEMA_FILES`` order, with those of
    its released versions (all of which the codec decodes).

    Raises:
        ConfigError: a schema file or its history is missing or not JSON.
    """
    out = []
    for name, file in SCHEMA_FILES.items():
        parsed = ParsedSchema.from_json(load_schema(name))
        out.append(
            SchemaFingerprint(
                schema=name,
                full_name=parsed.name,
                file=file,
                canonical=parsed.canonical,
                fingerprint=parsed.fingerprint,
                released=tuple(
                    ParsedSchema.from_json(version).fingerprint for version in schema_history(name)
                ),
            )
        )
    return out


def render(fingerprints: list[SchemaFingerprint], *, canonical: bool = False) -> str:
    """The text ``worker schemas --fingerprints`` prints: one block per schema."""
    blocks = []
    for fp in fingerprints:
        lines = [
            f"{fp.full_name} (schemas/{fp.file})",
            f"  fingerprint, wire bytes (little-endian hex): {fp.wire_hex}",
            f"  fingerprint, signed 64-bit integer: {fp.as_int64}",
            f"  single-object header: {fp.header_hex}",
        ]
        if fp.released:
            versions = ", ".join(f"v{n} {f.hex()}" for n, f in enumerate(fp.released, start=1))
            lines.append(f"  released versions, all read (wire hex): {versions}")
        if canonical:
            lines.append(f"  canonical form: {fp.canonical}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
