"""Validation of decoded records (``worker.core.records``): a usable record becomes a typed record,
anything else an InvalidRecordError (a data error: dead-lettered, processing goes on)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from worker.core.errors import DataError, InvalidRecordError
from worker.core.records import (
    ADD_TO_CART,
    MAX_CLOCK_SKEW_MS,
    MAX_ID_CHARS,
    MIN_EVENT_TIME_MS,
    REMOVE_FROM_CART,
    VIEW,
    BrowsingEvent,
    Purchase,
    RankedProduct,
    SourceRef,
    check_event_time,
    to_browsing_event,
    to_purchase,
)
from worker.testing import Suggestion

NOW_MS = 1_700_000_000_000
KEY = b"user-1"

EVENT: dict[str, Any] = {
    "event_id": "e-1",
    "user_id": "user-1",
    "session_id": "s-1",
    "event_type": "VIEW",
    "product_id": "p-1",
    "category_id": "c-1",
    "price": 9.99,
    "event_time": NOW_MS - 1000,
}
PURCHASE: dict[str, Any] = {
    "order_id": "o-1",
    "user_id": "user-1",
    "session_id": "s-1",
    "product_id": "p-1",
    "quantity": 1,
    "price": 9.99,
    "event_time": NOW_MS - 1000,
}


def test_valid_browsing_event_becomes_typed_record() -> None:
    """A well-formed event with matching key passes, with the event type as its code."""
    event = to_browsing_event(dict(EVENT), KEY, NOW_MS)
    assert event == BrowsingEvent(
        event_id="e-1",
        user_id="user-1",
        session_id="s-1",
        event_type=VIEW,
        product_id="p-1",
        category_id="c-1",
        price=9.99,
        event_time_ms=NOW_MS - 1000,
    )


@pytest.mark.parametrize(
    ("symbol", "code"),
    [("VIEW", VIEW), ("ADD_TO_CART", ADD_TO_CART), ("REMOVE_FROM_CART", REMOVE_FROM_CART)],
)
def test_event_type_symbols_map_to_codes(symbol: str, code: int) -> None:
    """Each EventType symbol maps to its code."""
    assert to_browsing_event({**EVENT, "event_type": symbol}, KEY, NOW_MS).event_type == code


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"price": None, "category_id": None}, id="null optional fields"),
        pytest.param({"price": 0.0}, id="free product"),
        pytest.param({"event_time": MIN_EVENT_TIME_MS}, id="exactly 2000-01-01"),
        pytest.param({"event_time": NOW_MS + MAX_CLOCK_SKEW_MS}, id="exactly 24 h ahead"),
        pytest.param({"event_id": "x" * MAX_ID_CHARS}, id="id at the length limit"),
        pytest.param({"user_id": "ünïcode-ユーザー"}, id="non-ASCII user id"),
    ],
)
def test_boundary_values_still_pass(changes: dict[str, Any]) -> None:
    """Values at the edge of each rule are accepted."""
    record = {**EVENT, **changes}
    event = to_browsing_event(record, record["user_id"].encode("utf-8"), NOW_MS)
    assert event.event_time_ms == record["event_time"]


EVENT_CASES = [
    pytest.param({}, None, id="null key"),
    pytest.param({}, b"", id="empty key"),
    pytest.param({}, b"user-2", id="key of another user"),
    pytest.param({}, b"USER-1", id="key differs in case"),
    pytest.param({"user_id": ""}, b"", id="empty user_id"),
    pytest.param({"user_id": "   "}, b"   ", id="blank user_id"),
    pytest.param({"user_id": None}, KEY, id="null user_id"),
    pytest.param({"event_id": ""}, KEY, id="empty event_id"),
    pytest.param({"session_id": ""}, KEY, id="empty session_id"),
    pytest.param({"product_id": " "}, KEY, id="blank product_id"),
    pytest.param({"product_id": None}, KEY, id="missing product_id"),
    pytest.param({"event_id": "x" * (MAX_ID_CHARS + 1)}, KEY, id="overlong id"),
    pytest.param({"event_type": "PURCHASE"}, KEY, id="unknown event type"),
    pytest.param({"event_type": None}, KEY, id="null event type"),
    pytest.param({"event_time": MIN_EVENT_TIME_MS - 1}, KEY, id="before 2000"),
    pytest.param({"event_time": 0}, KEY, id="epoch zero"),
    pytest.param({"event_time": -5}, KEY, id="negative time"),
    pytest.param({"event_time": 1_700_000_000}, KEY, id="seconds instead of milliseconds"),
    pytest.param({"event_time": NOW_MS + MAX_CLOCK_SKEW_MS + 1}, KEY, id="over a day ahead"),
    pytest.param({"event_time": NOW_MS * 1000}, KEY, id="microseconds instead of milliseconds"),
    pytest.param({"event_time": None}, KEY, id="null time"),
    pytest.param({"event_time": True}, KEY, id="boolean time"),
    pytest.param({"event_time": float(NOW_MS)}, KEY, id="float time"),
    pytest.param({"price": -0.01}, KEY, id="negative price"),
    pytest.param({"price": 1e9}, KEY, id="absurd price"),
    pytest.param({"price": math.inf}, KEY, id="infinite price"),
    pytest.param({"price": math.nan}, KEY, id="NaN price"),
]


@pytest.mark.parametrize(("changes", "key"), EVENT_CASES)
def test_unusable_browsing_event_is_invalid_record_error(
    changes: dict[str, Any], key: bytes | None
) -> None:
    """Each broken rule raises InvalidRecordError (a DataError), with a message saying why."""
    with pytest.raises(InvalidRecordError) as raised:
        to_browsing_event({**EVENT, **changes}, key, NOW_MS)
    assert isinstance(raised.value, DataError)
    assert str(raised.value)


def test_error_message_never_echoes_the_key_bytes() -> None:
    """The key mismatch message says what is wrong without copying the key (may be personal)."""
    with pytest.raises(InvalidRecordError) as raised:
        to_browsing_event(dict(EVENT), b"someone-else@example.com", NOW_MS)
    assert "someone-else" not in str(raised.value)


def test_valid_purchase_becomes_typed_record() -> None:
    """A well-formed purchase line with matching key passes."""
    assert to_purchase(dict(PURCHASE), KEY, NOW_MS) == Purchase(
        order_id="o-1", user_id="user-1", product_id="p-1", event_time_ms=NOW_MS - 1000
    )


PURCHASE_CASES = [
    pytest.param({}, None, id="null key"),
    pytest.param({}, b"", id="empty key"),
    pytest.param({}, b"user-2", id="key of another user"),
    pytest.param({"user_id": ""}, b"", id="empty user_id"),
    pytest.param({"order_id": ""}, KEY, id="empty order_id"),
    pytest.param({"order_id": None}, KEY, id="null order_id"),
    pytest.param({"product_id": "  "}, KEY, id="blank product_id"),
    pytest.param({"event_time": MIN_EVENT_TIME_MS - 1}, KEY, id="before 2000"),
    pytest.param({"event_time": NOW_MS + MAX_CLOCK_SKEW_MS + 1}, KEY, id="over a day ahead"),
    pytest.param({"event_time": None}, KEY, id="null time"),
]


@pytest.mark.parametrize(("changes", "key"), PURCHASE_CASES)
def test_unusable_purchase_is_invalid_record_error(
    changes: dict[str, Any], key: bytes | None
) -> None:
    """Purchases follow the same key, id and time rules as events."""
    with pytest.raises(InvalidRecordError):
        to_purchase({**PURCHASE, **changes}, key, NOW_MS)


@pytest.mark.parametrize("price", [math.nan, -1.0, math.inf])
def test_purchase_with_bad_price_is_invalid_record_error(price: float) -> None:
    """A purchase line with an implausible price is rejected like an event's."""
    with pytest.raises(InvalidRecordError):
        to_purchase({**PURCHASE, "price": price}, KEY, NOW_MS)


