"""Training: history -> catalogue tables + LightGBM ranker -> evaluated, versioned artifact.

Steps (``worker train``):

1. Read the historical dataset (``worker simulate --out DIR`` writes one) and split it by event
   time: the first ``1 - eval_fraction`` is the training window, the rest the evaluation window.
2. Build the catalogue tables (popularity, cart rates, co-visitation, top lists) from the
   training window only.
3. Replay every event in time order through the serving code (sessions, candidates, features),
   labelling each candidate: 2 if the user buys it within the attribution window after the event,
   1 if it is the user's next product in the session, 0 otherwise.
4. Train a LambdaRank booster on a sample of training-window events that have a positive
   candidate; evaluate on every evaluation-window event against the popularity baseline.
5. Write the artifact (``worker.model.artifact.save_artifact``).
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from worker.config import (
    TRAIN_CANDIDATES,
    TRAIN_LEAVES,
    TRAIN_MAX_QUERIES,
    TRAIN_THREADS,
    TRAIN_TOP_K,
    TRAIN_TREES,
    validate,
)
from worker.core.candidates import generate_candidates
from worker.core.catalogue import CatalogueTables
from worker.core.features import FEATURE_NAMES, SessionBatch, build_features
from worker.core.pipeline import advance_sessions, top_k
from worker.core.records import ADD_TO_CART, EVENT_TYPE_CODE, BrowsingEvent
from worker.core.session import SessionStore
from worker.model.artifact import save_artifact
from worker.model.scoring import BoosterScorer


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
    category_top: int = 30
    global_top: int = 100
    attribution_window_ms: int = 30 * 60 * 1000
    eval_fraction: float = 0.2
    max_train_queries: int = TRAIN_MAX_QUERIES.field()
    num_trees: int = TRAIN_TREES.field()
    num_leaves: int = TRAIN_LEAVES.field()
    learning_rate: float = 0.05
    min_data_in_leaf: int = 50
    num_threads: int = TRAIN_THREADS.field()
    seed: int = 7
    chunk_events: int = 4096

    def __post_init__(self) -> None:
        """Check the flagged fields as the command line does, for objects built in code too.

        Raises:
            SettingError: a flagged field's value is unusable (``--trees: 0 is not positive``).
        """
        validate(self)


@dataclass
class RankingMetrics:
    """Hit rate@K and NDCG@K of one ranker over one set of targets."""

    events: int = 0
    hits: int = 0
    ndcg_sum: float = 0.0

    def add(self, rank: int | None, k: int) -> None:
        self.events += 1
        if rank is not None and rank <= k:
            self.hits += 1
            self.ndcg_sum += 1.0 / float(np.log2(rank + 1))

    def as_dict(self) -> dict[str, float | int]:
        n = max(self.events, 1)
        return {"events": self.events, "hit_rate": self.hits / n, "ndcg": self.ndcg_sum / n}


@dataclass
class Evaluation:
    k: int
    next_item_model: RankingMetrics = field(default_factory=RankingMetrics)
    next_item_popularity: RankingMetrics = field(default_factory=RankingMetrics)
    purchase_model: RankingMetrics = field(default_factory=RankingMetrics)
    purchase_popularity: RankingMetrics = field(default_factory=RankingMetrics)

    def as_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "next_item": {
                "model": self.next_item_model.as_dict(),
                "popularity": self.next_item_popularity.as_dict(),
            },
            "purchase_within_attribution_window": {
                "model": self.purchase_model.as_dict(),
                "popularity": self.purchase_popularity.as_dict(),
            },
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
    by_user: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for p in purchases:
        item = index_of.get(p["product_id"])
        if item is not None:
            by_user[p["user_id"]].append((int(p["event_time"]), item))
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


@dataclass
class _History:
    """A dataset's usable events in time order, as aligned arrays, split by event time."""

    events: list[BrowsingEvent]
    items: np.ndarray  # int32 product index per event
    types: np.ndarray  # int8 event type code
    times: np.ndarray  # int64 event time (ms)
    is_train: np.ndarray  # bool: in the training window
    start_ms: int
    split_ms: int
    end_ms: int


