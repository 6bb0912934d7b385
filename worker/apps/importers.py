"""Real clickstreams into dataset directories: DIGINETICA, RetailRocket and a generic CSV.

Pure file-to-records code (no Kafka): each importer reads its input files, maps their rows to
browsing events and purchase lines of our schemas, and :func:`import_dataset` writes them with
:func:`worker.apps.dataset.write_dataset`. ``worker dataset import`` is the command line.

Common rules:

* records are written sorted by (``event_time`` in epoch ms, input row);
* accepted rows are kept columnar (a few bytes a row: numbers and indexes of interned strings),
  not as dicts; the record dicts are built one at a time while writing;
* a row that cannot be used is skipped and counted by reason (``unparseable_time``,
  ``empty_user``, ``empty_product``, ``empty_session``, ``unknown_event_type``, ...); the counts
  go to ``dataset.json`` (``skipped``) and the printed summary, nothing is dropped silently;
* the values ``""``, ``NA``, ``N/A``, ``null``, ``None``, ``NaN`` (any case) are missing;
  a missing user with a known session is an anonymous visitor: the row takes the user of the
  session's earliest row (time, input row) with a known user, else the session id stands for
  the user;
* without a session column, sessions are cut per user at more than ``session_gap_ms`` (30
  minutes) of inactivity: ``session_id`` = ``"<user>-<n>"``, n = 1, 2, ... in time order;
* the catalogue is every product of an accepted row, sorted by id: its latest known category
  (else ``""``, the unknown category of ``worker train``), its latest known price (else NaN,
  unknown) and its popularity, its share of the views (0 for a product never viewed);
* a missing column or an unreadable file raises :class:`ImportInputError` (a ConfigError: the
  command exits with 2 and one line).
"""

from __future__ import annotations

import csv
import datetime as dt
import heapq
import json
import math
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from worker.apps import dataset
from worker.core.clickstream import Catalogue
from worker.core.errors import ConfigError

__all__ = [
    "DEFAULT_SESSION_GAP_MS",
    "FORMATS",
    "CsvMapping",
    "ImportInputError",
    "ImportResult",
    "SessionCutter",
    "format_summary",
    "import_dataset",
    "parse_time",
]

FORMATS = ("diginetica", "retailrocket", "csv")
DEFAULT_SESSION_GAP_MS = 30 * 60_000
MISSING = frozenset({"", "na", "n/a", "null", "none", "nan"})

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_ONE_MS = dt.timedelta(milliseconds=1)
_VIEW, _CART, _REMOVE, _PURCHASE = 0, 1, 2, 3
_EVENT_TYPES = ("VIEW", "ADD_TO_CART", "REMOVE_FROM_CART")
_NONE = -1  # a missing string in the index columns


class ImportInputError(ConfigError):
    """An input file is unreadable, of an unknown kind, or lacks a column the mapping names."""


def _missing(value: str | None) -> bool:
    return value is None or value.strip().lower() in MISSING


# -- session cutting -------------------------------------------------------------------------------


class SessionCutter:
    """Sessions of users without a session id: a new one after more than ``gap_ms`` idle.

    Call :meth:`session` with each user's times in non-decreasing order (e.g. all records in time
    order); it returns ``"<user>-<n>"``, n counting that user's sessions from 1. A gap of exactly
    ``gap_ms`` stays in the session.
    """

    def __init__(self, gap_ms: int = DEFAULT_SESSION_GAP_MS) -> None:
        if gap_ms <= 0:
            raise ImportInputError(f"the session gap must be positive, not {gap_ms} ms")
        self.gap_ms = gap_ms
        self._last: dict[str, tuple[int, int]] = {}  # user -> (last time, session number)

    def session(self, user: str, time_ms: int) -> str:
        last = self._last.get(user)
        if last is None:
            n = 1
        else:
            last_ms, n = last
            if time_ms < last_ms:
                raise ValueError(f"{user}: times must not decrease ({time_ms} < {last_ms})")
            if time_ms - last_ms > self.gap_ms:
                n += 1
        self._last[user] = (time_ms, n)
        return f"{user}-{n}"


# -- time parsing ----------------------------------------------------------------------------------


