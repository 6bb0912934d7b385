"""Dead-letter records: the original bytes plus headers saying why and where from.

Headers (all UTF-8 strings):

=====================  =====================================================
``dlq.error.class``    the error class, e.g. ``CorruptPayloadError``
``dlq.error.message``  what was wrong (no payload content beyond a short hint)
``dlq.source.topic``   topic the record was read from
``dlq.source.partition`` / ``dlq.source.offset`` / ``dlq.source.timestamp``
``dlq.original.bytes`` size of the original value; the value is cut to the
                       dead-letter limit only when larger (``dlq.truncated``)
=====================  =====================================================

The original record's own headers are kept after these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_MESSAGE_CHARS = 1000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def dead_letter_of(error: Exception, record: Any, max_value_bytes: int) -> DeadLetter:
    """The dead-letter record of a consumed record (confluent_kafka's ``Message`` or any object
    with its accessors) that cannot be answered."""
    return dead_letter(
        error=error,
        topic=record.topic(),
        partition=record.partition(),
        offset=record.offset(),
        timestamp_ms=record.timestamp()[1],
        key=record.key(),
        value=record.value(),
        original_headers=record.headers(),
        max_value_bytes=max_value_bytes,
    )


def dead_letter(
    *,
    error: Exception,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    key: bytes | None,
    value: bytes | None,
    original_headers: list[tuple[str, bytes]] | None,
    max_value_bytes: int,
) -> DeadLetter:
    """Build the dead-letter record of one bad input record."""
    size = len(value) if value is not None else -1
    headers = [
        ("dlq.error.class", type(error).__name__.encode()),
        ("dlq.error.message", str(error)[:MAX_MESSAGE_CHARS].encode("utf-8", "replace")),
        ("dlq.source.topic", topic.encode()),
        ("dlq.source.partition", str(partition).encode()),
        ("dlq.source.offset", str(offset).encode()),
        ("dlq.source.timestamp", str(timestamp_ms if timestamp_ms is not None else -1).encode()),
        ("dlq.original.bytes", str(size).encode()),
    ]
    if value is not None and size > max_value_bytes:
        value = value[:max_value_bytes]
        headers.append(("dlq.truncated", b"true"))
    headers.extend(original_headers or [])
    return DeadLetter(key=key, value=value, headers=headers)
