"""Read product-suggestions with the schema file alone (confluent-kafka + fastavro), keeping the
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

SCHEMA_JSON = json.loads(
    (Path(__file__).resolve().parents[1] / "schemas" / "product_suggestion.avsc").read_text("utf-8")
)
SCHEMA = fastavro.parse_schema(SCHEMA_JSON)
CANONICAL = fastavro.schema.to_parsing_canonical_form(SCHEMA_JSON)
FINGERPRINT = bytes.fromhex(fastavro.schema.fingerprint(CANONICAL, "CRC-64-AVRO"))


def decode(value: bytes) -> dict[str, Any]:
    """One Kafka value: Avro single-object encoding (C3 01 + 8-byte fingerprint, the default)
    or Confluent framing (00 + 4-byte schema id, with a schema registry) + the Avro body."""
    if value[:2] == b"\xc3\x01":
        if value[2:10] != FINGERPRINT:  # another schema version: get that .avsc and resolve
            raise ValueError(f"unknown ProductSuggestion fingerprint {value[2:10].hex()}")
        body = value[10:]
    elif value[:1] == b"\x00":  # assumes the registry's schema is this file's; else fetch it
        body = value[5:]
    else:
        raise ValueError("neither single-object encoding nor Confluent framing")
    return fastavro.schemaless_reader(io.BytesIO(body), SCHEMA)


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