@dataclass
class _Examples:
    """Feature tensors of sampled training events and of every evaluation event with a target."""

    x_train: np.ndarray  # (queries, candidates, features)
    y_train: np.ndarray  # (queries, candidates) labels 0/1/2
    eval_batches: list[tuple[np.ndarray, np.ndarray, list[set[int]], np.ndarray]]


def train(
    dataset_dir: Path,
    models_dir: Path,
    settings: TrainSettings = TrainSettings(),
    *,
    log: Any = None,
) -> tuple[Path, dict[str, Any]]:
    """Train, evaluate and save a model artifact; returns its path and metadata (the steps of
    the module docstring)."""
    from worker.apps import dataset

    started = time.perf_counter()
    catalogue = dataset.read_catalogue(dataset_dir)
    product_ids = list(catalogue.product_ids)
    index_of = {pid: i for i, pid in enumerate(product_ids)}
    history = _read_history(dataset_dir, index_of, settings)
    tables = _training_tables(history, product_ids, catalogue, settings)
    if log:
        log.info(
            "tables_built",
            products=len(product_ids),
            events=len(history.events),
            train_events=int(history.is_train.sum()),
            seconds=round(time.perf_counter() - started, 1),
        )
    purchases = _purchase_index(dataset.iter_purchases(dataset_dir), index_of)
    rng = np.random.default_rng(settings.seed)
    examples = _collect_examples(history, tables, purchases, settings, rng)
    n_queries, n_cands, n_features = examples.x_train.shape
    if log:
        log.info(
            "training",
            queries=n_queries,
            rows=n_queries * n_cands,
            features=n_features,
            seconds=round(time.perf_counter() - started, 1),
        )
    booster, params = _fit(examples.x_train, examples.y_train, settings)
    train_seconds = time.perf_counter() - started
    evaluation = _evaluate(booster, tables, examples.eval_batches, settings)
    metadata = _metadata(booster, params, history, tables, evaluation, settings, dataset_dir)
    metadata.update(
        training_queries=n_queries,
        training_rows=n_queries * n_cands,
        training_seconds=round(train_seconds, 1),
    )
    path = save_artifact(models_dir, metadata["version"], booster, tables, metadata)
    return path, metadata


def _read_history(dataset_dir: Path, index_of: dict[str, int], settings: TrainSettings) -> _History:
    """Step 1: the dataset's events with a catalogued product, sorted by time, and the split.

    Raises:
        ValueError: fewer than 100 usable events.
    """
    from worker.apps import dataset

    records = sorted(
        dataset.iter_events(dataset_dir), key=lambda r: (r["event_time"], r["event_id"])
    )
    records = [r for r in records if r["product_id"] in index_of]
    events = [event_from_record(r) for r in records]
    del records
    if len(events) < 100:
        raise ValueError(f"dataset {dataset_dir} has only {len(events)} usable events")
    items = np.fromiter((index_of[e.product_id] for e in events), dtype=np.int32, count=len(events))
    types = np.fromiter((e.event_type for e in events), dtype=np.int8, count=len(events))
    times = np.fromiter((e.event_time_ms for e in events), dtype=np.int64, count=len(events))
    t_start, t_end = int(times[0]), int(times[-1])
    split_ms = t_start + int((t_end - t_start) * (1.0 - settings.eval_fraction))
    return _History(events, items, types, times, times < split_ms, t_start, split_ms, t_end)


