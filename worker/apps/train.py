"""Training: history -> catalogue tables + LightGBM ranker -> evaluated, versioned artifact.

Steps (``worker train``):

1. Read the historical dataset (``worker simulate --out DIR`` writes one). Every usable record is
   used: a product missing from ``catalogue.csv`` joins the model's catalogue (category and price
   from its events). Only unusable records are dropped (empty user or product id, unknown event
   type, no event time), counted by reason; more than ``max_dropped_share`` of the events or of
   the purchase lines dropped, and the dataset is refused. The events are split by event time:
   the first ``1 - eval_fraction`` is the training window, the rest the evaluation window.
2. Evaluation model: build the catalogue tables (popularity, cart rates, co-visitation, top
   lists) from the training window; replay every event in time order through the serving code
   (sessions, candidates, features), labelling each candidate: 2 if the user buys it within the
   attribution window after the event, 1 if it is the user's next product in the session, 0
   otherwise; train a LambdaRank booster on a sample of training-window events that have a
   positive candidate. The training events come from the window's last ``honest_folds`` slices,
   each replayed with tables built from the events before the slice only: features such as
   co-visitation and popularity are then as out-of-sample as they are when serving (tables from
   the window itself would contain every training event's own next product); evaluate it on
   every evaluation-window event with a target, and the heuristic rankers of
   :mod:`worker.core.baselines` (built from the training window too) on the very same events
   (HR, MRR, NDCG at K, recall at N and their discovery variants).
3. Served model (``refit``, the default): the same tables and booster again from the whole
   history, with the same parameters and sample size. The metrics stay those of step 2: a model
   that has seen the evaluation window cannot be scored on it. Without ``refit`` the evaluation
   model is served.
4. Write the artifact (``worker.model.artifact.save_artifact``): the served model, its tables,
   and metadata saying which data each fit used and what was read, used and dropped; compile it
   for this platform (:func:`worker.model.scoring.precompile`), and only then point ``LATEST``
   at it.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from worker.config import (
    TRAIN_CANDIDATES,
    TRAIN_DASK_SCHEDULER,
    TRAIN_ENGINE,
    TRAIN_LEAVES,
    TRAIN_MAX_DROPPED_SHARE,
    TRAIN_MAX_QUERIES,
    TRAIN_PUBLISH,
    TRAIN_REFIT,
    TRAIN_THREADS,
    TRAIN_TOP_K,
    TRAIN_TREES,
    validate,
)
from worker.core.baselines import (
    BASELINE_NAMES,
    Ranker,
    SessionContext,
    TargetMetrics,
    fit_baselines,
)
from worker.core.candidates import generate_candidates
from worker.core.catalogue import CatalogueTables
from worker.core.drift import reference_by_replay
from worker.core.errors import UnusableDatasetError
from worker.core.features import FEATURE_NAMES, SessionBatch, build_features
from worker.core.pipeline import advance_sessions, top_k
from worker.core.records import ADD_TO_CART, EVENT_TYPE_CODE, BrowsingEvent
from worker.core.session import SessionStore
from worker.model.artifact import save_artifact
from worker.model.registry import publish, serving_state
from worker.model.scoring import BoosterScorer, precompile


@dataclass(frozen=True)
class TrainSettings:
    """Knobs of ``worker train``; defaults make the production-like model.

    The fields with a ``worker train`` flag take their default, and their check, from its
    declaration in :mod:`worker.config` (``TRAIN_SETTINGS``); the others are plain defaults.
    """

    n_candidates: int = TRAIN_CANDIDATES.field()
    top_k: int = TRAIN_TOP_K.field()
    history: int = 20
    covis_neighbours: int = 20
    covis_window: int = 3  # session positions either side that count as co-visited
    category_top: int = 50  # as deep as n_candidates: recency+category's own list fits
    global_top: int = 100
    attribution_window_ms: int = 30 * 60 * 1000
    eval_fraction: float = 0.2
    max_train_queries: int = TRAIN_MAX_QUERIES.field()
    num_trees: int = TRAIN_TREES.field()
    num_leaves: int = TRAIN_LEAVES.field()
    learning_rate: float = 0.05
    min_data_in_leaf: int = 20
    num_threads: int = TRAIN_THREADS.field()
    seed: int = 7
    chunk_events: int = 4096
    max_dropped_share: float = TRAIN_MAX_DROPPED_SHARE.field()
    refit: bool = TRAIN_REFIT.field()
    publish: bool = TRAIN_PUBLISH.field()
    #: Where the booster is fit: "local" (lightgbm.train) or "dask" (_fit_dask), and the Dask
    #: scheduler's address ("local": a local cluster of ``dask_workers`` single-threaded workers).
    engine: str = TRAIN_ENGINE.field()
    dask_scheduler: str = TRAIN_DASK_SCHEDULER.field()
    dask_workers: int = 2
    #: Training queries come from the last ``honest_folds`` slices (each ``honest_fold_fraction``
    #: of the window's time range) of the window, each replayed with tables built only from the
    #: events before its slice (as serving sees tables built from the past); 0: one set of tables
    #: from the whole window for training queries too (in-sample co-visitation and popularity).
    honest_folds: int = 4
    honest_fold_fraction: float = 0.15
    #: LambdaRank gain of a purchased candidate (label 2); a next product (label 1) gains 1.
    purchase_gain: float = 10.0

    def __post_init__(self) -> None:
        """Check the flagged fields as the command line does, for objects built in code too.

        Raises:
            SettingError: a flagged field's value is unusable (``--trees: 0 is not positive``).
        """
        validate(self)


#: The two targets of the evaluation: metadata key and label.
TARGETS = (
    ("next_item", "next product in session"),
    ("purchase_within_attribution_window", "purchase within attribution"),
)


@dataclass
class Evaluation:
    """Every ranker's metrics on both targets (definitions: :mod:`worker.core.baselines`).

    Attributes:
        k: the cut-off of HR, MRR and NDCG.
        n: the pool of recall (the model's candidates; a heuristic's top-N list).
        rankers: "model" then :data:`~worker.core.baselines.BASELINE_NAMES`, in report order.
    """

    k: int
    n: int
    rankers: tuple[str, ...] = ("model", *BASELINE_NAMES)
    next_item: dict[str, TargetMetrics] = field(default_factory=dict)
    purchase: dict[str, TargetMetrics] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.rankers:
            self.next_item.setdefault(name, TargetMetrics())
            self.purchase.setdefault(name, TargetMetrics())

    def as_dict(self) -> dict[str, Any]:
        """The metadata's ``metrics``: per target, per ranker, ``events``, ``hit_rate``,
        ``mrr``, ``ndcg``, ``recall`` and ``discovery`` (the same keys); per target, the
        ``strongest_baseline`` by HR@K and the model's relative difference to it."""
        out: dict[str, Any] = {"k": self.k, "n": self.n, "rankers": list(self.rankers)}
        for (key, _), table in zip(TARGETS, (self.next_item, self.purchase), strict=True):
            out[key] = {name: table[name].as_dict() for name in self.rankers}
        out["strongest_baseline"] = {
            key: _strongest_baseline(out[key], self.rankers) for key, _ in TARGETS
        }
        return out


