"""examples/consume_suggestions.py decodes what the worker writes, in both framings, with the
schema file alone (README.md, "Consuming suggestions")."""

from __future__ import annotations

import importlib.util
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from worker.core.records import BrowsingEvent, RankedProduct, SourceRef
from worker.testing import InMemorySchemaRegistry, Suggestion
from worker.wire.codec import codec_for
from worker.wire.suggestion_writer import SuggestionWriter

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "consume_suggestions.py"
EVENT_TIME_MS = 1_764_590_400_123
PRODUCED_MS = EVENT_TIME_MS + 37


def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("consume_suggestions", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def event(product_id: str = "p-new-1") -> BrowsingEvent:
    return BrowsingEvent(
        event_id="e-42",
        user_id="u-7",
        session_id="s-1",
        event_type=0,
        product_id=product_id,
        category_id=None,
        price=None,
        event_time_ms=EVENT_TIME_MS,
    )


def suggestion(n_products: int) -> Suggestion:
    return Suggestion(
        event=event(),
        source=SourceRef("browsing-events", 3, 1234),
        model_version="20261201-120000",
        products=tuple(RankedProduct(f"p-{i}", i, 1.0 / i) for i in range(1, n_products + 1)),
    )


def utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def assert_decoded(decoded: dict[str, Any], expected: dict[str, Any]) -> None:
    # fastavro applies the schema's timestamp-millis logical type: aware UTC datetimes.
    assert decoded["event_time"] == utc(expected["event_time"])
    assert decoded["produced_time"] == utc(expected["produced_time"])
    rest = {k: v for k, v in decoded.items() if k not in ("event_time", "produced_time")}
    assert rest == {k: v for k, v in expected.items() if k not in ("event_time", "produced_time")}


@pytest.mark.parametrize("n_products", [10, 3, 0], ids=["K", "short", "empty"])
def test_decodes_single_object_encoding_the_default(n_products: int) -> None:
    record = suggestion(n_products).to_avro(PRODUCED_MS)
    payload = codec_for("ProductSuggestion").encode(record)
    assert payload[:2] == b"\xc3\x01"
    assert_decoded(example().decode(payload), record)


def test_decodes_confluent_framing() -> None:
    record = suggestion(10).to_avro(PRODUCED_MS)
    codec = codec_for(
        "ProductSuggestion", registry=InMemorySchemaRegistry(), topic="product-suggestions"
    )
    payload = codec.encode(record)
    assert payload[:1] == b"\x00"
    assert_decoded(example().decode(payload), record)


def test_decodes_the_workers_batched_writer() -> None:
    """The bytes of the worker's hot path (SuggestionWriter), not only the reference codec."""
    codec = codec_for("ProductSuggestion")
    catalogue = [f"p-{i}" for i in range(20)]
    writer = SuggestionWriter(codec.header(), catalogue, "browsing-events", "20261201-120000")
    items = np.array([[4, 7, 1]])
    scores = np.array([[0.9, 0.5, 0.25]])
    (payload,) = writer.encode_batch([event()], [3], [1234], items, scores, PRODUCED_MS)
    decoded = example().decode(payload)
    assert decoded["suggestion_id"] == "browsing-events/3/1234"
    assert decoded["user_id"] == "u-7"
    assert [(p["product_id"], p["rank"], p["score"]) for p in decoded["products"]] == [
        ("p-4", 1, 0.9),
        ("p-7", 2, 0.5),
        ("p-1", 3, 0.25),
    ]
    assert decoded["event_time"] == utc(EVENT_TIME_MS)


def test_knows_every_released_writer_schema() -> None:
    """The example's fingerprint table is the codec's: every version in schemas/history/."""
    module = example()
    assert set(module.WRITERS) == codec_for("ProductSuggestion").writer_fingerprints
    assert module.FINGERPRINT in module.WRITERS


def test_fingerprint_is_the_documented_one_and_unknown_framings_fail() -> None:
    module = example()
    assert codec_for("ProductSuggestion").reader.fingerprint == module.FINGERPRINT
    assert module.FINGERPRINT.hex() == "2df0f287da351f0f"  # README.md, "Wire format"
    payload = codec_for("ProductSuggestion").encode(suggestion(2).to_avro(PRODUCED_MS))
    with pytest.raises(ValueError, match="unknown ProductSuggestion fingerprint"):
        module.decode(payload[:2] + b"\x00" * 8 + payload[10:])
    with pytest.raises(ValueError, match="neither"):
        module.decode(b"{}")
