"""Historical dataset directories: write, read, load the DIGINETICA sample, and describe them.

A dataset directory holds:

* ``events.avro`` — browsing events (``browsing_event.avsc``), fastavro container file;
* ``purchases.avro`` — purchase outcomes (``purchase_outcome.avsc``), fastavro container file;
* ``catalogue.csv`` — ``product_id,category_id,price,popularity``;
* ``dataset.json`` — caller's metadata plus record counts and the event-time range.

Times are epoch milliseconds (int) in every dict this module yields or accepts.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
from fastavro.write import Writer

from worker.core.clickstream import Catalogue
from worker.wire import codec

__all__ = [
    "CATALOGUE_FILE",
    "EVENTS_FILE",
    "META_FILE",
    "PURCHASES_FILE",
    "clickstream_stats",
    "iter_events",
    "iter_purchases",
    "load_diginetica",
    "load_schema",
    "read_catalogue",
    "read_source",
    "write_dataset",
]

EVENTS_FILE = "events.avro"
PURCHASES_FILE = "purchases.avro"
CATALOGUE_FILE = "catalogue.csv"
META_FILE = "dataset.json"

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_ONE_MS = dt.timedelta(milliseconds=1)


def load_schema(name: str) -> dict:
    """Parsed Avro schema of a record (``"BrowsingEvent"``, ...), from the package's schemas."""
    parsed = fastavro.parse_schema(codec.load_schema(name))
    assert isinstance(parsed, dict)  # a record schema parses to a dict
    return parsed


# -- writing and reading ---------------------------------------------------------------------------


