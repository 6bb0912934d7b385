"""Feature definitions: the one implementation used by training and by serving.

A batch of events becomes a :class:`SessionBatch` (dense, padded arrays: one row per event, the
user's session as it stands right after that event). :func:`build_features` turns it and the
candidate matrix into one float32 matrix with one row per (event, candidate), all with numpy
broadcasting over ``(events, candidates, history)``: no per-event Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worker.core.catalogue import ProductTables
from worker.core.records import ADD_TO_CART, REMOVE_FROM_CART, VIEW
from worker.core.scratch import cells, scratch

FEATURE_NAMES: list[str] = [
    "cand_log_pop",  # log1p(views of the candidate in the training window)
    "cand_category_rank",  # log1p(rank of the candidate within its category)
    "cand_global_rank",  # log1p(rank of the candidate overall)
    "cand_log_price",  # log1p(price)
    "cand_cart_rate",  # smoothed carts per view of the candidate
    "price_ratio",  # candidate price / current product price
    "same_category",  # candidate in the category of the current product
    "is_current",  # candidate is the current product
    "sess_views",  # views of the candidate in the session
    "sess_net_carts",  # add-to-cart minus remove-from-cart of the candidate in the session
    "secs_since_seen",  # seconds since the candidate was last interacted with (1e5 if never)
    "events_since_seen",  # interactions since then (history length if never)
    "covis_current",  # co-visitation score current product -> candidate
    "covis_session",  # summed co-visitation score of the earlier session products -> candidate
    "category_share",  # share of session interactions in the candidate's category
    "sess_events",  # interactions in the session so far
    "sess_duration_s",  # seconds since the session started
    "sess_carts",  # add-to-cart events in the session
    "current_is_cart",  # the current event is an add-to-cart
    "gap_s",  # seconds since the user's previous event in the session (-1 if first)
    "sess_recency_rank",  # 1-based rank of the candidate among the session's distinct products,
    # most recent interaction first (the recency heuristic's order); 0 if not in the session
    "in_session",  # the candidate is in the session
    "current_category_rank",  # log1p(rank) in the current product's category top; -1 if another
    "sess_dwell_s",  # seconds from the candidate's interactions to the next one, summed
    "cand_position",  # position in the candidate list (session, category top, co-visitation)
]
N_FEATURES = len(FEATURE_NAMES)
NEVER_SEEN_S = 1e5
COVIS_SESSION_ITEMS = 5


@dataclass(frozen=True)
class SessionBatch:
    """Sessions of a batch of events, right after each event, as padded arrays.

    Row ``b`` describes event ``b``. History arrays are most recent first, ``-1`` padded.
    """

    items: np.ndarray  # int32 (B, L)
    types: np.ndarray  # int8 (B, L)
    times_ms: np.ndarray  # int64 (B, L)
    current_item: np.ndarray  # int32 (B,)
    current_type: np.ndarray  # int8 (B,)
    now_ms: np.ndarray  # int64 (B,)
    start_ms: np.ndarray  # int64 (B,)
    n_events: np.ndarray  # int32 (B,)
    n_carts: np.ndarray  # int32 (B,)
    prev_ms: np.ndarray  # int64 (B,), -1 if first event of the session

    @property
    def size(self) -> int:
        return int(self.current_item.shape[0])

    def take(self, rows: np.ndarray) -> SessionBatch:
        """The sub-batch of the given rows."""
        return SessionBatch(
            **{name: getattr(self, name)[rows] for name in self.__dataclass_fields__}
        )


def build_features(
    tables: ProductTables, batch: SessionBatch, candidates: np.ndarray
) -> np.ndarray:
    """Feature matrix, float32 of shape ``(B * C, N_FEATURES)``, rows event-major."""
    n_events, n_cands = candidates.shape
    out = np.empty((n_events, n_cands, N_FEATURES), dtype=np.float32)
    if n_events == 0:
        return out.reshape(0, N_FEATURES)
    cur = batch.current_item
    valid = batch.items >= 0  # (B, L)

    # Static candidate features.
    out[..., 0] = tables.log_pop[candidates]
    out[..., 1] = tables.category_rank[candidates]
    out[..., 2] = tables.global_rank[candidates]
    cand_price = tables.log_price[candidates]
    out[..., 3] = cand_price
    out[..., 4] = tables.cart_rate[candidates]
    cur_price = tables.log_price[cur][:, None]
    # In float64: numpy's float32 expm1 has AVX-512 kernels whose last bit differs from the
    # other CPUs' (the float64 one has none), and a feature must not depend on the CPU.
    cand_amount = np.expm1(cand_price.astype(np.float64))
    cur_amount = np.expm1(cur_price.astype(np.float64))
    out[..., 5] = cand_amount / np.maximum(cur_amount, 1e-3)
    cand_cat = tables.category[candidates]
    out[..., 6] = cand_cat == tables.category[cur][:, None]
    out[..., 7] = candidates == cur[:, None]

    # Candidate x session history: per (event, candidate), its views and net carts in the
    # session, the position of its latest interaction (``history`` if none) and its dwell.
    history = batch.items.shape[1]
    dwell = np.zeros(batch.times_ms.shape, dtype=np.float64)
    dwell[:, 1:] = np.where(
        valid[:, 1:], (batch.times_ms[:, :-1] - batch.times_ms[:, 1:]) / 1000.0, 0
    )
    earlier = batch.items[:, 1 : 1 + COVIS_SESSION_ITEMS]
    positions = _Positions.of(candidates, tables.n_products)
    if positions is None:
        views, net_carts, last_pos, dwell_sum = _history_by_comparison(batch, candidates, dwell)
        covis_current = _covis_scores(tables, cur[:, None], candidates)
        covis_session = _covis_scores(tables, earlier, candidates)
    else:
        try:
            views, net_carts, last_pos, dwell_sum = _history_by_position(
                batch, positions, n_cands, dwell
            )
            covis_current = _covis_scores_at(tables, cur[:, None], positions, n_cands)
            covis_session = _covis_scores_at(tables, earlier, positions, n_cands)
        finally:
            positions.clear()
    seen = last_pos < history
    out[..., 8] = views
    out[..., 9] = net_carts
    latest = np.minimum(last_pos, history - 1)
    last_time = np.take_along_axis(batch.times_ms, latest, axis=1)
    secs = (batch.now_ms[:, None] - last_time) / 1000.0
    out[..., 10] = np.where(seen, secs, NEVER_SEEN_S)
    out[..., 11] = last_pos

    # Co-visitation from the current product and from earlier session products.
    out[..., 12] = covis_current
    out[..., 13] = covis_session

    # Category share of the session.
    session_cats = np.where(valid, tables.category[np.maximum(batch.items, 0)], -1)
    n_valid = np.maximum(valid.sum(axis=1), 1)[:, None]
    out[..., 14] = (cand_cat[:, :, None] == session_cats[:, None, :]).sum(axis=2) / n_valid

    # Session-level features, broadcast over candidates.
    out[..., 15] = batch.n_events[:, None]
    out[..., 16] = ((batch.now_ms - batch.start_ms) / 1000.0)[:, None]
    out[..., 17] = batch.n_carts[:, None]
    out[..., 18] = (batch.current_type == ADD_TO_CART)[:, None]
    gap_s = np.where(batch.prev_ms >= 0, (batch.now_ms - batch.prev_ms) / 1000.0, -1.0)
    out[..., 19] = gap_s[:, None]

    # The heuristics' signals: recency rank, category-top rank, dwell, candidate order.
    items = batch.items
    earlier_same = (items[:, :, None] == items[:, None, :]) & np.tri(
        history, history, -1, dtype=bool
    )  # (B, L, L): position l repeats a more recent position
    first = valid & ~earlier_same.any(axis=2)
    distinct_rank = np.cumsum(first, axis=1)  # at a first occurrence: its 1-based rank
    rank_at = np.take_along_axis(distinct_rank, latest, axis=1)
    out[..., 20] = np.where(seen, rank_at, 0)
    out[..., 21] = seen
    out[..., 22] = np.where(out[..., 6] > 0, tables.category_rank[candidates], -1.0)
    out[..., 23] = dwell_sum
    out[..., 24] = np.arange(n_cands, dtype=np.float32)[None, :]
    return out.reshape(n_events * n_cands, N_FEATURES)


def _history_by_comparison(
    batch: SessionBatch, candidates: np.ndarray, dwell: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Views, net carts, latest position (``L`` if never) and summed dwell of each candidate
    in its event's session, ``(B, C)`` each, by comparing every candidate with every history
    position (``(B, C, L)``: any catalogue size, repeated candidates)."""
    history = batch.items.shape[1]
    match = candidates[:, :, None] == batch.items[:, None, :]  # (B, C, L)
    types = batch.types[:, None, :]
    views = (match & (types == VIEW)).sum(axis=2)
    net_carts = (match & (types == ADD_TO_CART)).sum(axis=2) - (
        match & (types == REMOVE_FROM_CART)
    ).sum(axis=2)
    last_pos = np.where(match.any(axis=2), np.argmax(match, axis=2), history)
    dwell_sum = (match * dwell[:, None, :]).sum(axis=2)
    return views, net_carts, last_pos, dwell_sum