def parse_time(text: str, time_format: str) -> int | None:
    """Epoch ms of ``text``, or None when it does not parse.

    ``time_format``: ``epoch_ms``, ``epoch_s`` (fractions allowed), ``iso8601`` (``fromisoformat``,
    ``Z`` accepted), or a ``strptime`` pattern (containing ``%``). A time without zone is UTC.
    """
    text = text.strip()
    if not text:
        return None
    try:
        if time_format in ("epoch_ms", "epoch_s"):
            scale = 1 if time_format == "epoch_ms" else 1000
            try:
                return int(text) * scale
            except ValueError:
                value = float(text) * scale
                return round(value) if math.isfinite(value) else None
        if time_format == "iso8601":
            moment = dt.datetime.fromisoformat(text)
        else:
            moment = dt.datetime.strptime(text, time_format)
    except (ValueError, OverflowError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return (moment - _EPOCH) // _ONE_MS


def _check_time_format(time_format: str) -> None:
    if time_format not in ("epoch_ms", "epoch_s", "iso8601") and "%" not in time_format:
        raise ImportInputError(
            f"--time-format {time_format!r}: not epoch_ms, epoch_s, iso8601 or a strptime pattern"
        )


# -- accepted rows, columnar -----------------------------------------------------------------------


class _Rows:
    """Accepted input rows in input order, as columns of numbers and interned-string indexes."""

    def __init__(self) -> None:
        self._index: dict[str, int] = {}
        self.strings: list[str] = []
        self.row = array("q")  # input row number, for event_id and the sort
        self.time = array("q")
        self.kind = array("b")
        self.user = array("i")  # _NONE: anonymous (the session stands for the user)
        self.session = array("i")  # _NONE: cut by inactivity
        self.product = array("i")
        self.category = array("i")
        self.price = array("d")  # NaN: unknown
        self.order = array("i")  # _NONE: generated (purchases) or not a purchase
        self.quantity = array("i")
        #: session -> (time, row, user) of its earliest row with a known user
        self.known_user: dict[int, tuple[int, int, int]] = {}

    def intern(self, text: str | None) -> int:
        if text is None:
            return _NONE
        i = self._index.get(text)
        if i is None:
            i = self._index[text] = len(self.strings)
            self.strings.append(text)
        return i

    def add(
        self,
        row: int,
        time_ms: int,
        kind: int,
        user: str | None,
        product: str,
        *,
        session: str | None = None,
        category: str | None = None,
        price: float | None = None,
        order: str | None = None,
        quantity: int = 1,
    ) -> None:
        user_i, session_i = self.intern(user), self.intern(session)
        if user_i != _NONE and session_i != _NONE:
            known = self.known_user.get(session_i)
            if known is None or (time_ms, row) < known[:2]:
                self.known_user[session_i] = (time_ms, row, user_i)
        self.row.append(row)
        self.time.append(time_ms)
        self.kind.append(kind)
        self.user.append(user_i)
        self.session.append(session_i)
        self.product.append(self.intern(product))
        self.category.append(self.intern(category))
        self.price.append(math.nan if price is None else price)
        self.order.append(self.intern(order))
        self.quantity.append(quantity)

    def __len__(self) -> int:
        return len(self.row)

    def time_order(self) -> np.ndarray:
        """Row positions sorted by (event time, input row)."""
        rows = np.frombuffer(self.row, dtype=np.int64) if len(self) else np.zeros(0, np.int64)
        times = np.frombuffer(self.time, dtype=np.int64) if len(self) else np.zeros(0, np.int64)
        return np.lexsort((rows, times))


@dataclass
class _Parsed:
    """What an importer read: the accepted rows and how to finish them into records."""

    rows: _Rows
    event_id_prefix: str
    #: product -> category (DIGINETICA, RetailRocket); the rows' own categories otherwise.
    product_category: dict[str, str] | None = None
    #: product -> price (DIGINETICA's products.csv); the rows' own prices otherwise.
    product_price: dict[str, float] | None = None
    session_gap_ms: int = DEFAULT_SESSION_GAP_MS
    #: every row of a session takes the session's earliest known user (DIGINETICA); otherwise
    #: only the rows without a user do
    one_user_per_session: bool = False
    inputs: list[dict[str, Any]] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    extra_meta: dict[str, Any] = field(default_factory=dict)
    #: the DIGINETICA sample as :func:`dataset.load_diginetica` returns it (events, purchases)
    sample: tuple[list[dict], list[dict]] | None = None


# -- reading CSV files -----------------------------------------------------------------------------


def _open_csv(path: Path, delimiter: str) -> tuple[list[str], Iterator[list[str]], Any]:
    """Header, row iterator and open file of a CSV file (UTF-8, an optional BOM)."""
    if path.suffix.lower() == ".parquet":
        raise ImportInputError(
            f"{path}: Parquet input needs pyarrow, which is not installed; convert it to CSV"
        )
    try:
        f = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed by the caller
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ImportInputError(f"{path}: unreadable: {exc}") from exc
    if header is None:
        f.close()
        raise ImportInputError(f"{path}: empty file, no header")
    return [h.strip() for h in header], reader, f


def _read_rows(
    path: Path, delimiter: str, columns: Sequence[str]
) -> Iterator[tuple[int, list[str | None]]]:
    """``(data row number, values of columns)`` of a CSV file; a column may be "" (absent).

    Raises:
        ImportInputError: the file is unreadable or lacks a named column.
    """
    header, reader, f = _open_csv(path, delimiter)
    with f:
        where = {name: i for i, name in enumerate(header)}
        lacking = [c for c in columns if c and c not in where]
        if lacking:
            raise ImportInputError(
                f"{path}: no column {', '.join(map(repr, lacking))} (columns: {', '.join(header)})"
            )
        positions = [where[c] if c else None for c in columns]
        try:
            for row_no, values in enumerate(reader):
                yield (
                    row_no,
                    [values[p] if p is not None and p < len(values) else None for p in positions],
                )
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise ImportInputError(f"{path}: unreadable: {exc}") from exc


def _header(path: Path) -> tuple[str, set[str]]:
    """The delimiter (``;`` or ``,``) and the column names of a CSV file's first line."""
    if path.suffix.lower() == ".parquet":
        _open_csv(path, ",")  # raises the Parquet error
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportInputError(f"{path}: unreadable: {exc}") from exc
    delimiter = ";" if first.count(";") > first.count(",") else ","
    return delimiter, {c.strip() for c in first.strip().split(delimiter)}


def _classify(paths: Iterable[Path], kinds: dict[str, set[str]], fmt: str) -> dict[str, list]:
    """The input files by kind, recognised by their header columns; ``kinds`` is tried in order."""
    found: dict[str, list[tuple[Path, str]]] = {kind: [] for kind in kinds}
    for path in paths:
        delimiter, columns = _header(path)
        kind = next((k for k, needed in kinds.items() if needed <= columns), None)
        if kind is None:
            raise ImportInputError(
                f"{path}: not a {fmt} file this importer knows "
                f"(columns: {', '.join(sorted(columns))})"
            )
        found[kind].append((path, delimiter))
    return found


def _time_ms_of_day(date: str, cache: dict[str, int]) -> int | None:
    t = cache.get(date)
    if t is None:
        try:
            day = dt.datetime.strptime(date.strip(), "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
        except ValueError:
            return None
        t = cache[date] = (day - _EPOCH) // _ONE_MS
    return t


def _as_int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


# -- DIGINETICA ------------------------------------------------------------------------------------

_DG_KINDS = {
    "sample": {"session_id", "user_id", "item_id", "timeframe_ms", "eventdate", "event"},
    "views": {"session_id", "user_id", "item_id", "timeframe", "eventdate"},
    "purchases": {"sessionId", "userId", "timeframe", "eventdate", "ordernumber", "itemId"},
    "categories": {"itemId", "categoryId"},
    "products": {"itemId", "pricelog2"},
}


def _diginetica(paths: Sequence[Path]) -> _Parsed:
    """DIGINETICA: the sample (``sample_sessions_views_plus_purchases.csv``, read by
    :func:`dataset.load_diginetica`) or the original ``train-item-views.csv`` +
    ``train-purchases.csv``; with ``product-categories.csv`` and optionally ``products.csv``.

    Files are recognised by their header columns (``;`` or ``,`` separated). The original files
    map as the sample does: ``event_time`` = midnight UTC of ``eventdate`` + ``timeframe`` ms,
    ``session_id`` = ``"s<sessionId>"``, ``user_id`` = ``"u<userId>"``; one user per session:
    every row of a session takes the user of its earliest row with a known user (a few sessions
    name two), a session without one is its own user (``"s<sessionId>"``); views are ``VIEW``
    events ``"dg-<row>"`` (row of the views file), purchases lines of quantity 1 with
    ``order_id`` = ``ordernumber``; ``products.csv`` gives the catalogue price ``2 ** pricelog2``
    (records keep price null: a binned list price is not the price paid or shown).
    """
    found = _classify(paths, _DG_KINDS, "DIGINETICA")
    if len(found["categories"]) != 1:
        raise ImportInputError(
            "diginetica: give exactly one product-categories.csv (itemId;categoryId)"
        )
    if len(found["products"]) > 1 or len(found["sample"]) > 1:
        raise ImportInputError("diginetica: give at most one products.csv and one sample file")
    if found["sample"] and (found["views"] or found["purchases"]):
        raise ImportInputError(
            "diginetica: give either the sample sessions file or train-item-views/train-purchases"
        )
    if not (found["sample"] or found["views"] or found["purchases"]):
        raise ImportInputError(
            "diginetica: no sessions file (sample_sessions_views_plus_purchases.csv or "
            "train-item-views.csv / train-purchases.csv)"
        )
    categories_csv, categories_delimiter = found["categories"][0]
    parsed = _Parsed(_Rows(), "dg", one_user_per_session=True)
    parsed.product_category = {}
    for _, (item, category) in _read_rows(
        categories_csv, categories_delimiter, ("itemId", "categoryId")
    ):
        if not _missing(item) and not _missing(category):
            assert item is not None and category is not None
            parsed.product_category[item] = category
    parsed.inputs.append(
        {
            "file": categories_csv.name,
            "role": "categories",
            "products": len(parsed.product_category),
        }
    )
    if found["products"]:
        products_csv, products_delimiter = found["products"][0]
        parsed.product_price = {}
        unparsed = 0
        for _, (item, pricelog2) in _read_rows(
            products_csv, products_delimiter, ("itemId", "pricelog2")
        ):
            try:
                assert item is not None and pricelog2 is not None
                parsed.product_price[item] = float(2.0 ** float(pricelog2))
            except (AssertionError, ValueError, OverflowError):
                unparsed += 1
        parsed.inputs.append(
            {
                "file": products_csv.name,
                "role": "products",
                "products": len(parsed.product_price),
                "unparseable_prices": unparsed,
            }
        )
    if found["sample"]:
        return _diginetica_sample(found["sample"][0][0], categories_csv, parsed)
    day_cache: dict[str, int] = {}
    rows = parsed.rows
    offset = 0
    for role, columns in (
        ("views", ("session_id", "user_id", "item_id", "timeframe", "eventdate", "")),
        ("purchases", ("sessionId", "userId", "itemId", "timeframe", "eventdate", "ordernumber")),
    ):
        for path, delimiter in sorted(found[role]):
            n = 0
            for row_no, values in _read_rows(path, delimiter, columns):
                session, user, item, frame, date, order = values
                n += 1
                day = _time_ms_of_day(date or "", day_cache)
                frame_ms = _as_int(frame)
                reason = None
                if day is None or frame_ms is None:
                    reason = "unparseable_time"
                elif _missing(item):
                    reason = "empty_product"
                elif _missing(session):
                    reason = "empty_session"
                elif role == "purchases" and _missing(order):
                    reason = "empty_order_id"
                if reason is not None:
                    parsed.skipped[f"{role}:{reason}"] += 1
                    continue
                assert day is not None and frame_ms is not None and item is not None
                rows.add(
                    offset + row_no,
                    day + frame_ms,
                    _VIEW if role == "views" else _PURCHASE,
                    None if _missing(user) else f"u{user}",
                    item.strip(),
                    session=f"s{session}",
                    order=order if role == "purchases" else None,
                )
            offset += n
            parsed.inputs.append({"file": path.name, "role": role, "rows": n})
    return parsed


def _diginetica_sample(sessions_csv: Path, categories_csv: Path, parsed: _Parsed) -> _Parsed:
    try:
        events, purchases = dataset.load_diginetica(sessions_csv, categories_csv)
    except (KeyError, ValueError) as exc:  # the sample reader is strict: one bad row fails
        raise ImportInputError(f"{sessions_csv}: not a usable DIGINETICA sample: {exc}") from exc
    except OSError as exc:
        raise ImportInputError(f"{sessions_csv}: unreadable: {exc}") from exc
    kept_events = [e for e in events if e["product_id"].strip()]
    kept_purchases = [p for p in purchases if p["product_id"].strip()]
    dropped = len(events) - len(kept_events) + len(purchases) - len(kept_purchases)
    if dropped:
        parsed.skipped["empty_product"] += dropped
    parsed.inputs.append(
        {"file": sessions_csv.name, "role": "sample", "rows": len(events) + len(purchases)}
    )
    parsed.sample = (kept_events, kept_purchases)
    return parsed


# -- RetailRocket ----------------------------------------------------------------------------------

_RR_KINDS = {
    "events": {"timestamp", "visitorid", "event", "itemid", "transactionid"},
    "properties": {"timestamp", "itemid", "property", "value"},
    "category_tree": {"categoryid", "parentid"},
}
_RR_EVENT = {"view": _VIEW, "addtocart": _CART, "transaction": _PURCHASE}


def _retailrocket(paths: Sequence[Path], session_gap_ms: int) -> _Parsed:
    """RetailRocket: ``events.csv``, optionally ``item_properties*.csv`` (category: the item's
    ``categoryid`` property of the latest timestamp) and ``category_tree.csv`` (not used)."""
    found = _classify(paths, _RR_KINDS, "RetailRocket")
    if not found["events"]:
        raise ImportInputError(
            "retailrocket: no events.csv (timestamp,visitorid,event,itemid,transactionid)"
        )
    parsed = _Parsed(_Rows(), "rr", session_gap_ms=session_gap_ms)
    latest: dict[str, tuple[int, str]] = {}
    for path, delimiter in sorted(found["properties"]):
        n = unparsed = 0
        for _, (t, item, prop, value) in _read_rows(
            path, delimiter, ("timestamp", "itemid", "property", "value")
        ):
            n += 1
            if prop != "categoryid":
                continue
            time_ms = _as_int(t)
            if time_ms is None or _missing(item) or _missing(value):
                unparsed += 1
                continue
            assert item is not None and value is not None
            known = latest.get(item)
            if known is None or time_ms >= known[0]:
                latest[item] = (time_ms, value.strip())
        parsed.inputs.append(
            {
                "file": path.name,
                "role": "item_properties",
                "rows": n,
                "unusable_categoryid": unparsed,
            }
        )
    parsed.product_category = {item: category for item, (_, category) in latest.items()}
    for path, _ in found["category_tree"]:
        parsed.inputs.append({"file": path.name, "role": "category_tree (not used)"})
        parsed.notes.append(f"{path.name}: the category tree is not used (leaf categoryid kept)")
    rows = parsed.rows
    offset = 0
    for path, delimiter in found["events"]:
        n = 0
        for row_no, (t, visitor, event, item, transaction) in _read_rows(
            path, delimiter, ("timestamp", "visitorid", "event", "itemid", "transactionid")
        ):
            n += 1
            time_ms = _as_int(t)
            kind = _RR_EVENT.get((event or "").strip())
            reason = None
            if time_ms is None:
                reason = "unparseable_time"
            elif _missing(visitor):
                reason = "empty_user"
            elif _missing(item):
                reason = "empty_product"
            elif kind is None:
                reason = "unknown_event_type"
            elif kind == _PURCHASE and _missing(transaction):
                reason = "empty_transaction_id"
            if reason is not None:
                parsed.skipped[reason] += 1
                continue
            assert time_ms is not None and kind is not None and item is not None
            rows.add(
                offset + row_no,
                time_ms,
                kind,
                f"v{(visitor or '').strip()}",
                item.strip(),
                order=(transaction or "").strip() if kind == _PURCHASE else None,
            )
        offset += n
        parsed.inputs.append({"file": path.name, "role": "events", "rows": n})
    return parsed


# -- generic CSV -----------------------------------------------------------------------------------


@dataclass
class CsvMapping:
    """Columns and values of a generic clickstream CSV (``--format csv``).

    Required: ``time_col``, ``product_col``, ``user_col``. Without ``type_col`` every row is a
    view. Type values are compared stripped and case-insensitively; a row whose type is none of
    them is skipped (``unknown_event_type``). Without ``session_col`` sessions are cut at more
    than ``session_gap_min`` minutes of inactivity per user; without ``order_col`` a purchase
    line's order id is ``"<user>/<session>/<event time ms>"``; without ``quantity_col`` it is 1.
    """

    time_col: str | None = None
    time_format: str = "epoch_ms"
    type_col: str | None = None
    view_values: tuple[str, ...] = ("view",)
    cart_values: tuple[str, ...] = ("addtocart", "add_to_cart", "cart")
    remove_values: tuple[str, ...] = ("removefromcart", "remove_from_cart", "remove")
    purchase_values: tuple[str, ...] = ("purchase", "transaction")
    product_col: str | None = None
    category_col: str | None = None
    price_col: str | None = None
    user_col: str | None = None
    session_col: str | None = None
    order_col: str | None = None
    quantity_col: str | None = None
    delimiter: str = ","
    session_gap_min: float = 30.0

    @classmethod
    def build(cls, mapping_file: Path | None, overrides: dict[str, Any]) -> CsvMapping:
        """The mapping file's values (JSON object of these field names), then the non-None
        ``overrides`` (the command line's flags); lists may be comma-separated strings.

        Raises:
            ImportInputError: unreadable file, unknown key, bad value, missing required column.
        """
        values: dict[str, Any] = {}
        names = {f.name for f in fields(cls)}
        if mapping_file is not None:
            try:
                loaded = json.loads(Path(mapping_file).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ImportInputError(f"{mapping_file}: unreadable mapping: {exc}") from exc
            if not isinstance(loaded, dict):
                raise ImportInputError(f"{mapping_file}: the mapping must be a JSON object")
            unknown = sorted(set(loaded) - names)
            if unknown:
                raise ImportInputError(
                    f"{mapping_file}: unknown keys {', '.join(unknown)} "
                    f"(known: {', '.join(sorted(names))})"
                )
            values.update(loaded)
        values.update({k: v for k, v in overrides.items() if k in names and v is not None})
        for key in ("view_values", "cart_values", "remove_values", "purchase_values"):
            if key in values:
                raw = values[key]
                items = raw.split(",") if isinstance(raw, str) else list(raw)
                values[key] = tuple(str(v).strip().lower() for v in items if str(v).strip())
        try:
            mapping = cls(**values)
            mapping.session_gap_min = float(mapping.session_gap_min)
        except (TypeError, ValueError) as exc:
            raise ImportInputError(f"csv mapping: {exc}") from exc
        mapping.check()
        return mapping

    def check(self) -> None:
        lacking = [
            f"--{name.replace('_', '-')}"
            for name in ("time_col", "product_col", "user_col")
            if not getattr(self, name)
        ]
        if lacking:
            raise ImportInputError(f"csv format: name the {', '.join(lacking)} column")
        _check_time_format(self.time_format)
        if len(self.delimiter) != 1:
            raise ImportInputError(f"--delimiter {self.delimiter!r}: one character")
        if not self.session_gap_min > 0:
            raise ImportInputError(f"--session-gap-min {self.session_gap_min}: not positive")
        seen: dict[str, str] = {}
        for key in ("view_values", "cart_values", "remove_values", "purchase_values"):
            for v in getattr(self, key):
                if v in seen:
                    raise ImportInputError(f"type value {v!r} is in both {seen[v]} and {key}")
                seen[v] = key

    def kind_of(self) -> dict[str, int]:
        codes = (_VIEW, _CART, _REMOVE, _PURCHASE)
        groups = (self.view_values, self.cart_values, self.remove_values, self.purchase_values)
        return {v: code for code, group in zip(codes, groups, strict=True) for v in group}

    def as_meta(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _generic_csv(paths: Sequence[Path], mapping: CsvMapping) -> _Parsed:
    parsed = _Parsed(
        _Rows(),
        "csv",
        session_gap_ms=round(mapping.session_gap_min * 60_000),
        extra_meta={"mapping": mapping.as_meta()},
    )
    kind_of = mapping.kind_of()
    columns = [
        mapping.time_col,
        mapping.type_col,
        mapping.user_col,
        mapping.session_col,
        mapping.product_col,
        mapping.category_col,
        mapping.price_col,
        mapping.order_col,
        mapping.quantity_col,
    ]
    rows = parsed.rows
    offset = unusable_prices = 0
    for path in paths:
        n = 0
        for row_no, values in _read_rows(path, mapping.delimiter, [c or "" for c in columns]):
            n += 1
            t, etype, user, session, item, category, price, order, quantity = values
            time_ms = parse_time(t or "", mapping.time_format)
            kind = _VIEW if mapping.type_col is None else kind_of.get((etype or "").strip().lower())
            anonymous = _missing(user)
            qty = 1 if _missing(quantity) else _as_int((quantity or "").strip())
            reason = None
            if time_ms is None:
                reason = "unparseable_time"
            elif kind is None:
                reason = "unknown_event_type"
            elif _missing(item):
                reason = "empty_product"
            elif mapping.session_col and _missing(session):
                reason = "empty_session"
            elif anonymous and not mapping.session_col:
                reason = "empty_user"
            elif kind == _PURCHASE and (qty is None or qty < 1):
                reason = "bad_quantity"
            if reason is not None:
                parsed.skipped[reason] += 1
                continue
            assert time_ms is not None and kind is not None and item is not None
            price_value = None
            if not _missing(price):
                try:
                    price_value = float(price or "")
                except ValueError:
                    price_value = math.nan
                if not (math.isfinite(price_value) and price_value >= 0):
                    unusable_prices += 1
                    price_value = None
            rows.add(
                offset + row_no,
                time_ms,
                kind,
                None if anonymous else (user or "").strip(),
                item.strip(),
                session=None if _missing(session) else (session or "").strip(),
                category=None if _missing(category) else (category or "").strip(),
                price=price_value,
                order=None if _missing(order) else (order or "").strip(),
                quantity=qty or 1,
            )
        offset += n
        parsed.inputs.append({"file": path.name, "role": "clickstream", "rows": n})
    # a row with an unusable price is kept, with the price unknown
    parsed.extra_meta["unusable_prices_kept_as_unknown"] = unusable_prices
    return parsed


# -- records and catalogue -------------------------------------------------------------------------


def _catalogue(parsed: _Parsed, order: np.ndarray) -> Catalogue:
    rows = parsed.rows
    strings = rows.strings
    views: Counter[int] = Counter()
    category: dict[int, int] = {}
    price: dict[int, float] = {}
    for i in order.tolist():
        p = rows.product[i]
        if rows.kind[i] == _VIEW:
            views[p] += 1
        else:
            views[p] += 0
        if rows.category[i] != _NONE:
            category[p] = rows.category[i]
        if not math.isnan(rows.price[i]):
            price[p] = rows.price[i]
    products = sorted(views, key=lambda p: strings[p])
    if not products:
        raise ImportInputError("no usable rows: nothing to import")
    by_product_category = parsed.product_category or {}
    by_product_price = parsed.product_price or {}

    def category_of(p: int) -> str:
        if p in category:
            return strings[category[p]]
        return by_product_category.get(strings[p], "")

    def price_of(p: int) -> float:
        if p in price:
            return price[p]
        return by_product_price.get(strings[p], math.nan)

    counts = np.array([views[p] for p in products], dtype=np.float64)
    total = counts.sum()
    return Catalogue(
        product_ids=tuple(strings[p] for p in products),
        category_ids=tuple(category_of(p) for p in products),
        prices=np.array([price_of(p) for p in products], dtype=np.float64),
        popularity=counts / total if total else counts,
    )


def _records(parsed: _Parsed, order: np.ndarray) -> Iterator[tuple[str, dict]]:
    """The accepted rows as ``("event" | "purchase", dict)`` records, in ``order``."""
    rows = parsed.rows
    strings = rows.strings
    cutter = SessionCutter(parsed.session_gap_ms)
    by_product_category = parsed.product_category or {}
    prefix = parsed.event_id_prefix
    for i in order.tolist():
        t = rows.time[i]
        user_i, session_i = rows.user[i], rows.session[i]
        if session_i == _NONE:
            user = strings[user_i]
            session = cutter.session(user, t)
        else:
            session = strings[session_i]
            if user_i == _NONE or parsed.one_user_per_session:
                known = rows.known_user.get(session_i)
                if known is not None:
                    user_i = known[2]
                elif user_i == _NONE:
                    user_i = session_i
            user = strings[user_i]
        product = strings[rows.product[i]]
        price = rows.price[i]
        kind = rows.kind[i]
        if kind == _PURCHASE:
            order_i = rows.order[i]
            yield (
                "purchase",
                {
                    "order_id": strings[order_i] if order_i != _NONE else f"{user}/{session}/{t}",
                    "user_id": user,
                    "session_id": session,
                    "product_id": product,
                    "quantity": rows.quantity[i],
                    "price": None if math.isnan(price) else price,
                    "event_time": t,
                },
            )
        else:
            category_i = rows.category[i]
            yield (
                "event",
                {
                    "event_id": f"{prefix}-{rows.row[i]}",
                    "user_id": user,
                    "session_id": session,
                    "event_type": _EVENT_TYPES[kind],
                    "product_id": product,
                    "category_id": strings[category_i]
                    if category_i != _NONE
                    else by_product_category.get(product),
                    "price": None if math.isnan(price) else price,
                    "event_time": t,
                },
            )


def _sample_catalogue(
    events: list[dict], purchases: list[dict], categories: dict[str, str]
) -> Catalogue:
    views: Counter[str] = Counter(e["product_id"] for e in events)
    for p in purchases:
        views[p["product_id"]] += 0
    if not views:
        raise ImportInputError("no usable rows: nothing to import")
    products = sorted(views)
    counts = np.array([views[p] for p in products], dtype=np.float64)
    return Catalogue(
        product_ids=tuple(products),
        category_ids=tuple(categories.get(p, "") for p in products),
        prices=np.full(len(products), math.nan),
        popularity=counts / counts.sum() if counts.sum() else counts,
    )


# -- entry point -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_dataset` wrote: the dataset.json content and the output directory."""

    out_dir: Path
    meta: dict[str, Any]


def import_dataset(
    fmt: str,
    inputs: Sequence[Path | str],
    out_dir: Path | str,
    *,
    session_gap_ms: int = DEFAULT_SESSION_GAP_MS,
    mapping: CsvMapping | None = None,
) -> ImportResult:
    """Reads ``inputs`` of format ``fmt`` (one of :data:`FORMATS`), writes a dataset directory.

    ``mapping`` is required for ``csv`` (its ``session_gap_min`` replaces ``session_gap_ms``).

    Raises:
        ImportInputError: unknown format, an unreadable input, a missing column, no usable row.
    """
    paths = [Path(p) for p in inputs]
    if not paths:
        raise ImportInputError("no input file")
    for path in paths:
        if not path.is_file():
            raise ImportInputError(f"{path}: no such file")
    if fmt == "diginetica":
        parsed = _diginetica(paths)
    elif fmt == "retailrocket":
        parsed = _retailrocket(paths, session_gap_ms)
    elif fmt == "csv":
        if mapping is None:
            raise ImportInputError("csv format: no column mapping")
        parsed = _generic_csv(paths, mapping)
    else:
        raise ImportInputError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")

    meta: dict[str, Any] = {
        "source": "import",
        "format": fmt,
        "inputs": parsed.inputs,
        "skipped": dict(sorted(parsed.skipped.items())),
        "n_skipped": sum(parsed.skipped.values()),
        **parsed.extra_meta,
    }
    if parsed.notes:
        meta["notes"] = parsed.notes
    if fmt in ("retailrocket", "csv") and not (
        fmt == "csv" and mapping is not None and mapping.session_col
    ):
        meta["session_gap_ms"] = parsed.session_gap_ms
    records: Iterable[tuple[str, dict]]
    sample = parsed.sample
    if sample is not None:
        catalogue = _sample_catalogue(*sample, parsed.product_category or {})
        records = heapq.merge(
            (("event", e) for e in sample[0]),
            (("purchase", p) for p in sample[1]),
            key=lambda r: r[1]["event_time"],
        )
        meta["rows_accepted"] = len(sample[0]) + len(sample[1])
    else:
        order = parsed.rows.time_order()
        catalogue = _catalogue(parsed, order)
        records = _records(parsed, order)
        meta["rows_accepted"] = len(parsed.rows)
    meta["catalogue"] = {
        "with_category": sum(1 for c in catalogue.category_ids if c),
        "with_price": int(np.isfinite(catalogue.prices).sum()),
    }
    summary = dataset.write_dataset(Path(out_dir), catalogue, records, meta)
    return ImportResult(Path(out_dir), {**meta, **summary})


def format_summary(result: ImportResult) -> str:
    """One paragraph of counts for the command line."""
    m = result.meta
    files = ", ".join(f"{i['file']} ({i['role']})" for i in m["inputs"])
    skipped = ", ".join(f"{n:,} {reason}" for reason, n in m["skipped"].items()) or "none"
    return (
        f"Imported {m['format']} from {files} into {result.out_dir}: "
        f"{m['rows_accepted']:,} rows accepted, {m['n_skipped']:,} skipped ({skipped}); "
        f"{m['n_views']:,} views, {m['n_add_to_cart']:,} add-to-cart, "
        f"{m['n_remove_from_cart']:,} remove-from-cart, {m['n_purchases']:,} purchase lines; "
        f"{m['n_sessions']:,} sessions, {m['n_users']:,} users; {m['n_products']:,} products "
        f"({m['catalogue']['with_category']:,} with a category, "
        f"{m['catalogue']['with_price']:,} with a price)."
    )
