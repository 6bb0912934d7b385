"""The batch validators (``to_browsing_events``, ``to_purchases``) against the one-record ones:
for any dict and key, the same typed record or the same exception (type and message).

Hypothesis example counts: 1500 batches of 1 to 4 records per validator, each record a valid
one with zero to three fields replaced by an edge case or an arbitrary value.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import worker.core.records as records_module
from worker.core.errors import InvalidRecordError
from worker.core.records import (
    EVENT_TYPES,
    MAX_CLOCK_SKEW_MS,
    MAX_ID_CHARS,
    MIN_EVENT_TIME_MS,
    BrowsingEvent,
    Purchase,
    to_browsing_event,
    to_browsing_events,
    to_purchase,
    to_purchases,
)

NOW_MS = 1_796_190_000_000


class StrSubclass(str):
    pass


ids = st.one_of(
    st.text(min_size=1, max_size=12),
    st.sampled_from(
        ["", " ", "\t\n", "\u3000", " x ", "x" * MAX_ID_CHARS, "y" * (MAX_ID_CHARS + 1)]
    ),
    st.text(
        alphabet=st.characters(codec="utf-8"), min_size=MAX_ID_CHARS, max_size=MAX_ID_CHARS + 1
    ),
    st.just("\ud800"),  # a lone surrogate: not UTF-8-encodable
    st.builds(StrSubclass, st.text(min_size=1, max_size=5)),
)
times = st.one_of(
    st.integers(MIN_EVENT_TIME_MS - 2, MIN_EVENT_TIME_MS + 2),
    st.integers(NOW_MS + MAX_CLOCK_SKEW_MS - 2, NOW_MS + MAX_CLOCK_SKEW_MS + 2),
    st.integers(-(2**64), 2**64),
    st.booleans(),
    st.floats(MIN_EVENT_TIME_MS, NOW_MS),
    st.none(),
    st.text(max_size=3),
)
prices = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e9, math.nextafter(1e9, 0), -1e-300, math.nan]),
    st.integers(-5, 5),
    st.booleans(),
)
anything = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=4), st.binary(max_size=4)
)
keys = st.one_of(
    st.none(),
    st.just(b""),
    st.binary(max_size=6),
    st.text(max_size=3),
    st.builds(bytearray, st.binary(max_size=3)),
)


def _valid_event(i: int) -> dict[str, Any]:
    return {
        "event_id": f"e-{i}-abcdef",
        "user_id": f"u{i:06}",
        "session_id": f"s-{i}",
        "event_type": EVENT_TYPES[i % 3],
        "product_id": f"p{i:05}",
        "category_id": f"c{i}" if i % 2 else None,
        "price": 12.5 if i % 2 else None,
        "event_time": NOW_MS - i,
    }


EVENT_EDGES = {
    "event_id": ids,
    "user_id": ids,
    "session_id": ids,
    "product_id": ids,
    "event_type": st.one_of(
        st.sampled_from([*EVENT_TYPES, "view", "", "BUY"]), anything, st.just([])
    ),
    "category_id": st.one_of(st.none(), st.text(max_size=3), anything),
    "price": prices,
    "event_time": times,
}


@st.composite
def event_cases(draw: st.DrawFn) -> tuple[dict[str, Any], Any]:
    record = _valid_event(draw(st.integers(0, 999)))
    for field in draw(st.lists(st.sampled_from([*EVENT_EDGES, "drop"]), max_size=3)):
        if field == "drop":
            record.pop(draw(st.sampled_from(sorted(record))), None)
        else:
            record[field] = draw(EVENT_EDGES[field])
    user = record.get("user_id")
    key = user.encode("utf-8", "replace") if isinstance(user, str) else b"u"
    return record, draw(st.one_of(st.just(key), keys)) if draw(st.booleans()) else key


def _fields(value: Any) -> Any:
    """Every field with its type, floats to the bit (the price's NaN or -0.0)."""
    return tuple(
        (type(v), struct.pack("<d", v) if isinstance(v, float) else v)
        for v in (getattr(value, name) for name in value.__slots__)
    )


def _one_outcome(one_fn: Any, record: dict[str, Any], key: Any) -> Any:
    try:
        result = one_fn(record, key, NOW_MS)
    except Exception as exc:  # noqa: BLE001 - the exception is the outcome compared
        return type(exc), str(exc)
    return type(result), _fields(result)


def _compare(batch_fn: Any, one_fn: Any, cases: list[tuple[dict[str, Any], Any]]) -> None:
    """The batch gives each case's outcome; an exception other than InvalidRecordError
    propagates from it as from the one-record function (the first such case's)."""
    expected = [_one_outcome(one_fn, record, key) for record, key in cases]
    try:
        results = batch_fn([r for r, _ in cases], [k for _, k in cases], NOW_MS)
    except Exception as exc:  # noqa: BLE001
        raised = [e for e in expected if issubclass(e[0], Exception)]
        first = next(e for e in raised if e[0] is not InvalidRecordError)
        assert (type(exc), str(exc)) == first
        return
    assert not any(e[0] not in (InvalidRecordError, BrowsingEvent, Purchase) for e in expected)
    for result, want in zip(results, expected, strict=True):
        if isinstance(result, InvalidRecordError):
            assert (type(result), str(result)) == want
        else:
            assert (type(result), _fields(result)) == want


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases=st.lists(event_cases(), min_size=1, max_size=4))
# An unencodable user_id: an empty key is refused before the encoding fails, another key not.
@example(cases=[({**_valid_event(1), "user_id": "\ud800"}, b"")])
@example(cases=[({**_valid_event(1), "user_id": "\ud800"}, b"u")])
@example(
    cases=[(_valid_event(1), b"u000001"), ({**_valid_event(2), "price": math.nan}, b"u000002")]
)
def test_to_browsing_events_is_to_browsing_event_for_each_record(
    cases: list[tuple[dict[str, Any], Any]],
) -> None:
    """Valid events and events with edge cases (blank, over-long, non-str or unencodable ids;
    bad keys; unknown or unhashable event types; NaN, negative, int or bool prices; bool,
    float, out-of-range times; missing fields)."""
    _compare(to_browsing_events, to_browsing_event, cases)