def _history_by_position(
    batch: SessionBatch, positions: _Positions, n_cands: int, dwell: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_history_by_comparison` through the candidates' positions: each history entry is
    looked up once (``(B, L)``), and the sums are counts over (event, candidate) cells."""
    n_events, history = batch.items.shape
    total = n_events * n_cands
    at = positions.lookup(batch.items)  # 1-based candidate column, 0: not a candidate
    hit = at > 0
    rows = np.arange(n_events)[:, None]
    flat = (rows * n_cands + at.astype(np.intp) - 1)[hit]
    types = batch.types[hit]
    views = np.bincount(flat[types == VIEW], minlength=total)
    net_carts = np.bincount(flat[types == ADD_TO_CART], minlength=total) - np.bincount(
        flat[types == REMOVE_FROM_CART], minlength=total
    )
    last_pos = np.full(total, history, dtype=np.intp)
    np.minimum.at(last_pos, flat, np.broadcast_to(np.arange(history), (n_events, history))[hit])
    dwell_sum = np.bincount(flat, weights=dwell[hit], minlength=total)
    shape = (n_events, n_cands)
    return (
        views.reshape(shape),
        net_carts.reshape(shape),
        last_pos.reshape(shape),
        dwell_sum.reshape(shape),
    )


class _Positions:
    """For each row of a batch, 1 + the column of each of its candidates, 0 for every other
    product: this thread's scratch (:mod:`worker.core.scratch`), written by :meth:`of` and
    cleared by :meth:`clear`, which the caller must call whatever happens.

    It turns "which candidate is product p, if any" into one lookup per (row, product): the
    co-visitation and session sums then cost one gather per neighbour or history entry
    instead of a comparison with every candidate."""

    def __init__(self, buffer: np.ndarray, n_products: int, keys: np.ndarray) -> None:
        self._flat = buffer.reshape(-1)
        self._buffer = buffer
        self._n_products = n_products
        self._keys = keys

    @classmethod
    def of(cls, candidates: np.ndarray, n_products: int) -> _Positions | None:
        """None when the scratch would exceed its limit, a row has over 255 candidates, or a
        row repeats a candidate (:func:`generate_candidates` never does)."""
        n_events, n_cands = candidates.shape
        if n_cands > 255:
            return None
        buffer = scratch("candidate-positions", n_events, n_products, np.uint8, 0)
        if buffer is None:
            return None
        keys = cells(buffer, candidates, n_products)  # IndexError before any write
        flat = buffer.reshape(-1)
        columns = np.broadcast_to(np.arange(1, n_cands + 1, dtype=np.uint8), candidates.shape)
        flat[keys] = columns
        if not (flat[keys] == columns).all():
            flat[keys] = 0
            return None  # a row repeats a candidate: not one position each
        return cls(buffer, n_products, keys)

    def lookup(self, products: np.ndarray) -> np.ndarray:
        """uint8, the shape of ``products`` (row ``i`` looked up in row ``i``; -1: padding)."""
        at: np.ndarray = self._flat[cells(self._buffer, products, self._n_products)]
        return at

    def clear(self) -> None:
        self._flat[self._keys] = 0


def _covis_scores_at(
    tables: ProductTables, sources: np.ndarray, positions: _Positions, n_cands: int
) -> np.ndarray:
    """:func:`_covis_scores` through the candidates' positions (:class:`_Positions`): each
    neighbour of each source is looked up once and its score added to the candidate it is,
    if any. Sums in float64 (the broadcast path sums in float32: equal to rounding)."""
    n_events = sources.shape[0]
    safe = np.maximum(sources, 0)
    neighbours = tables.covis_items[safe].reshape(n_events, -1)  # (B, S*M), -1 padded
    scores = tables.covis_scores[safe]
    if (sources < 0).any():
        scores = np.where((sources >= 0)[:, :, None], scores, 0.0)
    scores = scores.reshape(n_events, -1)
    at = positions.lookup(neighbours)  # 1-based candidate column, 0: not a candidate
    hit = at > 0
    rows = np.arange(n_events)[:, None]
    flat = (rows * n_cands + at.astype(np.intp) - 1)[hit]
    summed = np.bincount(flat, weights=scores[hit], minlength=n_events * n_cands)
    return summed.reshape(n_events, n_cands)


def _covis_scores(tables: ProductTables, sources: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Sum over source products (``(B, S)``, -1 padded) of covis score source -> candidate."""
    safe = np.maximum(sources, 0)
    neighbours = tables.covis_items[safe]  # (B, S, M)
    scores = np.where((sources >= 0)[:, :, None], tables.covis_scores[safe], 0.0)
    n_events = sources.shape[0]
    neighbours = neighbours.reshape(n_events, -1)
    scores = scores.reshape(n_events, -1)
    match = candidates[:, :, None] == neighbours[:, None, :]  # (B, C, S*M)
    summed: np.ndarray = (match * scores[:, None, :]).sum(axis=2)  # Any in numpy's stubs
    return summed