def _training_tables(
    history: _History, product_ids: list[str], catalogue: Any, settings: TrainSettings
) -> CatalogueTables:
    """Step 2: the catalogue tables from the training window, sessions contiguous."""
    session_keys = np.asarray([f"{e.user_id}\x00{e.session_id}" for e in history.events])
    _, session_codes = np.unique(session_keys, return_inverse=True)
    train_rows = np.flatnonzero(history.is_train)
    by_session = train_rows[np.lexsort((history.times[train_rows], session_codes[train_rows]))]
    return build_tables(
        product_ids,
        list(catalogue.category_ids),
        np.asarray(catalogue.prices),
        history.items[by_session],
        history.types[by_session],
        session_codes[by_session],
        settings,
    )


def _collect_examples(
    history: _History,
    tables: CatalogueTables,
    purchases: dict[str, list[tuple[int, int]]],
    settings: TrainSettings,
    rng: np.random.Generator,
) -> _Examples:
    """Step 3: replay every event through the serving code (sessions, candidates, features);
    keep the labelled features of sampled training events and of every evaluation event with a
    target."""
    events, items, is_train = history.events, history.items, history.is_train
    next_items = _next_items(events, items)
    sessions = SessionStore(history=settings.history, max_users=10_000_000, idle_ttl_ms=1 << 62)
    train_x: list[np.ndarray] = []
    train_y: list[np.ndarray] = []
    eval_batches: list[tuple[np.ndarray, np.ndarray, list[set[int]], np.ndarray]] = []
    keep_probability = min(1.0, 3.0 * settings.max_train_queries / max(1, int(is_train.sum())))
    for lo in range(0, len(events), settings.chunk_events):
        hi = min(lo + settings.chunk_events, len(events))
        chunk = events[lo:hi]
        batch = advance_sessions(sessions, chunk, items[lo:hi])
        targets_next = next_items[lo:hi]
        bought = [_purchased_after(purchases, e, settings.attribution_window_ms) for e in chunk]
        has_target = (targets_next >= 0) | np.fromiter((bool(b) for b in bought), bool, len(chunk))
        sampled = is_train[lo:hi] & has_target & (rng.random(hi - lo) < keep_probability)
        evaluated = ~is_train[lo:hi] & has_target
        for mask, is_eval in ((sampled, False), (evaluated, True)):
            local = np.flatnonzero(mask)
            if local.size == 0:
                continue
            sub: SessionBatch = batch.take(local)
            cands = generate_candidates(tables, sub.items, sub.current_item, settings.n_candidates)
            x = build_features(tables, sub, cands)
            sub_bought = [bought[i] for i in local]
            if is_eval:
                eval_batches.append((x, cands, sub_bought, targets_next[local]))
                continue
            labels = _labels(cands, targets_next[local], sub_bought)
            positive = labels.max(axis=1) > 0
            train_x.append(x.reshape(cands.shape[0], cands.shape[1], -1)[positive])
            train_y.append(labels[positive])
    x_train = np.concatenate(train_x)
    y_train = np.concatenate(train_y)
    if x_train.shape[0] > settings.max_train_queries:
        pick = np.sort(rng.choice(x_train.shape[0], settings.max_train_queries, replace=False))
        x_train, y_train = x_train[pick], y_train[pick]
    return _Examples(x_train, y_train, eval_batches)


def _labels(cands: np.ndarray, next_items: np.ndarray, bought: list[set[int]]) -> np.ndarray:
    """Per candidate: 2 if bought within the attribution window, 1 if the next product in the
    session, 0 otherwise."""
    labels: np.ndarray = (cands == next_items[:, None]).astype(np.int8)
    for r, b in enumerate(bought):
        if b:
            labels[r, np.isin(cands[r], list(b))] = 2
    return labels


def _fit(
    x_train: np.ndarray, y_train: np.ndarray, settings: TrainSettings
) -> tuple[Any, dict[str, Any]]:
    """Step 4: the LambdaRank booster (one query per event, its candidates as documents)."""
    import lightgbm

    n_queries, n_cands, n_features = x_train.shape
    params = {
        "objective": "lambdarank",
        "metric": "ndcg",
        "eval_at": [settings.top_k],
        "num_leaves": settings.num_leaves,
        "learning_rate": settings.learning_rate,
        "min_data_in_leaf": settings.min_data_in_leaf,
        "feature_fraction": 0.9,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "num_threads": settings.num_threads,
        "seed": settings.seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
    }
    train_set = lightgbm.Dataset(
        x_train.reshape(-1, n_features),
        label=y_train.reshape(-1),
        group=np.full(n_queries, n_cands),
        feature_name=FEATURE_NAMES,
        free_raw_data=True,
    )
    return lightgbm.train(params, train_set, num_boost_round=settings.num_trees), params