def write_dataset(
    out_dir: Path,
    catalogue: Catalogue | Callable[[], Catalogue],
    records: Iterable[tuple[str, dict]],
    meta: dict,
) -> dict:
    """Writes a dataset directory from ``("event" | "purchase", dict)`` records (streaming).

    ``catalogue`` may be a function, called once every record is written: a catalogue built from
    the records themselves (``worker dataset export``).

    Returns the summary stored in ``dataset.json`` besides ``meta``: record counts, distinct
    sessions and users, and the event-time range in epoch ms.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: Counter[str] = Counter()
    sessions: set[str] = set()
    users: set[str] = set()
    min_time_ms: int | None = None
    max_time_ms: int | None = None
    with open(out_dir / EVENTS_FILE, "wb") as ev_f, open(out_dir / PURCHASES_FILE, "wb") as pu_f:
        writers = {
            "event": Writer(ev_f, load_schema("BrowsingEvent"), codec="deflate"),
            "purchase": Writer(pu_f, load_schema("PurchaseOutcome"), codec="deflate"),
        }
        for kind, record in records:
            writer = writers.get(kind)
            if writer is None:
                raise ValueError(f"unknown record kind {kind!r}")
            writer.write(record)
            t = record["event_time"]
            min_time_ms = t if min_time_ms is None or t < min_time_ms else min_time_ms
            max_time_ms = t if max_time_ms is None or t > max_time_ms else max_time_ms
            if kind == "event":
                counts[record["event_type"]] += 1
                sessions.add(record["session_id"])
                users.add(record["user_id"])
            else:
                counts["PURCHASE"] += 1
        for writer in writers.values():
            writer.flush()
    if callable(catalogue):
        catalogue = catalogue()
    _write_catalogue(out_dir / CATALOGUE_FILE, catalogue)
    summary = {
        "n_events": counts["VIEW"] + counts["ADD_TO_CART"] + counts["REMOVE_FROM_CART"],
        "n_views": counts["VIEW"],
        "n_add_to_cart": counts["ADD_TO_CART"],
        "n_remove_from_cart": counts["REMOVE_FROM_CART"],
        "n_purchases": counts["PURCHASE"],
        "n_sessions": len(sessions),
        "n_users": len(users),
        "n_products": len(catalogue),
        "min_event_time_ms": min_time_ms,
        "max_event_time_ms": max_time_ms,
    }
    with open(out_dir / META_FILE, "w", encoding="utf-8") as f:
        json.dump({**meta, **summary}, f, indent=2, sort_keys=True)
    return summary


def _write_catalogue(path: Path, catalogue: Catalogue) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "category_id", "price", "popularity"])
        for pid, cid, price, pop in zip(
            catalogue.product_ids,
            catalogue.category_ids,
            catalogue.prices.tolist(),
            catalogue.popularity.tolist(),
            strict=True,
        ):
            w.writerow([pid, cid, repr(price), repr(pop)])


def read_catalogue(directory: Path | str) -> Catalogue:
    """The catalogue of a dataset directory."""
    with open(Path(directory) / CATALOGUE_FILE, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return Catalogue(
        product_ids=tuple(r["product_id"] for r in rows),
        category_ids=tuple(r["category_id"] for r in rows),
        prices=np.array([float(r["price"]) for r in rows], dtype=np.float64),
        popularity=np.array([float(r["popularity"]) for r in rows], dtype=np.float64),
    )


def read_source(directory: Path | str) -> Any:
    """Where a dataset came from: the ``source`` of its ``dataset.json`` (``worker dataset
    export`` writes the topics, partitions and offset ranges there; ``import`` the word
    ``"import"``), or None without one."""
    try:
        with open(Path(directory) / META_FILE, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta.get("source") if isinstance(meta, dict) else None


def _iter_avro(path: Path) -> Iterator[dict]:
    with open(path, "rb") as f:
        for record in fastavro.reader(f):
            assert isinstance(record, dict)  # the dataset files hold records
            t = record["event_time"]
            if isinstance(t, dt.datetime):  # fastavro decodes timestamp-millis to datetime
                record["event_time"] = (t - _EPOCH) // _ONE_MS
            yield record


def iter_events(directory: Path | str) -> Iterator[dict]:
    """Browsing events of a dataset directory, in file order (``event_time`` in epoch ms)."""
    return _iter_avro(Path(directory) / EVENTS_FILE)


def iter_purchases(directory: Path | str) -> Iterator[dict]:
    """Purchase outcomes of a dataset directory, in file order (``event_time`` in epoch ms)."""
    return _iter_avro(Path(directory) / PURCHASES_FILE)


# -- DIGINETICA ------------------------------------------------------------------------------------


def load_diginetica(
    sessions_csv: Path | str, categories_csv: Path | str
) -> tuple[list[dict], list[dict]]:
    """The DIGINETICA sample as browsing-event and purchase-outcome dicts of our schemas.

    ``sessions_csv`` is ``sample_sessions_views_plus_purchases.csv`` (``session_id, user_id,
    item_id, timeframe_ms, eventdate, event, ordernumber``); ``categories_csv`` is
    ``product-categories.csv`` (``itemId;categoryId``). Mapping:

    * ``event_time`` = midnight UTC of ``eventdate`` + ``timeframe_ms``;
    * ``user_id`` = ``"u<user_id>"``, or ``"s<session_id>"`` where the user is ``NA`` (anonymous
      visitor: the session is the user); a session whose rows mix ``NA`` and a user id (a few
      do) takes the user id on every row; ``session_id`` = ``"s<session_id>"``;
    * ``product_id`` = item id, ``category_id`` = its category (None if unknown), ``price`` None;
    * views become ``VIEW`` events (``event_id`` = ``"dg-<row>"``, row of the file); purchases
      become one line of quantity 1 each, ``order_id`` = ordernumber.

    Both lists are sorted by (``event_time``, file row).
    """
    categories: dict[str, str] = {}
    with open(categories_csv, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f, delimiter=";"):
            categories[row["itemId"]] = row["categoryId"]

    events: list[tuple[int, int, dict]] = []
    purchases: list[tuple[int, int, dict]] = []
    day_ms: dict[str, int] = {}
    with open(sessions_csv, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    known_user: dict[str, str] = {}
    for row in rows:
        if row["user_id"] not in ("", "NA"):
            known_user.setdefault(row["session_id"], f"u{row['user_id']}")
    for row_no, row in enumerate(rows):
        date = row["eventdate"]
        if date not in day_ms:
            day = dt.datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
            day_ms[date] = (day - _EPOCH) // _ONE_MS
        t = day_ms[date] + int(row["timeframe_ms"])
        session = f"s{row['session_id']}"
        user = known_user.get(row["session_id"], session)
        item = row["item_id"]
        if row["event"] == "view":
            record = {
                "event_id": f"dg-{row_no}",
                "user_id": user,
                "session_id": session,
                "event_type": "VIEW",
                "product_id": item,
                "category_id": categories.get(item),
                "price": None,
                "event_time": t,
            }
            events.append((t, row_no, record))
        elif row["event"] == "purchase":
            record = {
                "order_id": row["ordernumber"],
                "user_id": user,
                "session_id": session,
                "product_id": item,
                "quantity": 1,
                "price": None,
                "event_time": t,
            }
            purchases.append((t, row_no, record))
        else:
            raise ValueError(f"row {row_no}: unknown event {row['event']!r}")
    events.sort(key=lambda x: (x[0], x[1]))
    purchases.sort(key=lambda x: (x[0], x[1]))
    return [r for _, _, r in events], [r for _, _, r in purchases]


# -- statistics ------------------------------------------------------------------------------------


def clickstream_stats(events: Iterable[dict], purchases: Iterable[dict]) -> dict[str, Any]:
    """The figures of ``clickstream-stats.md`` for a set of events and purchases.

    Keys (shares are fractions in [0, 1], durations in seconds):

    * ``n_events``, ``n_views``, ``n_carts``, ``n_removes``, ``n_purchases``, ``n_sessions``,
      ``n_users``, ``n_items_viewed``;
    * ``event_mix``: share of VIEW / ADD_TO_CART / REMOVE_FROM_CART / PURCHASE among all records;
    * ``cart_per_view``, ``purchase_per_view``, ``purchase_per_cart``;
    * ``sessions_with_purchase_share``: sessions (of the events) with a purchase line of the
      same ``session_id``;
    * ``session_length_median`` / ``_mean`` / ``_p90``: browsing events per session;
    * ``gap_median_s`` / ``gap_p90_s``: time between consecutive browsing events of a session;
    * ``purchase_preceded_share``: purchase lines whose product was viewed or carted in the same
      session at or before the purchase time;
    * ``repeat_view_share``: viewed (user, item) pairs viewed more than once;
    * ``same_category_share``: consecutive views of a session in the same category (pairs where
      both categories are known);
    * ``items_seen_once_share``: viewed items with exactly one view;
    * ``top1pct_items_view_share``: share of views going to the top 1 % of viewed items.
    """
    by_session: dict[str, list[tuple[int, str, str, str | None]]] = defaultdict(list)
    type_counts: Counter[str] = Counter()
    user_item_views: Counter[tuple[str, str]] = Counter()
    item_views: Counter[str] = Counter()
    users: set[str] = set()
    for e in events:
        etype = e["event_type"]
        type_counts[etype] += 1
        by_session[e["session_id"]].append(
            (e["event_time"], etype, e["product_id"], e.get("category_id"))
        )
        users.add(e["user_id"])
        if etype == "VIEW":
            user_item_views[(e["user_id"], e["product_id"])] += 1
            item_views[e["product_id"]] += 1
    purchase_list = list(purchases)

    n_views = type_counts["VIEW"]
    n_carts = type_counts["ADD_TO_CART"]
    n_removes = type_counts["REMOVE_FROM_CART"]
    n_purchases = len(purchase_list)
    n_events = n_views + n_carts + n_removes
    n_records = n_events + n_purchases

    lengths: list[int] = []
    gaps_ms: list[int] = []
    same_cat = 0
    cat_pairs = 0
    # (session, product) -> first view or cart; looked up with a purchase's optional session_id.
    first_touch_ms: dict[tuple[str | None, str], int] = {}
    for session, evs in by_session.items():
        evs.sort(key=lambda x: x[0])
        lengths.append(len(evs))
        times = [x[0] for x in evs]
        gaps_ms.extend(b - a for a, b in pairwise(times))
        view_cats = [x[3] for x in evs if x[1] == "VIEW"]
        for a, b in pairwise(view_cats):
            if a is not None and b is not None:
                cat_pairs += 1
                same_cat += a == b
        for t, etype, product, _ in evs:
            if etype in ("VIEW", "ADD_TO_CART"):
                key = (session, product)
                if key not in first_touch_ms:
                    first_touch_ms[key] = t

    buying_sessions = {p["session_id"] for p in purchase_list if p.get("session_id")}
    preceded = sum(
        1
        for p in purchase_list
        if first_touch_ms.get((p.get("session_id"), p["product_id"]), p["event_time"] + 1)
        <= p["event_time"]
    )
    views_sorted = np.sort(np.fromiter(item_views.values(), dtype=np.int64))[::-1]
    n_top = max(1, int(np.ceil(0.01 * len(views_sorted)))) if len(views_sorted) else 0
    length_arr = np.asarray(lengths, dtype=np.float64)
    gap_arr = np.asarray(gaps_ms, dtype=np.float64) / 1000.0

    def share(num: float, den: float) -> float:
        return float(num) / den if den else float("nan")

    def pct(arr: np.ndarray, q: float) -> float:
        return float(np.percentile(arr, q)) if len(arr) else float("nan")

    return {
        "n_events": n_events,
        "n_views": n_views,
        "n_carts": n_carts,
        "n_removes": n_removes,
        "n_purchases": n_purchases,
        "n_sessions": len(by_session),
        "n_users": len(users),
        "n_items_viewed": len(item_views),
        "event_mix": {
            "VIEW": share(n_views, n_records),
            "ADD_TO_CART": share(n_carts, n_records),
            "REMOVE_FROM_CART": share(n_removes, n_records),
            "PURCHASE": share(n_purchases, n_records),
        },
        "cart_per_view": share(n_carts, n_views),
        "purchase_per_view": share(n_purchases, n_views),
        "purchase_per_cart": share(n_purchases, n_carts),
        "sessions_with_purchase_share": share(
            len(buying_sessions & by_session.keys()), len(by_session)
        ),
        "session_length_median": pct(length_arr, 50),
        "session_length_mean": float(length_arr.mean()) if len(length_arr) else float("nan"),
        "session_length_p90": pct(length_arr, 90),
        "gap_median_s": pct(gap_arr, 50),
        "gap_p90_s": pct(gap_arr, 90),
        "purchase_preceded_share": share(preceded, n_purchases),
        "repeat_view_share": share(
            sum(1 for c in user_item_views.values() if c > 1), len(user_item_views)
        ),
        "same_category_share": share(same_cat, cat_pairs),
        "items_seen_once_share": share(int((views_sorted == 1).sum()), len(views_sorted)),
        "top1pct_items_view_share": share(int(views_sorted[:n_top].sum()), n_views),
    }
