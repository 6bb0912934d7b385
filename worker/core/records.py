"""Typed records of the core, and the validation that turns decoded dicts into them.

Decoding (``worker.wire.codec``) proves the bytes are a record of the right type; validation here
proves the record is usable: ids present, key agreeing with ``user_id``, a plausible event time.
Whether the model knows the product does not make an event invalid: a product it does not know is
a cold start, served through the live catalogue (``worker.core.live_catalogue``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from worker.core.errors import InvalidRecordError

EVENT_TYPES = ("VIEW", "ADD_TO_CART", "REMOVE_FROM_CART")
EVENT_TYPE_CODE = {name: code for code, name in enumerate(EVENT_TYPES)}
VIEW, ADD_TO_CART, REMOVE_FROM_CART = range(3)

#: Events before 2000-01-01 are not plausible for this shop.
MIN_EVENT_TIME_MS = 946_684_800_000
#: How far in the future (relative to the reader's clock) an event time may lie.
MAX_CLOCK_SKEW_MS = 24 * 3600 * 1000
MAX_ID_CHARS = 256


@dataclass(frozen=True, slots=True)
class BrowsingEvent:
    """A validated browsing event. ``event_type`` is a code of :data:`EVENT_TYPES`."""

    event_id: str
    user_id: str
    session_id: str
    event_type: int
    product_id: str
    category_id: str | None
    price: float | None
    event_time_ms: int


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where a record came from (for suggestions and dead letters)."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class RankedProduct:
    product_id: str
    rank: int
    score: float


def _require_id(record: dict[str, Any], field: str) -> str:
    value = record.get(field)
    if not isinstance(value, str) or not value.strip():
        raise InvalidRecordError(f"field {field!r} is missing or empty")
    if len(value) > MAX_ID_CHARS:
        raise InvalidRecordError(f"field {field!r} is {len(value)} characters (max {MAX_ID_CHARS})")
    return value


def _check_price(price: Any) -> float | None:
    if price is not None and not (price >= 0.0 and price < 1e9):  # also rejects NaN
        raise InvalidRecordError(f"price {price!r} is not a plausible amount")
    return price  # type: ignore[no-any-return]


def check_event_time(event_time_ms: Any, now_ms: int) -> int:
    """Return the event time if plausible.

    Raises:
        InvalidRecordError: not an int, before 2000, or more than a day ahead of ``now_ms``.
    """
    if not isinstance(event_time_ms, int) or isinstance(event_time_ms, bool):
        raise InvalidRecordError(f"event_time {event_time_ms!r} is not epoch milliseconds")
    if event_time_ms < MIN_EVENT_TIME_MS:
        raise InvalidRecordError(f"event_time {event_time_ms} is before 2000-01-01")
    if event_time_ms > now_ms + MAX_CLOCK_SKEW_MS:
        raise InvalidRecordError(
            f"event_time {event_time_ms} is more than 24 h ahead of the clock ({now_ms})"
        )
    return event_time_ms


def validate_key(key: bytes | None, user_id: str) -> None:
    """The Kafka key must be the UTF-8 ``user_id``.

    Raises:
        InvalidRecordError: null, empty, or a different user.
    """
    if not key:
        raise InvalidRecordError("record key is null or empty; expected the user_id")
    if key != user_id.encode("utf-8"):
        raise InvalidRecordError("record key does not match the payload's user_id")


def to_browsing_event(record: dict[str, Any], key: bytes | None, now_ms: int) -> BrowsingEvent:
    """Validate a decoded ``BrowsingEvent`` dict.

    Raises:
        InvalidRecordError: see :func:`validate_key`, :func:`check_event_time`, empty ids,
            unknown event type.
    """
    user_id = _require_id(record, "user_id")
    validate_key(key, user_id)
    event_type = EVENT_TYPE_CODE.get(record.get("event_type"))  # type: ignore[arg-type]
    if event_type is None:
        raise InvalidRecordError(f"unknown event_type {record.get('event_type')!r}")
    price = _check_price(record.get("price"))
    return BrowsingEvent(
        event_id=_require_id(record, "event_id"),
        user_id=user_id,
        session_id=_require_id(record, "session_id"),
        event_type=event_type,
        product_id=_require_id(record, "product_id"),
        category_id=record.get("category_id"),
        price=price,
        event_time_ms=check_event_time(record.get("event_time"), now_ms),
    )


def _slot_setters(cls: type, names: tuple[str, ...]) -> tuple[Any, ...]:
    """The slot descriptors' ``__set__`` of a frozen, slotted dataclass, in field order.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__`` (a name
    lookup and a call per field): about half of the batch path's validation cost. The batch
    functions below make the same instances by setting the slots directly; the names must be
    the class's fields, all of them, so that a field added later fails here, at import.
    """
    if names != tuple(f.name for f in fields(cls)):
        raise TypeError(f"{cls.__name__} fields are not {names}")
    return tuple(cls.__dict__[name].__set__ for name in names)


_EVENT_SLOTS = _slot_setters(
    BrowsingEvent,
    (
        "event_id",
        "user_id",
        "session_id",
        "event_type",
        "product_id",
        "category_id",
        "price",
        "event_time_ms",
    ),
)


def to_browsing_events(
    records: Sequence[dict[str, Any]], keys: Sequence[bytes | None], now_ms: int
) -> list[BrowsingEvent | InvalidRecordError]:
    """:func:`to_browsing_event` over a batch: for each record and key, in order, the event it
    returns or the error it raises (the same type and message; an exception other than
    :class:`InvalidRecordError` propagates, as from it).

    A record that passes every check on exact types (ids non-blank ``str`` of at most
    :data:`MAX_ID_CHARS`, key the UTF-8 ``user_id``, a known symbol, a ``float`` price or None,
    an ``int`` time in range) is made here, in a few comparisons; any other record goes
    through :func:`to_browsing_event` itself, which says what is wrong (or accepts it: an int
    price, a str subclass).
    """
    new = object.__new__
    codes = EVENT_TYPE_CODE
    s_event, s_user, s_session, s_type, s_product, s_category, s_price, s_time = _EVENT_SLOTS
    latest = now_ms + MAX_CLOCK_SKEW_MS
    out: list[BrowsingEvent | InvalidRecordError] = []
    append = out.append
    for record, key in zip(records, keys, strict=True):
        get = record.get
        user_id, event_id, session_id, product_id = (
            get("user_id"),
            get("event_id"),
            get("session_id"),
            get("product_id"),
        )
        event_type, price, event_time = get("event_type"), get("price"), get("event_time")
        if (
            type(user_id) is str
            and type(event_id) is str
            and type(session_id) is str
            and type(product_id) is str
            and type(key) is bytes
            and key  # before encoding user_id, as validate_key
            and type(event_type) is str
            and type(event_time) is int
            and (price is None or (type(price) is float and 0.0 <= price < 1e9))
            and MIN_EVENT_TIME_MS <= event_time <= latest
            and event_type in codes
            and len(user_id) <= MAX_ID_CHARS
            and len(event_id) <= MAX_ID_CHARS
            and len(session_id) <= MAX_ID_CHARS
            and len(product_id) <= MAX_ID_CHARS
            and user_id.strip()
            and event_id.strip()
            and session_id.strip()
            and product_id.strip()
            and key == user_id.encode("utf-8")
        ):
            event = new(BrowsingEvent)
            s_event(event, event_id)
            s_user(event, user_id)
            s_session(event, session_id)
            s_type(event, codes[event_type])
            s_product(event, product_id)
            s_category(event, get("category_id"))
            s_price(event, price)
            s_time(event, event_time)
            append(event)
            continue
        try:
            append(to_browsing_event(record, key, now_ms))
        except InvalidRecordError as exc:
            append(exc)
    return out


@dataclass(frozen=True, slots=True)
class Purchase:
    """A validated purchase line."""

    order_id: str
    user_id: str
    product_id: str
    event_time_ms: int


def to_purchase(record: dict[str, Any], key: bytes | None, now_ms: int) -> Purchase:
    """Validate a decoded ``PurchaseOutcome`` dict (same rules as events; quantity >= 1).

    Raises:
        InvalidRecordError: as for events, or a quantity below 1.
    """
    user_id = _require_id(record, "user_id")
    validate_key(key, user_id)
    _check_price(record.get("price"))
    quantity = record.get("quantity", 1)
    if not isinstance(quantity, int) or quantity < 1:
        raise InvalidRecordError(f"quantity {quantity!r} is below 1")
    return Purchase(
        order_id=_require_id(record, "order_id"),
        user_id=user_id,
        product_id=_require_id(record, "product_id"),
        event_time_ms=check_event_time(record.get("event_time"), now_ms),
    )


_PURCHASE_SLOTS = _slot_setters(Purchase, ("order_id", "user_id", "product_id", "event_time_ms"))


def to_purchases(
    records: Sequence[dict[str, Any]], keys: Sequence[bytes | None], now_ms: int
) -> list[Purchase | InvalidRecordError]:
    """:func:`to_purchase` over a batch, as :func:`to_browsing_events` is over events: the same
    purchase or the same error for each record; records off the plain path go through
    :func:`to_purchase` itself."""
    new = object.__new__
    s_order, s_user, s_product, s_time = _PURCHASE_SLOTS
    latest = now_ms + MAX_CLOCK_SKEW_MS
    out: list[Purchase | InvalidRecordError] = []
    append = out.append
    for record, key in zip(records, keys, strict=True):
        get = record.get
        user_id, order_id, product_id = get("user_id"), get("order_id"), get("product_id")
        price, quantity, event_time = get("price"), get("quantity", 1), get("event_time")
        if (
            type(user_id) is str
            and type(order_id) is str
            and type(product_id) is str
            and type(key) is bytes
            and key  # before encoding user_id, as validate_key
            and type(quantity) is int
            and quantity >= 1
            and type(event_time) is int
            and (price is None or (type(price) is float and 0.0 <= price < 1e9))
            and MIN_EVENT_TIME_MS <= event_time <= latest
            and len(user_id) <= MAX_ID_CHARS
            and len(order_id) <= MAX_ID_CHARS
            and len(product_id) <= MAX_ID_CHARS
            and user_id.strip()
            and order_id.strip()
            and product_id.strip()
            and key == user_id.encode("utf-8")
        ):
            purchase = new(Purchase)
            s_order(purchase, order_id)
            s_user(purchase, user_id)
            s_product(purchase, product_id)
            s_time(purchase, event_time)
            append(purchase)
            continue
        try:
            append(to_purchase(record, key, now_ms))
        except InvalidRecordError as exc:
            append(exc)
    return out