def _strongest_baseline(rows: dict[str, Any], rankers: Sequence[str]) -> dict[str, Any]:
    """The heuristic with the best HR@K (ties: report order), and the model's relative lead
    (positive) or deficit (negative) against it: ``model / baseline - 1``, None when the
    baseline's HR@K is 0."""
    best = max((r for r in rankers if r != "model"), key=lambda r: rows[r]["hit_rate"])
    model_hr, base_hr = rows["model"]["hit_rate"], rows[best]["hit_rate"]
    return {
        "ranker": best,
        "hit_rate": base_hr,
        "model_hit_rate": model_hr,
        "model_relative": model_hr / base_hr - 1.0 if base_hr > 0 else None,
    }


def event_from_record(record: dict[str, Any]) -> BrowsingEvent:
    """A dataset record (schema field names) as a core event; datasets are trusted."""
    return BrowsingEvent(
        event_id=record["event_id"],
        user_id=record["user_id"],
        session_id=record["session_id"],
        event_type=EVENT_TYPE_CODE[record["event_type"]],
        product_id=record["product_id"],
        category_id=record.get("category_id"),
        price=record.get("price"),
        event_time_ms=int(record["event_time"]),
    )


def build_tables(
    product_ids: Sequence[str],
    product_categories: Sequence[str],
    prices: np.ndarray,
    items: np.ndarray,
    types: np.ndarray,
    session_codes: np.ndarray,
    settings: TrainSettings,
) -> CatalogueTables:
    """Catalogue tables from training-window interactions.

    Args:
        items, types, session_codes: aligned arrays of the training events, sorted by session
            then time (``session_codes`` identifies the session of each event).
    """
    n_products = len(product_ids)
    category_ids, category = np.unique(
        np.asarray(product_categories, dtype=str), return_inverse=True
    )
    views = np.bincount(items[types == EVENT_TYPE_CODE["VIEW"]], minlength=n_products)
    carts = np.bincount(items[types == ADD_TO_CART], minlength=n_products)
    # Rank by views; ties broken by product index so the tables are deterministic.
    by_views = np.lexsort((np.arange(n_products), -views))
    global_rank = np.empty(n_products, dtype=np.int64)
    global_rank[by_views] = np.arange(n_products)
    by_category = np.lexsort((global_rank, category))
    category_rank = np.empty(n_products, dtype=np.int64)
    starts = np.searchsorted(category[by_category], np.arange(len(category_ids)))
    category_rank[by_category] = np.arange(n_products) - starts[category[by_category]]
    category_top = np.full((len(category_ids), settings.category_top), -1, dtype=np.int32)
    for c in range(len(category_ids)):
        members = by_category[starts[c] : (starts[c + 1] if c + 1 < len(starts) else n_products)]
        top = members[: settings.category_top]
        category_top[c, : len(top)] = top
    covis_items, covis_scores = _covisitation(items, session_codes, n_products, settings)
    return CatalogueTables(
        product_ids=np.asarray(product_ids, dtype=str),
        category_ids=category_ids.astype(str),
        category=category.astype(np.int32),
        log_price=np.log1p(np.nan_to_num(np.asarray(prices, dtype=np.float64))).astype(np.float32),
        log_pop=np.log1p(views).astype(np.float32),
        cart_rate=((carts + 0.1) / (views + 10.0)).astype(np.float32),
        global_rank=np.log1p(global_rank).astype(np.float32),
        category_rank=np.log1p(category_rank).astype(np.float32),
        covis_items=covis_items,
        covis_scores=covis_scores,
        category_top=category_top,
        global_top=by_views[: min(settings.global_top, n_products)].astype(np.int32),
    )


