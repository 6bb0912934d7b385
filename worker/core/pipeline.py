"""The recommendation pipeline of one micro-batch, pure: sessions -> candidates -> features ->
one model call -> top-K.

Training replays history through :meth:`Recommender.advance_sessions` and the same candidate and
feature functions, so serving and training cannot drift apart.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from worker.core.candidates import generate_candidates
from worker.core.catalogue import CatalogueTables
from worker.core.features import SessionBatch, build_features
from worker.core.records import ADD_TO_CART, BrowsingEvent, RankedProduct
from worker.core.session import SessionStore


class Scorer(Protocol):
    def score(self, features: np.ndarray) -> np.ndarray: ...


def advance_sessions(
    sessions: SessionStore,
    events: Sequence[BrowsingEvent],
    items: np.ndarray,
    partitions: Sequence[int] | None = None,
    offsets: Sequence[int] | None = None,
) -> SessionBatch:
    """Record each event in its user's session, in order, and snapshot the session after it.

    Args:
        sessions: the store, updated in place.
        events: validated events in processing order (per-user order preserved).
        items: int32 ``(B,)`` catalogue index of each event's product.
        partitions: input partition of each event (tags the sessions), or None.
        offsets: input offset of each event (redeliveries do not enter the state twice), or None.
    """
    n_events = len(events)
    history = sessions.history
    codes_out = np.full((n_events, history), -1, dtype=np.int32)
    times_out = np.zeros((n_events, history), dtype=np.int64)
    start = np.empty(n_events, dtype=np.int64)
    n_ev = np.empty(n_events, dtype=np.int32)
    n_carts = np.empty(n_events, dtype=np.int32)
    prev = np.empty(n_events, dtype=np.int64)
    item_list = items.tolist()
    partition_list = list(partitions) if partitions is not None else [-1] * n_events
    offset_list = list(offsets) if offsets is not None else [-1] * n_events
    for row, (event, item, partition, offset) in enumerate(
        zip(events, item_list, partition_list, offset_list, strict=True)
    ):
        session = sessions.record(
            event.user_id,
            event.session_id,
            item,
            event.event_type,
            event.event_time_ms,
            event.event_type == ADD_TO_CART,
            partition,
            offset,
        )
        length = len(session.codes)
        codes_out[row, :length] = session.codes[::-1]
        times_out[row, :length] = session.times_ms[::-1]
        start[row] = session.start_ms
        n_ev[row] = session.n_events
        n_carts[row] = session.n_carts
        prev[row] = session.prev_ms
    return SessionBatch(
        items=np.where(codes_out >= 0, codes_out >> 2, -1).astype(np.int32),
        types=np.where(codes_out >= 0, codes_out & 3, -1).astype(np.int8),
        times_ms=times_out,
        current_item=np.asarray(items, dtype=np.int32),
        current_type=np.fromiter((e.event_type for e in events), dtype=np.int8, count=n_events),
        now_ms=np.fromiter((e.event_time_ms for e in events), dtype=np.int64, count=n_events),
        start_ms=start,
        n_events=n_ev,
        n_carts=n_carts,
        prev_ms=prev,
    )


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` best scores per row, best first; ties keep candidate order."""
    k = min(k, scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@dataclass
class StageTimings:
    """Seconds spent per stage of one batch."""

    state_s: float = 0.0
    candidates_s: float = 0.0
    features_s: float = 0.0
    scoring_s: float = 0.0
    ranking_s: float = 0.0


@dataclass
class RankedBatch:
    """Top-K per event of a batch: catalogue indices and scores, ``(B, K)``, best first."""

    items: np.ndarray
    scores: np.ndarray
    product_ids: np.ndarray  # the catalogue, to name the items
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
    """Sessions, candidates, features and scoring for micro-batches of validated events."""

    def __init__(
        self,
        tables: CatalogueTables,
        scorer: Scorer,
        sessions: SessionStore,
        *,
        n_candidates: int = 50,
        top_k: int = 10,
    ) -> None:
        self.tables = tables
        self.scorer = scorer
        self.sessions = sessions
        self.n_candidates = n_candidates
        self.k = top_k

    def recommend(
        self,
        events: Sequence[BrowsingEvent],
        items: np.ndarray,
        partitions: Sequence[int] | None = None,
        offsets: Sequence[int] | None = None,
    ) -> RankedBatch:
        """Rank candidates for every event with one model call; sessions advance in order."""
        timings = StageTimings()
        t0 = time.perf_counter()
        batch = advance_sessions(self.sessions, events, items, partitions, offsets)
        t1 = time.perf_counter()
        candidates = generate_candidates(
            self.tables, batch.items, batch.current_item, self.n_candidates
        )
        t2 = time.perf_counter()
        features = build_features(self.tables, batch, candidates)
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
        timings.ranking_s = t5 - t4
        return RankedBatch(best_items, best_scores, self.tables.product_ids, timings)
