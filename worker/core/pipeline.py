"""The recommendation pipeline of one micro-batch, pure: sessions -> candidates -> features ->
one model call -> top-K.

Training replays history through :func:`advance_sessions` (the loop serving runs in
:func:`advance_entries`) and the same candidate and feature functions, so serving and training
cannot drift apart.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

from worker.core.candidates import generate_candidates
from worker.core.catalogue import CatalogueTables
from worker.core.features import SessionBatch, build_features
from worker.core.live_catalogue import (
    DEFAULT_CAPACITY,
    DEFAULT_HALF_LIFE_MS,
    TRENDING_CATEGORY_TOP,
    TRENDING_TOP,
    LiveCatalogue,
)
from worker.core.records import ADD_TO_CART, BrowsingEvent, RankedProduct
from worker.core.session import SessionStore


class Scorer(Protocol):
    def score(self, features: np.ndarray) -> np.ndarray: ...


class BatchObserver(Protocol):
    """Sees every batch's sessions and feature matrix (the input drift tracker,
    :mod:`worker.core.drift`)."""

    def observe(self, batch: SessionBatch, features: np.ndarray, live: LiveCatalogue) -> None: ...


class BatchEntry(NamedTuple):
    """One validated event of a micro-batch, with everything the batch's path needs about it."""

    event: BrowsingEvent
    #: Index of the event's product in the serving catalogue (the model's or a new product's,
    #: :class:`~worker.core.live_catalogue.LiveCatalogue`).
    item: int
    #: Input partition (tags the session, so it can be dropped when the partition moves), -1 if
    #: the event did not come from Kafka.
    partition: int = -1
    #: Input offset (a redelivered event does not enter the state twice), -1 if unknown.
    offset: int = -1
    #: The record's key: the user id as UTF-8 (:func:`~worker.core.records.to_browsing_event`
    #: checked that), reused to key the event's outputs so it is never encoded again. None if
    #: the event did not come from Kafka.
    key: bytes | None = None


def advance_sessions(
    sessions: SessionStore, events: Sequence[BrowsingEvent], items: np.ndarray
) -> SessionBatch:
    """Record each event in its user's session, in order, and snapshot the session after it
    (history replay: events without partition or offset, as training reads them).

    Args:
        sessions: the store, updated in place.
        events: validated events in processing order (per-user order preserved).
        items: int32 ``(B,)`` catalogue index of each event's product.
    """
    return advance_entries(
        sessions, [BatchEntry(e, i) for e, i in zip(events, items.tolist(), strict=True)]
    )