def test_valid_records_take_the_plain_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Valid records never reach the one-record functions (the property tests above would pass
    with a batch function that always called them)."""
    events = [_valid_event(i) for i in range(10)]
    purchases = [_valid_purchase(i) for i in range(10)]
    ks = [r["user_id"].encode() for r in events]
    expected_events = [to_browsing_event(r, k, NOW_MS) for r, k in zip(events, ks, strict=True)]
    expected_purchases = [to_purchase(r, k, NOW_MS) for r, k in zip(purchases, ks, strict=True)]

    def refuse(*_: Any) -> None:
        raise AssertionError("slow path taken")

    monkeypatch.setattr(records_module, "to_browsing_event", refuse)
    monkeypatch.setattr(records_module, "to_purchase", refuse)
    assert to_browsing_events(events, ks, NOW_MS) == expected_events
    assert to_purchases(purchases, ks, NOW_MS) == expected_purchases


def _valid_purchase(i: int) -> dict[str, Any]:
    return {
        "order_id": f"o-{i}",
        "user_id": f"u{i:06}",
        "session_id": f"s-{i}" if i % 2 else None,
        "product_id": f"p{i:05}",
        "quantity": 1 + i % 3,
        "price": 12.5 if i % 2 else None,
        "event_time": NOW_MS - i,
    }


PURCHASE_EDGES = {
    "order_id": ids,
    "user_id": ids,
    "product_id": ids,
    "session_id": st.one_of(st.none(), ids),
    "quantity": st.one_of(st.integers(-2, 3), st.booleans(), anything),
    "price": prices,
    "event_time": times,
}


@st.composite
def purchase_cases(draw: st.DrawFn) -> tuple[dict[str, Any], Any]:
    record = _valid_purchase(draw(st.integers(0, 999)))
    for field in draw(st.lists(st.sampled_from([*PURCHASE_EDGES, "drop"]), max_size=3)):
        if field == "drop":
            record.pop(draw(st.sampled_from(sorted(record))), None)
        else:
            record[field] = draw(PURCHASE_EDGES[field])
    user = record.get("user_id")
    key = user.encode("utf-8", "replace") if isinstance(user, str) else b"u"
    return record, draw(st.one_of(st.just(key), keys)) if draw(st.booleans()) else key


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases=st.lists(purchase_cases(), min_size=1, max_size=4))
@example(cases=[({**_valid_purchase(1), "user_id": "\ud800"}, b"")])
@example(cases=[({**_valid_purchase(1), "user_id": "\ud800"}, b"u")])
@example(cases=[({**_valid_purchase(1), "quantity": True}, b"u000001")])
def test_to_purchases_is_to_purchase_for_each_record(
    cases: list[tuple[dict[str, Any], Any]],
) -> None:
    """As for events, with quantities below 1, bool or not int, and a missing quantity."""
    _compare(to_purchases, to_purchase, cases)