def _metadata(
    booster: Any,
    params: dict[str, Any],
    history: _History,
    tables: CatalogueTables,
    evaluation: Evaluation,
    settings: TrainSettings,
    dataset_dir: Path,
) -> dict[str, Any]:
    """Step 5: the artifact's metadata; its version is the creation time plus a hash of the
    model text."""
    import lightgbm

    model_text = booster.model_to_string()
    created = datetime.now(timezone.utc)
    version = (
        created.strftime("%Y%m%dT%H%M%SZ")
        + "-"
        + hashlib.sha256(model_text.encode()).hexdigest()[:8]
    )
    return {
        "version": version,
        "created_at": created.isoformat(),
        "feature_names": FEATURE_NAMES,
        "dataset": str(dataset_dir),
        "training_window": {
            "start_ms": history.start_ms,
            "end_ms": history.split_ms,
            "events": int(history.is_train.sum()),
        },
        "evaluation_window": {
            "start_ms": history.split_ms,
            "end_ms": history.end_ms,
            "events": int((~history.is_train).sum()),
        },
        "metrics": evaluation.as_dict(),
        "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
        "lightgbm": {"version": lightgbm.__version__, "params": params},
        "popular_top": tables.popular_product_ids(settings.global_top),
    }


def _evaluate(
    booster: Any,
    tables: CatalogueTables,
    eval_batches: Iterable[tuple[np.ndarray, np.ndarray, list[set[int]], np.ndarray]],
    settings: TrainSettings,
) -> Evaluation:
    k = settings.top_k
    evaluation = Evaluation(k=k)
    scorer = BoosterScorer(booster, num_threads=settings.num_threads)
    popular = tables.global_top[:k].tolist()
    popular_rank = {item: r + 1 for r, item in enumerate(popular)}
    for x, cands, bought, targets_next in eval_batches:
        scores = scorer.score(x).reshape(cands.shape)
        ranked = np.take_along_axis(cands, top_k(scores, k), axis=1).tolist()
        for row, ranking in enumerate(ranked):
            rank_of = {item: r + 1 for r, item in enumerate(ranking)}
            target = int(targets_next[row])
            if target >= 0:
                evaluation.next_item_model.add(rank_of.get(target), k)
                evaluation.next_item_popularity.add(popular_rank.get(target), k)
            if bought[row]:
                evaluation.purchase_model.add(_best_rank(rank_of, bought[row]), k)
                evaluation.purchase_popularity.add(_best_rank(popular_rank, bought[row]), k)
    return evaluation


def _best_rank(rank_of: dict[int, int], items: set[int]) -> int | None:
    ranks = [rank_of[i] for i in items if i in rank_of]
    return min(ranks) if ranks else None


def format_evaluation(metadata: dict[str, Any]) -> str:
    """Human-readable table of the evaluation metrics."""
    m = metadata["metrics"]
    k = m["k"]
    lines = [f"{'target':<34}{'ranker':<12}{'events':>9}{f'HR@{k}':>9}{f'NDCG@{k}':>9}"]
    for target, label in (
        ("next_item", "next product in session"),
        ("purchase_within_attribution_window", "purchase within attribution"),
    ):
        for ranker in ("model", "popularity"):
            row = m[target][ranker]
            lines.append(
                f"{label:<34}{ranker:<12}{row['events']:>9}{row['hit_rate']:>9.3f}{row['ndcg']:>9.3f}"
            )
    return "\n".join(lines)
