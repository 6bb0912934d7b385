"""Read product-suggestions with the schema files alone (confluent-kafka + fastavro), keeping the
freshest suggestion per user: README.md, "Consuming suggestions".

    KAFKA_BOOTSTRAP_SERVERS=localhost:9092 python examples/consume_suggestions.py
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import fastavro
import fastavro.schema

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
SCHEMA_JSON = json.loads((SCHEMAS / "product_suggestion.avsc").read_text("utf-8"))
SCHEMA = fastavro.parse_schema(SCHEMA_JSON, named_schemas={})


def fingerprint(schema_json: dict[str, Any]) -> bytes:
    """CRC-64-AVRO of the Parsing Canonical Form: the 8 bytes after C3 01."""
    canonical = fastavro.schema.to_parsing_canonical_form(schema_json)
    return bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))


#: Every writer schema ever released (schemas/history/product_suggestion/v<N>.avsc), by
#: fingerprint: single-object encoding names the writer schema by its fingerprint only.
WRITERS = {
    fingerprint(version): fastavro.parse_schema(version, named_schemas={})
    for version in (
        json.loads(path.read_text("utf-8"))
        for path in sorted((SCHEMAS / "history" / "product_suggestion").glob("v*.avsc"))
    )
}
FINGERPRINT = fingerprint(SCHEMA_JSON)


def decode(value: bytes) -> dict[str, Any]:
    """One Kafka value: Avro single-object encoding (C3 01 + 8-byte fingerprint, the default)
    or Confluent framing (00 + 4-byte schema id, with a schema registry) + the Avro body."""
    if value[:2] == b"\xc3\x01":
        writer = WRITERS.get(value[2:10])
        if writer is None:  # a version newer than this checkout: get its .avsc and resolve
            raise ValueError(f"unknown ProductSuggestion fingerprint {value[2:10].hex()}")
        # An older writer is resolved into today's schema (fields it lacks at their defaults);
        # today's own needs no resolution (fastavro skips it when both schemas are equal).
        return fastavro.schemaless_reader(io.BytesIO(value[10:]), writer, SCHEMA)
    if value[:1] == b"\x00":  # assumes the registry's schema is this file's; else fetch it
        return fastavro.schemaless_reader(io.BytesIO(value[5:]), SCHEMA)
    raise ValueError("neither single-object encoding nor Confluent framing")


def main() -> None:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
            "group.id": "suggestions-example",
            "auto.offset.reset": "latest",
            "isolation.level": "read_committed",  # needed in exactly-once mode, harmless else
        }
    )
    consumer.subscribe([os.environ.get("SUGGESTIONS_TOPIC", "product-suggestions")])
    freshest: dict[str, dict[str, Any]] = {}  # user_id (the record key) -> suggestion
    try:
        while True:
            msg = consumer.poll(1.0)
            if msg is None or msg.error() is not None:
                continue
            s = decode(msg.value())
            old = freshest.get(s["user_id"])
            # One user is on one partition, in order: a later record answers a later event,
            # unless it is a redelivered duplicate (at-least-once) of the one held.
            if old is None or (
                s["suggestion_id"] != old["suggestion_id"] and s["event_time"] >= old["event_time"]
            ):
                freshest[s["user_id"]] = s
                top = [p["product_id"] for p in s["products"]]  # may be shorter than K
                print(s["user_id"], s["suggestion_id"], s["event_time"], top[:5])
    finally:
        consumer.close()


if __name__ == "__main__":
    main()