@pytest.mark.parametrize("quantity", [0, -3])
def test_purchase_with_non_positive_quantity_is_invalid_record_error(quantity: int) -> None:
    """A purchase line with quantity < 1 breaks the schema's documented rule."""
    with pytest.raises(InvalidRecordError):
        to_purchase({**PURCHASE, "quantity": quantity}, KEY, NOW_MS)


def test_check_event_time_returns_the_time_when_plausible() -> None:
    """check_event_time passes plausible times through unchanged."""
    assert check_event_time(NOW_MS, NOW_MS) == NOW_MS


def test_suggestion_to_avro_names_its_cause() -> None:
    """The ProductSuggestion dict carries a deterministic id '<topic>/<partition>/<offset>',
    the causing event, the model version and 1-based ranked products."""
    event = to_browsing_event(dict(EVENT), KEY, NOW_MS)
    suggestion = Suggestion(
        event=event,
        source=SourceRef("browsing-events", 3, 42),
        model_version="v1",
        products=(RankedProduct("p-9", 1, 0.9), RankedProduct("p-8", 2, 0.5)),
    )
    record = suggestion.to_avro(produced_time_ms=NOW_MS)
    assert record["suggestion_id"] == "browsing-events/3/42"
    assert (record["source_topic"], record["source_partition"], record["source_offset"]) == (
        "browsing-events",
        3,
        42,
    )
    assert record["event_id"] == "e-1" and record["user_id"] == "user-1"
    assert record["event_time"] == NOW_MS - 1000 and record["produced_time"] == NOW_MS
    assert record["products"] == [
        {"product_id": "p-9", "rank": 1, "score": 0.9},
        {"product_id": "p-8", "rank": 2, "score": 0.5},
    ]