def advance_entries(sessions: SessionStore, entries: Sequence[BatchEntry]) -> SessionBatch:
    """Record each entry's event in its user's session, in order, and snapshot the session
    after it; an entry whose offset its user's session has already recorded from the same
    partition (a redelivery) leaves the session as it is.

    Args:
        sessions: the store, updated in place.
        entries: the batch's events in processing order (per-user order preserved).
    """
    rows = sessions.record_rows(
        [
            (
                event.user_id,
                event.session_id,
                item,
                event.event_type,
                event.event_time_ms,
                event.event_type == ADD_TO_CART,
                partition,
                offset,
            )
            for event, item, partition, offset, _ in entries
        ]
    )
    n_events = len(entries)
    codes_out = rows.codes
    return SessionBatch(
        items=np.where(codes_out >= 0, codes_out >> 2, -1).astype(np.int32),
        types=np.where(codes_out >= 0, codes_out & 3, -1).astype(np.int8),
        times_ms=rows.times_ms,
        current_item=np.fromiter((e.item for e in entries), dtype=np.int32, count=n_events),
        current_type=np.fromiter(
            (e.event.event_type for e in entries), dtype=np.int8, count=n_events
        ),
        now_ms=np.fromiter(
            (e.event.event_time_ms for e in entries), dtype=np.int64, count=n_events
        ),
        start_ms=rows.start_ms,
        n_events=rows.n_events,
        n_carts=rows.n_carts,
        prev_ms=rows.prev_ms,
    )


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` best scores per row, best first; ties keep candidate order."""
    k = min(k, scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@dataclass
class StageTimings:
    """Seconds spent per stage of one batch: recording the events in their sessions and in the
    trending counts (``state``), generating candidates, building features, the model call
    (``scoring``), and picking the top-K of every event (``rank``)."""

    state_s: float = 0.0
    candidates_s: float = 0.0
    features_s: float = 0.0
    scoring_s: float = 0.0
    rank_s: float = 0.0


@dataclass
class RankedBatch:
    """Top-K per event of a batch: catalogue indices and scores, ``(B, K)``, best first."""

    items: np.ndarray
    scores: np.ndarray
    product_ids: np.ndarray  # the serving catalogue's ids, to name the items
    timings: StageTimings = field(default_factory=StageTimings)

    @property
    def products(self) -> list[tuple[RankedProduct, ...]]:
        """The same as record objects (convenient, slower than the arrays)."""
        ids = self.product_ids[self.items].tolist()
        return [
            tuple(
                RankedProduct(product_id=pid, rank=rank, score=score)
                for rank, (pid, score) in enumerate(zip(id_row, score_row, strict=True), 1)
            )
            for id_row, score_row in zip(ids, self.scores.tolist(), strict=True)
        ]


class Recommender:
    """Candidates, features and scoring for micro-batches of validated events.

    Holds the model and the serving catalogue: the model's catalogue (:attr:`tables`) opened to
    the products the model does not know, with live trending counts (:attr:`live`, a
    :class:`~worker.core.live_catalogue.LiveCatalogue`, which entries' ``item`` indices refer
    to). The session state is its caller's, passed to each :meth:`recommend` call.

    Args:
        tables: the model's catalogue.
        scorer: the model.
        n_candidates / top_k: candidates scored and products suggested per event.
        max_new_products: products the model does not know held at most.
        trending_half_life_s: half-life of the trending counts (event time).
        trending: whether trending products are proposed as candidates.
        live: the serving catalogue, when the caller builds it (the three settings above are
            then its own).
        drift: observes every batch's sessions and features (input drift), timed with the
            features.
    """

    def __init__(
        self,
        tables: CatalogueTables,
        scorer: Scorer,
        *,
        n_candidates: int = 50,
        top_k: int = 10,
        max_new_products: int = DEFAULT_CAPACITY,
        trending_half_life_s: float = DEFAULT_HALF_LIFE_MS / 1000,
        trending: bool = True,
        live: LiveCatalogue | None = None,
        drift: BatchObserver | None = None,
    ) -> None:
        self.tables = tables
        self.drift = drift
        self.live = live or LiveCatalogue(
            tables,
            capacity=max_new_products,
            half_life_ms=trending_half_life_s * 1000,
            trending_top=TRENDING_TOP if trending else 0,
            trending_category_top=TRENDING_CATEGORY_TOP if trending else 0,
        )
        self.scorer = scorer
        self.n_candidates = n_candidates
        self.k = top_k

    def recommend(self, sessions: SessionStore, entries: Sequence[BatchEntry]) -> RankedBatch:
        """Rank candidates for every entry with one model call; sessions advance in order, and
        the batch's events are counted in the trending table before its candidates are drawn.

        Returns:
            Row ``i`` of the result answers ``entries[i]``.
        """
        timings = StageTimings()
        live = self.live
        t0 = time.perf_counter()
        batch = advance_entries(sessions, entries)
        live.observe(batch.current_item, batch.current_type, batch.now_ms)
        t1 = time.perf_counter()
        candidates = generate_candidates(
            live,
            batch.items,
            batch.current_item,
            self.n_candidates,
            category_trending=live.category_trending,
            trending=live.trending_overall,
        )
        t2 = time.perf_counter()
        features = build_features(live, batch, candidates)
        if self.drift is not None:
            self.drift.observe(batch, features, live)
        t3 = time.perf_counter()
        scores = self.scorer.score(features).reshape(candidates.shape)
        t4 = time.perf_counter()
        best = top_k(scores, self.k)
        best_items = np.take_along_axis(candidates, best, axis=1)
        best_scores = np.take_along_axis(scores, best, axis=1)
        t5 = time.perf_counter()
        timings.state_s = t1 - t0
        timings.candidates_s = t2 - t1
        timings.features_s = t3 - t2
        timings.scoring_s = t4 - t3
        timings.rank_s = t5 - t4
        return RankedBatch(best_items, best_scores, live.product_ids, timings)