def _covisitation(
    items: np.ndarray, session_codes: np.ndarray, n_products: int, settings: TrainSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Top co-visited neighbours per product: pairs within ``covis_window`` positions of one
    session, scored by their share of the source product's co-visits."""
    sources, targets = [], []
    for offset in range(1, settings.covis_window + 1):
        same = session_codes[offset:] == session_codes[:-offset]
        a, b = items[:-offset][same], items[offset:][same]
        distinct = a != b
        sources += [a[distinct], b[distinct]]
        targets += [b[distinct], a[distinct]]
    m = settings.covis_neighbours
    neighbours = np.full((n_products, m), -1, dtype=np.int32)
    scores = np.zeros((n_products, m), dtype=np.float32)
    if not sources:
        return neighbours, scores
    src = np.concatenate(sources).astype(np.int64)
    dst = np.concatenate(targets).astype(np.int64)
    if src.size == 0:
        return neighbours, scores
    pairs, counts = np.unique(src * n_products + dst, return_counts=True)
    pair_src, pair_dst = pairs // n_products, pairs % n_products
    totals = np.bincount(pair_src, weights=counts, minlength=n_products)
    order = np.lexsort((pair_dst, -counts, pair_src))
    pair_src, pair_dst, counts = pair_src[order], pair_dst[order], counts[order]
    first = np.searchsorted(pair_src, pair_src, side="left")
    position = np.arange(pair_src.size) - first
    kept = position < m
    neighbours[pair_src[kept], position[kept]] = pair_dst[kept]
    scores[pair_src[kept], position[kept]] = counts[kept] / totals[pair_src[kept]]
    return neighbours, scores


def _next_items(events: Sequence[BrowsingEvent], items: np.ndarray) -> np.ndarray:
    """For each event, the product of the same user's next event in the same session, or -1."""
    nxt = np.full(len(events), -1, dtype=np.int32)
    last_row: dict[str, int] = {}
    for row, event in enumerate(events):
        previous = last_row.get(event.user_id)
        if previous is not None and events[previous].session_id == event.session_id:
            nxt[previous] = items[row]
        last_row[event.user_id] = row
    return nxt


def _purchase_index(
    purchases: Iterable[dict[str, Any]], index_of: dict[str, int]
) -> dict[str, list[tuple[int, int]]]:
    """Each user's purchases as (time, product index), in time order; every product is known."""
    by_user: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for p in purchases:
        by_user[p["user_id"]].append((int(p["event_time"]), index_of[p["product_id"]]))
    for rows in by_user.values():
        rows.sort()
    return by_user


def _purchased_after(
    by_user: dict[str, list[tuple[int, int]]], event: BrowsingEvent, window_ms: int
) -> set[int]:
    return {
        item
        for t, item in by_user.get(event.user_id, ())
        if event.event_time_ms < t <= event.event_time_ms + window_ms
    }


# -- step 1: reading, with the count of what is used and dropped ----------------------------------

#: Why a record is unusable, in the order checked: a record counts under its first reason.
EVENT_DROP_REASONS = ("empty_user_id", "empty_product_id", "unknown_event_type", "no_event_time")
PURCHASE_DROP_REASONS = ("empty_user_id", "empty_product_id", "no_event_time")
#: The category of a product that neither catalogue.csv nor its events name.
UNKNOWN_CATEGORY = ""
#: Fewer usable events than this make no model.
MIN_EVENTS = 100
#: Events of the held-out slice (its latest) the input drift reference is made of, at most.
DRIFT_REFERENCE_EVENTS = 100_000


def _is_id(value: Any) -> bool:
    """A usable id: a string with something besides blanks (the worker's rule for live records)."""
    return isinstance(value, str) and bool(value.strip())


def _unusable(record: dict[str, Any], *, event: bool) -> str | None:
    """Why a dataset record (an event, else a purchase line) cannot be used, or None."""
    if not _is_id(record.get("user_id")):
        return "empty_user_id"
    if not _is_id(record.get("product_id")):
        return "empty_product_id"
    if event and record.get("event_type") not in EVENT_TYPE_CODE:
        return "unknown_event_type"
    event_time = record.get("event_time")
    if not isinstance(event_time, int) or isinstance(event_time, bool):
        return "no_event_time"
    return None


def _is_price(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


@dataclass
class _Tally:
    """Records of one kind: how many were read, and the dropped ones by reason."""

    read: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def count(self, reason: str | None) -> bool:
        """Count one record read (dropped for ``reason``, unless None); whether it is used."""
        self.read += 1
        if reason is not None:
            self.dropped[reason] += 1
        return reason is None

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    @property
    def share_dropped(self) -> float:
        return self.n_dropped / self.read if self.read else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "used": self.read - self.n_dropped,
            "dropped": self.n_dropped,
            "dropped_by_reason": dict(self.dropped.most_common()),
        }


@dataclass
class _History:
    """A dataset's usable events in time order, as aligned arrays, split by event time."""

    events: list[BrowsingEvent]
    items: np.ndarray  # int32 product index per event
    types: np.ndarray  # int8 event type code
    times: np.ndarray  # int64 event time (ms)
    session_codes: np.ndarray  # int, identifies the (user, session) of each event
    next_items: np.ndarray  # int32 the product of the user's next event in the session, or -1
    is_train: np.ndarray  # bool: in the training window (of the evaluation model)
    start_ms: int
    split_ms: int
    end_ms: int


@dataclass
class _Dataset:
    """Everything training uses of a dataset, and the count of what was read, used, dropped."""

    product_ids: list[str]  # the model's catalogue: catalogue.csv, then the products it lacks
    categories: list[str]
    prices: np.ndarray  # float64, NaN where unknown
    history: _History
    purchases: dict[str, list[tuple[int, int]]]  # by user: (time, product index), time order
    summary: dict[str, Any]  # metadata "data"


def _read_dataset(dataset_dir: Path, settings: TrainSettings) -> _Dataset:
    """Step 1: the dataset's usable records, the model's catalogue, the split, and the counts.

    Raises:
        UnusableDatasetError: more than ``settings.max_dropped_share`` of the events or of the
            purchase lines are unusable, or fewer than ``MIN_EVENTS`` events are usable.
    """
    from worker.apps import dataset

    catalogue = dataset.read_catalogue(dataset_dir)
    users_read: set[str] = set()
    products_read: set[str] = set(catalogue.product_ids)
    event_tally, purchase_tally = _Tally(), _Tally()
    records: list[dict[str, Any]] = []
    purchases: list[dict[str, Any]] = []
    for tally, is_event, kept, read in (
        (event_tally, True, records, dataset.iter_events(dataset_dir)),
        (purchase_tally, False, purchases, dataset.iter_purchases(dataset_dir)),
    ):
        for r in read:
            if _is_id(r.get("user_id")):
                users_read.add(r["user_id"])
            if _is_id(r.get("product_id")):
                products_read.add(r["product_id"])
            if tally.count(_unusable(r, event=is_event)):
                kept.append(r)
    product_ids, categories, prices = _model_catalogue(catalogue, records, purchases)
    users_used = {r["user_id"] for r in records} | {p["user_id"] for p in purchases}
    summary = {
        "events": event_tally.as_dict(),
        "purchase_lines": purchase_tally.as_dict(),
        "users": {
            "read": len(users_read),
            "used": len(users_used),
            "dropped": len(users_read - users_used),  # users of dropped records only
        },
        "products": {
            "read": len(products_read),  # catalogue.csv and every record's product
            "used": len(product_ids),  # the model's catalogue
            "dropped": len(products_read.difference(product_ids)),  # of dropped records only
            "in_catalogue_csv": len(catalogue),
            "added_from_events": len(product_ids) - len(catalogue),
        },
        "max_dropped_share": settings.max_dropped_share,
    }
    _refuse_too_many_dropped(dataset_dir, event_tally, purchase_tally, settings)
    if len(records) < MIN_EVENTS:
        raise UnusableDatasetError(
            f"{dataset_dir}: only {len(records)} usable events; training needs {MIN_EVENTS}"
        )
    records.sort(key=lambda r: (r["event_time"], r["event_id"]))
    events = [event_from_record(r) for r in records]
    del records
    index_of = {pid: i for i, pid in enumerate(product_ids)}
    return _Dataset(
        product_ids,
        categories,
        prices,
        _history(events, index_of, settings),
        _purchase_index(purchases, index_of),
        summary,
    )


def _model_catalogue(
    catalogue: Any, events: list[dict[str, Any]], purchases: list[dict[str, Any]]
) -> tuple[list[str], list[str], np.ndarray]:
    """The model's products: catalogue.csv's, then, sorted by id, those of the usable records
    that it lacks. Such a product takes the most frequent non-empty category of its events (ties:
    the smallest id), else UNKNOWN_CATEGORY, and the median known price of its events, else NaN
    (unknown: log_price 0)."""
    product_ids = list(catalogue.product_ids)
    categories = list(catalogue.category_ids)
    known = set(product_ids)
    seen_categories: dict[str, Counter[str]] = {}
    seen_prices: dict[str, list[float]] = defaultdict(list)
    for r in events:
        pid = r["product_id"]
        if pid in known:
            continue
        counts = seen_categories.setdefault(pid, Counter())
        if _is_id(r.get("category_id")):
            counts[r["category_id"]] += 1
        if _is_price(r.get("price")):
            seen_prices[pid].append(float(r["price"]))
    added = set(seen_categories).union(p["product_id"] for p in purchases)
    added -= known
    new_prices = []
    for pid in sorted(added):
        named = seen_categories.get(pid)
        product_ids.append(pid)
        categories.append(
            min(named.items(), key=lambda c: (-c[1], c[0]))[0] if named else UNKNOWN_CATEGORY
        )
        new_prices.append(float(np.median(seen_prices[pid])) if pid in seen_prices else math.nan)
    prices = np.concatenate([np.asarray(catalogue.prices, dtype=np.float64), new_prices])
    return product_ids, categories, prices


def _refuse_too_many_dropped(
    dataset_dir: Path, events: _Tally, purchases: _Tally, settings: TrainSettings
) -> None:
    """Refuse the dataset when too much of it is unusable.

    Raises:
        UnusableDatasetError: more than ``max_dropped_share`` of the events or of the purchase
            lines are unusable; one line naming the shares, the reasons and the threshold.
    """
    problems = [
        f"{tally.n_dropped:,} of {tally.read:,} {label} ({tally.share_dropped:.1%}: "
        + ", ".join(f"{n:,} {reason}" for reason, n in tally.dropped.most_common())
        + ")"
        for tally, label in ((events, "events"), (purchases, "purchase lines"))
        if tally.share_dropped > settings.max_dropped_share
    ]
    if problems:
        limit = settings.max_dropped_share
        raise UnusableDatasetError(
            f"{dataset_dir}: {' and '.join(problems)} are unusable, more than "
            f"--max-dropped-share {limit:g} ({limit:.1%}) allows; not training on the rest"
        )


def _history(
    events: list[BrowsingEvent], index_of: dict[str, int], settings: TrainSettings
) -> _History:
    """Usable events in time order as aligned arrays, and the split by event time."""
    items = np.fromiter((index_of[e.product_id] for e in events), dtype=np.int32, count=len(events))
    types = np.fromiter((e.event_type for e in events), dtype=np.int8, count=len(events))
    times = np.fromiter((e.event_time_ms for e in events), dtype=np.int64, count=len(events))
    session_keys = np.asarray([f"{e.user_id}\x00{e.session_id}" for e in events])
    _, session_codes = np.unique(session_keys, return_inverse=True)
    t_start, t_end = int(times[0]), int(times[-1])
    split_ms = t_start + int((t_end - t_start) * (1.0 - settings.eval_fraction))
    return _History(
        events,
        items,
        types,
        times,
        session_codes,
        _next_items(events, items),
        times < split_ms,
        t_start,
        split_ms,
        t_end,
    )


# -- steps 2 and 3: fitting a model on a window of the history ------------------------------------


@dataclass
class _EvalBatch:
    """Evaluation events with a target (a batch of them): what the model and the heuristic
    rankers need to be scored on the same events, and no more (the evaluation slice only)."""

    x: np.ndarray  # float32 (B * candidates, features) the model's features
    cands: np.ndarray  # int32 (B, candidates) the model's candidates
    bought: list[set[int]]  # products bought within the attribution window after each event
    targets_next: np.ndarray  # int32 (B,) the next product in the session, or -1
    session_items: np.ndarray  # int32 (B, history) the session's products, most recent first
    categories: np.ndarray  # int32 (B,) category of the event's product
    seen_targets: list[AbstractSet[int]]  # the targets (next, bought) already in the session


@dataclass
class _Examples:
    """Feature tensors of sampled training events and of every evaluation event with a target."""

    x_train: np.ndarray  # (queries, candidates, features)
    y_train: np.ndarray  # (queries, candidates) labels 0/1/2
    eval_batches: list[_EvalBatch]


@dataclass
class _Model:
    """One fit: its tables and booster, and the events after its window, ready to score."""

    tables: CatalogueTables
    booster: Any
    params: dict[str, Any]
    queries: int
    rows: int
    seconds: float  # since training started, when this fit ended
    eval_batches: list[_EvalBatch]


def train(
    dataset_dir: Path,
    models_dir: Path,
    settings: TrainSettings = TrainSettings(),
    *,
    log: Any = None,
) -> tuple[Path, dict[str, Any]]:
    """Read, evaluate, refit and save a model artifact; returns its path and metadata (the steps
    of the module docstring).

    Raises:
        UnusableDatasetError: the dataset has too many unusable records, or too few usable ones.
    """
    started = time.perf_counter()
    data = _read_dataset(dataset_dir, settings)
    history = data.history
    evaluated = _fit_window(data, history.is_train, settings, "evaluation", started, log)
    evaluation_started = time.perf_counter()
    rankers = _fit_baselines(data, history.is_train, evaluated.tables, settings)
    evaluation = _evaluate(
        evaluated.booster, evaluated.eval_batches, rankers, evaluated.tables, settings
    )
    evaluation_seconds = time.perf_counter() - evaluation_started
    if log:
        log.info(
            "evaluated",
            rankers=list(evaluation.rankers),
            seconds=round(evaluation_seconds, 1),
        )
    evaluated.eval_batches = []  # free them before the refit
    del rankers
    served = evaluated
    if settings.refit:
        everything = np.ones(len(history.events), dtype=bool)
        served = _fit_window(data, everything, settings, "served", started, log)
    metadata = _metadata(served, evaluated, evaluation, data, settings, dataset_dir)
    metadata["evaluation_seconds"] = round(evaluation_seconds, 1)
    # Input drift reference (worker.core.drift): the held-out slice replayed through the serving
    # pipeline with the evaluation model's tables (traffic after the window its tables were
    # built from, as a worker sees live traffic), its sessions warmed up on the hour before; at
    # most the last DRIFT_REFERENCE_EVENTS events are collected (about 0.15 ms an event).
    times = history.times
    collect = max(
        int(np.searchsorted(times, history.split_ms)), len(times) - DRIFT_REFERENCE_EVENTS
    )
    warm = int(np.searchsorted(times, int(times[min(collect, len(times) - 1)]) - 3_600_000))
    metadata["drift_reference"] = reference_by_replay(
        evaluated.tables,
        history.events[warm:],
        history.items[warm:],
        n_candidates=settings.n_candidates,
        history=settings.history,
        collect_from=collect - warm,
        seed=settings.seed,
    ).to_json()
    # The champion it was trained to succeed (None for a models directory's first model).
    metadata["parent"] = serving_state(models_dir).champion
    path = save_artifact(
        models_dir,
        metadata["version"],
        served.booster,
        served.tables,
        metadata,
        make_latest=False,
    )
    # Compiled once here, into the artifact's cache, before it becomes the served one: a worker
    # then loads the object in well under a second instead of compiling for about a minute
    # (a no-op without lleaves; a worker on another CPU compiles for itself and says so).
    precompile(path, log=log)
    if settings.publish:
        publish(models_dir, metadata["version"], why="worker train --dataset " + str(dataset_dir))
    return path, metadata


def _fit_window(
    data: _Dataset,
    window: np.ndarray,
    settings: TrainSettings,
    label: str,
    started: float,
    log: Any,
) -> _Model:
    """Steps 2 and 3: tables and booster from the events of ``window`` (a mask over the
    history); the features of the events after it with a target are kept for the evaluation."""
    tables, examples = window_examples(data, window, settings, label, started, log)
    n_queries, n_cands, n_features = examples.x_train.shape
    if log:
        log.info(
            "training",
            model=label,
            queries=n_queries,
            rows=n_queries * n_cands,
            features=n_features,
            seconds=round(time.perf_counter() - started, 1),
        )
    booster, params = _fit(examples.x_train, examples.y_train, settings)
    return _Model(
        tables,
        booster,
        params,
        n_queries,
        n_queries * n_cands,
        time.perf_counter() - started,
        examples.eval_batches,
    )


def window_examples(
    data: _Dataset,
    window: np.ndarray,
    settings: TrainSettings,
    label: str = "evaluation",
    started: float | None = None,
    log: Any = None,
) -> tuple[CatalogueTables, _Examples]:
    """The tables of ``window`` and the examples a booster is fit on (sampled, labelled
    training queries: honest folds unless ``settings.honest_folds`` is 0), with the evaluation
    batches of the events after the window (``worker-dev tradeoff`` fits other boosters on
    the same examples)."""
    started = time.perf_counter() if started is None else started
    history = data.history
    tables = _training_tables(data, window, settings)
    if log:
        log.info(
            "tables_built",
            model=label,
            products=len(data.product_ids),
            events=len(history.events),
            train_events=int(window.sum()),
            seconds=round(time.perf_counter() - started, 1),
        )
    rng = np.random.default_rng(settings.seed)
    if settings.honest_folds <= 0:
        examples = _collect_examples(history, tables, data.purchases, window, settings, rng)
    else:
        examples = _collect_examples(
            history, tables, data.purchases, window, settings, rng, train=False
        )
        times = history.times
        lo_ms, hi_ms = int(times[window].min()), int(times[window].max()) + 1
        span = hi_ms - lo_ms
        xs, ys = [], []
        for fold in range(1, settings.honest_folds + 1):
            cut_lo = hi_ms - int(span * settings.honest_fold_fraction * fold)
            cut_hi = hi_ms - int(span * settings.honest_fold_fraction * (fold - 1))
            past = window & (times < cut_lo)
            queries = window & (times >= cut_lo) & (times < cut_hi)
            if not past.any() or not queries.any():
                continue
            fold_tables = _training_tables(data, past, settings)
            try:
                part = _collect_examples(
                    history, fold_tables, data.purchases, queries, settings, rng, evaluate=False
                )
            except UnusableDatasetError:
                continue
            xs.append(part.x_train)
            ys.append(part.y_train)
        if not xs:
            raise UnusableDatasetError("no training event has its target among its candidates")
        x_train, y_train = np.concatenate(xs), np.concatenate(ys)
        if x_train.shape[0] > settings.max_train_queries:
            pick = np.sort(rng.choice(x_train.shape[0], settings.max_train_queries, replace=False))
            x_train, y_train = x_train[pick], y_train[pick]
        examples.x_train, examples.y_train = x_train, y_train
    return tables, examples


def _by_session(history: _History, window: np.ndarray) -> np.ndarray:
    """The rows of ``window``, sessions contiguous, time order within each."""
    rows = np.flatnonzero(window)
    return rows[np.lexsort((history.times[rows], history.session_codes[rows]))]


def _fit_baselines(
    data: _Dataset, window: np.ndarray, tables: CatalogueTables, settings: TrainSettings
) -> list[Ranker]:
    """The heuristic rankers from the events of ``window`` (the training window)."""
    history = data.history
    by_session = _by_session(history, window)
    return fit_baselines(
        history.items[by_session],
        history.types[by_session] == EVENT_TYPE_CODE["VIEW"],
        history.session_codes[by_session],
        history.times[by_session],
        tables.category,
        covis_window=settings.covis_window,
        neighbours=settings.n_candidates,
    )


def _training_tables(
    data: _Dataset, window: np.ndarray, settings: TrainSettings
) -> CatalogueTables:
    """The catalogue tables from the events of ``window``, sessions contiguous."""
    history = data.history
    by_session = _by_session(history, window)
    return build_tables(
        data.product_ids,
        data.categories,
        data.prices,
        history.items[by_session],
        history.types[by_session],
        history.session_codes[by_session],
        settings,
    )


def _collect_examples(
    history: _History,
    tables: CatalogueTables,
    purchases: dict[str, list[tuple[int, int]]],
    window: np.ndarray,
    settings: TrainSettings,
    rng: np.random.Generator,
    *,
    train: bool = True,
    evaluate: bool = True,
) -> _Examples:
    """Replay every event through the serving code (sessions, candidates, features); keep the
    labelled features of sampled events of ``window`` and of every event outside it with a
    target (the evaluation's).

    Raises:
        UnusableDatasetError: no event of the window has a positive candidate.
    """
    events, items, next_items = history.events, history.items, history.next_items
    sessions = SessionStore(history=settings.history, max_users=10_000_000, idle_ttl_ms=1 << 62)
    train_x: list[np.ndarray] = []
    train_y: list[np.ndarray] = []
    eval_batches: list[_EvalBatch] = []
    # Per user: (session id, session start) and the products of that session so far, for the
    # discovery metrics; only when some events are evaluated (not for the refit).
    seen_in_session: dict[str, tuple[tuple[str, int], set[int]]] = {}
    track_seen = evaluate and not bool(window.all())
    keep_probability = min(1.0, 3.0 * settings.max_train_queries / max(1, int(window.sum())))
    # Without evaluation, the replay can stop after the window's last event.
    end = len(events) if evaluate or not window.any() else int(np.flatnonzero(window)[-1]) + 1
    for lo in range(0, end, settings.chunk_events):
        hi = min(lo + settings.chunk_events, end)
        chunk = events[lo:hi]
        batch = advance_sessions(sessions, chunk, items[lo:hi])
        targets_next = next_items[lo:hi]
        bought = [_purchased_after(purchases, e, settings.attribution_window_ms) for e in chunk]
        has_target = (targets_next >= 0) | np.fromiter((bool(b) for b in bought), bool, len(chunk))
        sampled = window[lo:hi] & has_target & (rng.random(hi - lo) < keep_probability)
        evaluated = ~window[lo:hi] & has_target
        if not train:
            sampled[:] = False
        if not evaluate:
            evaluated[:] = False
        seen_targets: dict[int, AbstractSet[int]] = {}
        if track_seen:
            seen_targets = _seen_targets(
                seen_in_session, chunk, batch, evaluated, targets_next, bought
            )
        for mask, is_eval in ((sampled, False), (evaluated, True)):
            local = np.flatnonzero(mask)
            if local.size == 0:
                continue
            sub: SessionBatch = batch.take(local)
            cands = generate_candidates(tables, sub.items, sub.current_item, settings.n_candidates)
            x = build_features(tables, sub, cands)
            sub_bought = [bought[i] for i in local]
            if is_eval:
                eval_batches.append(
                    _EvalBatch(
                        x,
                        cands,
                        sub_bought,
                        targets_next[local],
                        sub.items,
                        tables.category[sub.current_item],
                        [seen_targets[i] for i in local.tolist()],
                    )
                )
                continue
            labels = _labels(cands, targets_next[local], sub_bought)
            positive = labels.max(axis=1) > 0
            train_x.append(x.reshape(cands.shape[0], cands.shape[1], -1)[positive])
            train_y.append(labels[positive])
    if not train:
        return _Examples(np.zeros((0, 0, 0), np.float32), np.zeros((0, 0), np.int8), eval_batches)
    if not train_x:
        raise UnusableDatasetError("no training event has its target among its candidates")
    x_train = np.concatenate(train_x)
    y_train = np.concatenate(train_y)
    if x_train.shape[0] > settings.max_train_queries:
        pick = np.sort(rng.choice(x_train.shape[0], settings.max_train_queries, replace=False))
        x_train, y_train = x_train[pick], y_train[pick]
    return _Examples(x_train, y_train, eval_batches)


_NOTHING: frozenset[int] = frozenset()


def _seen_targets(
    seen_in_session: dict[str, tuple[tuple[str, int], set[int]]],
    chunk: Sequence[BrowsingEvent],
    batch: SessionBatch,
    evaluated: np.ndarray,
    targets_next: np.ndarray,
    bought: list[set[int]],
) -> dict[int, AbstractSet[int]]:
    """Record each event's product in its user's session (``seen_in_session``, updated in
    place; a session is the serving one: same session id and start); for each evaluated row,
    its targets (next product, products bought) already in the session, this event included."""
    out: dict[int, AbstractSet[int]] = {}
    starts = batch.start_ms.tolist()
    products = batch.current_item.tolist()
    flagged = evaluated.tolist()
    for row, event in enumerate(chunk):
        key = (event.session_id, starts[row])
        entry = seen_in_session.get(event.user_id)
        if entry is None or entry[0] != key:
            entry = (key, set())
            seen_in_session[event.user_id] = entry
        seen = entry[1]
        seen.add(products[row])
        if flagged[row]:
            target = int(targets_next[row])
            both = ({target} & seen if target >= 0 else set()) | (bought[row] & seen)
            out[row] = both or _NOTHING  # most are empty: one shared object, not one per event
    return out


def _labels(cands: np.ndarray, next_items: np.ndarray, bought: list[set[int]]) -> np.ndarray:
    """Per candidate: 2 if bought within the attribution window, 1 if the next product in the
    session, 0 otherwise."""
    labels: np.ndarray = (cands == next_items[:, None]).astype(np.int8)
    for r, b in enumerate(bought):
        if b:
            labels[r, np.isin(cands[r], list(b))] = 2
    return labels


def _fit(
    x_train: np.ndarray,
    y_train: np.ndarray,
    settings: TrainSettings,
    query_weights: np.ndarray | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The LambdaRank booster (one query per event, its candidates as documents); each query
    weighted by ``query_weights`` when given (``worker-dev tradeoff --sweep``; local only)."""
    import lightgbm

    from worker.model.lightgbm_log import route_lightgbm_log

    route_lightgbm_log(lightgbm)

    n_queries, n_cands, n_features = x_train.shape
    params = {
        "objective": "lambdarank",
        "metric": "ndcg",
        "eval_at": [settings.top_k],
        "num_leaves": settings.num_leaves,
        "learning_rate": settings.learning_rate,
        "min_data_in_leaf": settings.min_data_in_leaf,
        "label_gain": [0.0, 1.0, float(settings.purchase_gain)],
        "feature_fraction": 0.9,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "num_threads": settings.num_threads,
        "seed": settings.seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
    }
    if settings.engine == "dask":
        if query_weights is not None:
            raise ValueError("query weights are for the local engine only")
        return _fit_dask(x_train, y_train, settings, params)
    train_set = lightgbm.Dataset(
        x_train.reshape(-1, n_features),
        label=y_train.reshape(-1),
        weight=None if query_weights is None else np.repeat(query_weights, n_cands),
        group=np.full(n_queries, n_cands),
        feature_name=FEATURE_NAMES,
        free_raw_data=True,
    )
    return lightgbm.train(params, train_set, num_boost_round=settings.num_trees), params


def _fit_dask(
    x_train: np.ndarray, y_train: np.ndarray, settings: TrainSettings, params: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """The same LambdaRank booster fit by LightGBM's Dask interface (``DaskLGBMRanker``,
    data-parallel: each Dask worker builds histograms of its rows, merged over LightGBM's own
    network), on the cluster at ``settings.dask_scheduler``, or (``local``) on a local cluster of
    ``settings.dask_workers`` single-threaded worker processes started and closed here.

    The examples are cut into one partition per worker, of whole queries (a query's candidates
    never straddle two partitions; ``group`` holds each partition's query sizes), and scattered
    to the workers. The result is a plain ``lightgbm.Booster`` (``booster_``), used exactly as
    the local one. Not bit-identical to the local fit: the histograms are built per partition and
    the bagging draws per machine.

    Raises:
        ConfigError: the ``dask`` extra is not installed, or the cluster has no worker.
    """
    from worker.core.errors import ConfigError

    try:
        import dask.array as da
        import distributed
        from lightgbm.dask import DaskLGBMRanker
    except ImportError as exc:
        raise ConfigError(
            f"--engine dask needs the `dask` extra (pip install 'worker[dask]'): {exc}"
        ) from None

    n_queries, n_cands, n_features = x_train.shape
    cluster = None
    if settings.dask_scheduler != "local":
        client = distributed.Client(settings.dask_scheduler)
    else:
        cluster = distributed.LocalCluster(
            n_workers=settings.dask_workers,
            threads_per_worker=1,
            processes=True,  # LightGBM's network is one machine per process
            dashboard_address=":0",  # any free port: never a clash with another cluster
        )
        client = distributed.Client(cluster)
    try:
        try:
            client.wait_for_workers(1, timeout=120)
        except TimeoutError:
            raise ConfigError(f"no Dask worker at {settings.dask_scheduler} in 120 s") from None
        workers = sorted(client.scheduler_info()["workers"])
        bounds = np.linspace(0, n_queries, min(len(workers), n_queries) + 1).astype(int)
        xs, ys, gs = [], [], []
        for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            part_x = np.ascontiguousarray(x_train[lo:hi].reshape(-1, n_features))
            part_y = y_train[lo:hi].reshape(-1).astype(np.float32)
            part_g = np.full(hi - lo, n_cands, dtype=np.int64)
            # Each partition on its own worker: LightGBM trains where the data already is.
            fx, fy, fg = client.scatter([part_x, part_y, part_g], workers=[workers[i]])
            xs.append(da.from_delayed(fx, shape=part_x.shape, dtype=part_x.dtype))
            ys.append(da.from_delayed(fy, shape=part_y.shape, dtype=part_y.dtype))
            gs.append(da.from_delayed(fg, shape=part_g.shape, dtype=part_g.dtype))
        ranker = DaskLGBMRanker(
            client=client,
            objective="lambdarank",
            n_estimators=settings.num_trees,
            num_leaves=settings.num_leaves,
            learning_rate=settings.learning_rate,
            min_child_samples=settings.min_data_in_leaf,
            colsample_bytree=params["feature_fraction"],
            subsample=params["bagging_fraction"],
            subsample_freq=params["bagging_freq"],
            random_state=settings.seed,
            label_gain=params["label_gain"],
            deterministic=params["deterministic"],
            force_row_wise=params["force_row_wise"],
            verbosity=params["verbosity"],
        )
        ranker.fit(
            da.concatenate(xs),
            da.concatenate(ys),
            group=da.concatenate(gs),
            feature_name=list(FEATURE_NAMES),
        )
        booster = ranker.booster_
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    dask_params = {k: v for k, v in params.items() if k != "num_threads"}
    dask_params.update(tree_learner="data", num_machines=len(xs), threads_per_machine=1)
    return booster, dask_params


# -- step 4: the artifact's metadata -------------------------------------------------------------


def _metadata(
    served: _Model,
    evaluated: _Model,
    evaluation: Evaluation,
    data: _Dataset,
    settings: TrainSettings,
    dataset_dir: Path,
) -> dict[str, Any]:
    """The artifact's metadata; its version is the creation time plus a hash of the served
    model's text."""
    import lightgbm

    history = data.history
    model_text = served.booster.model_to_string()
    created = datetime.now(timezone.utc)
    version = (
        created.strftime("%Y%m%dT%H%M%SZ")
        + "-"
        + hashlib.sha256(model_text.encode()).hexdigest()[:8]
    )
    evaluation_fit = {  # end_ms excluded
        "start_ms": history.start_ms,
        "end_ms": history.split_ms,
        "events": int(history.is_train.sum()),
    }
    whole_history = {  # end_ms included: the last event's time
        "start_ms": history.start_ms,
        "end_ms": history.end_ms,
        "events": len(history.events),
    }
    return {
        "version": version,
        "created_at": created.isoformat(),
        "feature_names": FEATURE_NAMES,
        "dataset": str(dataset_dir),
        # Where the dataset came from (dataset.json's "source"): for `worker dataset export`, the
        # topics, partitions and offset ranges read, so that the training data can be read again.
        "dataset_source": _dataset_source(dataset_dir),
        # The served model's window: the whole history, unless refit is off.
        "training_window": whole_history if settings.refit else evaluation_fit,
        # Where the metrics come from: the later slice, which the evaluation model never saw.
        "evaluation_window": {
            "start_ms": history.split_ms,
            "end_ms": history.end_ms,
            "events": int((~history.is_train).sum()),
        },
        "evaluation_model": {
            "training_window": evaluation_fit,
            "training_queries": evaluated.queries,
            "training_rows": evaluated.rows,
            "is_served_model": not settings.refit,
        },
        "metrics": evaluation.as_dict(),
        "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
        "lightgbm": {"version": lightgbm.__version__, "params": served.params},
        # The served model's most viewed products (its tables: the whole history unless refit is
        # off), not the evaluation model's: the monitor scores live traffic against this
        # popularity baseline, so it must be the one the served model knows.
        "popular_top": served.tables.popular_product_ids(settings.global_top),
        "data": data.summary,
        "training_queries": served.queries,
        "training_rows": served.rows,
        "training_seconds": round(served.seconds, 1),
    }


def _dataset_source(dataset_dir: Path) -> Any:
    from worker.apps import dataset

    return dataset.read_source(dataset_dir)


def _evaluate(
    booster: Any,
    eval_batches: Iterable[_EvalBatch],
    rankers: Sequence[Ranker],
    tables: CatalogueTables,
    settings: TrainSettings,
) -> Evaluation:
    """The model and every heuristic ranker on the same evaluation events, both targets."""
    scorer = BoosterScorer(booster, num_threads=settings.num_threads)
    return evaluate_scores(scorer.score, eval_batches, rankers, tables, settings)


def evaluate_scores(
    score: Callable[[np.ndarray], np.ndarray],
    eval_batches: Iterable[_EvalBatch],
    rankers: Sequence[Ranker],
    tables: CatalogueTables,
    settings: TrainSettings,
) -> Evaluation:
    """:func:`_evaluate` with any scorer of the model's feature rows (``score(x)``: one score
    per row) as "model"."""
    k, n = settings.top_k, min(settings.n_candidates, tables.n_products)
    evaluation = Evaluation(k=k, n=n, rankers=("model", *(r.name for r in rankers)))
    for batch in eval_batches:
        scores = score(batch.x).reshape(batch.cands.shape)
        ranked = np.take_along_axis(batch.cands, top_k(scores, k), axis=1).tolist()
        cands = batch.cands.tolist()
        targets = batch.targets_next.tolist()
        categories = batch.categories.tolist()
        for row, ranking in enumerate(ranked):
            session = batch.session_items[row]
            context = SessionContext(session[session >= 0][::-1].tolist(), categories[row])
            lists = [(ranking, set(cands[row]))]
            for ranker in rankers:
                top_n = ranker.rank(context, n)
                lists.append((top_n[:k], set(top_n)))
            seen = batch.seen_targets[row]
            for name, (top, pool) in zip(evaluation.rankers, lists, strict=True):
                if targets[row] >= 0:
                    evaluation.next_item[name].add(top, pool, {targets[row]}, seen, k)
                if batch.bought[row]:
                    evaluation.purchase[name].add(top, pool, batch.bought[row], seen, k)
    return evaluation


def format_evaluation(metadata: dict[str, Any]) -> str:
    """Human-readable table of the evaluation metrics: one row per ranker, per target HR@K,
    MRR@K, NDCG@K, recall@N and discovery HR@K; then, per target, the strongest heuristic and
    the model's lead or deficit against it in HR@K."""
    m = metadata["metrics"]
    k, n = m["k"], m.get("n", "N")
    rankers = m.get("rankers", ["model", "popularity"])
    columns = [f"HR@{k}", f"MRR@{k}", f"NDCG@{k}", f"rec@{n}", f"dHR@{k}"]
    width = 8 * len(columns)
    head = [f"{'':<18}", f"{'ranker':<18}"]
    for key, label in TARGETS:
        rows = m[key]["model"]
        events = f"{label} ({rows['events']:,} events"
        if "discovery" in rows:
            events += f", {rows['discovery']['events']:,} discovery"
        head[0] += f" | {events + ')':<{width}}"
        head[1] += " | " + "".join(f"{c:>8}" for c in columns)
    lines = head
    for ranker in rankers:
        line = f"{ranker:<18}"
        for key, _ in TARGETS:
            row = m[key][ranker]
            discovery = row.get("discovery", {}).get("hit_rate")  # None: an older artifact
            values = (row["hit_rate"], row.get("mrr"), row["ndcg"], row.get("recall"), discovery)
            line += " | " + "".join(f"{v:>8.3f}" if v is not None else f"{'-':>8}" for v in values)
        lines.append(line)
    lines.append(
        f"HR, MRR, NDCG at {k}; rec@{n}: a target in the ranker's {n} (the model's candidates); "
        f"dHR@{k}: HR@{k} on products not yet seen in the session"
    )
    for key, label in TARGETS:
        best = m.get("strongest_baseline", {}).get(key)
        if best is None:
            continue
        lines.append(f"{label}: " + _lead(best, k))
    return "\n".join(line.rstrip() for line in lines)


def _lead(best: dict[str, Any], k: int) -> str:
    """The strongest heuristic and the model's relative lead or deficit in HR@K, plainly."""
    said = (
        f"strongest baseline {best['ranker']} (HR@{k} {best['hit_rate']:.3f}), "
        f"model {best['model_hit_rate']:.3f}: "
    )
    relative = best["model_relative"]
    if relative is None:
        return said + "the baseline hits nothing"
    if relative >= 0:
        return said + f"model leads by {relative:.1%}"
    return said + f"model loses by {-relative:.1%}"


def format_data(metadata: dict[str, Any]) -> str:
    """Human-readable summary of the data read, used and dropped, and of the windows each fit
    used (metadata ``data``, ``evaluation_model``, ``training_window``)."""
    data = metadata["data"]
    lines = [f"{'data':<16}{'read':>10}{'used':>10}{'dropped':>10}"]
    for key, label in (
        ("events", "events"),
        ("purchase_lines", "purchase lines"),
        ("users", "users"),
        ("products", "products"),
    ):
        row = data[key]
        line = f"{label:<16}{row['read']:>10,}{row['used']:>10,}{row['dropped']:>10,}"
        reasons = row.get("dropped_by_reason")
        if reasons:
            line += "  (" + ", ".join(f"{n:,} {reason}" for reason, n in reasons.items()) + ")"
        lines.append(line)
    products = data["products"]
    lines[-1] += (
        f"  ({products['in_catalogue_csv']:,} in catalogue.csv, "
        f"{products['added_from_events']:,} added from the events and purchases)"
    )
    limit = data["max_dropped_share"]
    lines.append(
        f"limit: more than {limit:.1%} of the events or purchase lines unusable refuses the "
        "dataset (--max-dropped-share)"
    )
    fit = metadata["evaluation_model"]["training_window"]
    held_out = metadata["evaluation_window"]
    lines.append(
        f"evaluated: a model fit on {_span(fit)} ({fit['events']:,} events), "
        f"scored on {_span(held_out)} ({held_out['events']:,} events)"
    )
    if metadata["evaluation_model"]["is_served_model"]:
        lines.append("served: that model (--no-refit)")
    else:
        served = metadata["training_window"]
        lines.append(
            f"served: refit on the whole history, {_span(served)} ({served['events']:,} events)"
        )
    return "\n".join(lines)


def _span(window: dict[str, Any]) -> str:
    """A window's time range, to the minute (UTC)."""

    def minute(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")

    return f"{minute(window['start_ms'])} .. {minute(window['end_ms'])} UTC"
