"""Heuristic rankers and the ranking metrics of the offline evaluation (``worker train``).

Pure: numpy only, no I/O. Every ranker is built from the training window alone and answers one
evaluation event at a time: given the event's :class:`SessionContext` (the session as it stands
right after the event, as the model sees it) it returns its top-``n`` product indices, best
first, distinct.

Rankers (``n`` is the candidate count N of the model, 50 by default; "popularity" below is the
training window's products ordered by views, ties by product index, as the model's tables
order them):

* ``popularity``: the ``n`` most viewed products, whatever the session;
* ``recency``: the session's own products, most recent interaction first, each once (at most
  the session's length, so possibly fewer than ``n``);
* ``recency_category``: ``recency``, then the most viewed products of the last event's
  category, then popularity;
* ``covisitation``: the products most often co-visited with the last event's product (pairs of
  interactions within ``window`` positions of each other in one training session, both
  directions, the product itself excluded), most co-visits first (ties: popularity), then
  popularity;
* ``session_knn``: V-SKNN (Ludewig & Jannach 2018, "Evaluation of session-based
  recommendation algorithms"). The current session ``s`` (its last ``L`` interactions, oldest
  first, positions ``1..n_s``) is a vector over products with linear decay weights: product
  ``i`` weighs ``w_i = p / n_s`` where ``p`` is the position of its most recent interaction
  (the last product weighs 1). Candidate neighbours: the ``sample_size`` most recent training
  sessions (by their last event) that contain at least one product of ``s``. Similarity of a
  training session ``t`` (a set of products): cosine of the weighted vector of ``s`` and the
  binary vector of ``t``, ``sim(s, t) = sum(w_i for i in s & t) / (sqrt(sum(w_i**2)) *
  sqrt(|t|))``. The ``k`` most similar candidates are the neighbours (ties: the more recent);
  product ``j`` scores ``sum(sim(s, t) for neighbours t containing j)``; ranked by score (ties:
  popularity), then popularity.

Metrics (:class:`RankingMetrics`, one per ranker and target; ``K`` the cut-off, 10 by default).
An evaluation event's *target set* is ``{next product}`` (the product of the user's next
interaction in the same session) for the next-product target, or the products the user buys
within the attribution window after the event for the purchase target; an event counts for a
target only when its target set is not empty. Its *rank* is the best (smallest) 1-based
position of any product of the target set in the ranker's top-K, or none.

* ``hit_rate`` (HR@K): share of events with a rank;
* ``mrr`` (MRR@K): mean of ``1 / rank`` (0 without one);
* ``ndcg`` (NDCG@K): mean of ``1 / log2(rank + 1)`` (0 without one): the DCG of the best-placed
  target product, whose ideal value is 1;
* ``recall`` (recall@N): share of events with a product of the target set in the ranker's pool
  of N: the model's candidate set (what the booster can rank at all), a heuristic's top-N list.
  As the top-K is part of the pool, recall@N >= HR@K;
* ``discovery``: the same four metrics restricted to products new to the session. An event's
  *seen set* is every product of the user's browsing events (views, cart additions and removals)
  in the current session up to and including the event itself (the suggestion is made right
  after it). The discovery target set is the target set minus the seen set; the event counts for
  discovery only when that set is not empty, and the rank is the best position of one of *its*
  products in the unchanged top-K (a hit on an already seen product never counts).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

#: The rankers :func:`fit_baselines` builds, in the order they are reported.
BASELINE_NAMES = ("popularity", "recency", "recency_category", "covisitation", "session_knn")


@dataclass(frozen=True)
class SessionContext:
    """What a heuristic ranker knows of an evaluation event.

    Attributes:
        items: the session's product indices, oldest first, the event's own product last (the
            last ``history`` interactions, as the serving session holds them; repeats kept).
        category: the category index of the event's product, -1 if unknown.
    """

    items: Sequence[int]
    category: int = -1


class Ranker(Protocol):
    """A heuristic ranker: its top-``n`` distinct product indices for one event, best first."""

    name: str

    def rank(self, context: SessionContext, n: int) -> list[int]: ...


def popularity_order(view_items: np.ndarray, n_products: int) -> np.ndarray:
    """Every product index by views in ``view_items`` (descending), ties by product index."""
    views = np.bincount(np.asarray(view_items, dtype=np.int64), minlength=n_products)
    return np.lexsort((np.arange(n_products), -views)).astype(np.int64)


def distinct_recent_first(items: Sequence[int]) -> list[int]:
    """The distinct products of a session (oldest first), most recent interaction first."""
    out: list[int] = []
    seen: set[int] = set()
    for item in reversed(items):
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def fill(head: Iterable[int], *tails: Iterable[int], n: int) -> list[int]:
    """The first ``n`` distinct non-negative products of ``head`` then each tail, in order."""
    out: list[int] = []
    seen: set[int] = set()
    if n <= 0:
        return out
    for source in (head, *tails):
        for item in source:
            if item >= 0 and item not in seen:
                seen.add(item)
                out.append(int(item))
                if len(out) == n:
                    return out
    return out


def _segments(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``values[lo[j]:hi[j]]`` for every ``j``, concatenated, and the segment ``j`` of each."""
    lengths = hi - lo
    owner = np.repeat(np.arange(lengths.size), lengths)
    starts = np.cumsum(lengths) - lengths
    rows = np.arange(int(lengths.sum())) - starts[owner] + lo[owner]
    return values[rows], owner


def _session_bounds(session_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end rows of each run of equal codes (sessions contiguous)."""
    codes = np.asarray(session_codes)
    if codes.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    change = np.flatnonzero(codes[1:] != codes[:-1]) + 1
    starts = np.concatenate([[0], change]).astype(np.int64)
    ends = np.concatenate([change, [codes.size]]).astype(np.int64)
    return starts, ends


class Popularity:
    """The ``n`` most viewed products of the training window."""

    name = "popularity"

    def __init__(self, popular: np.ndarray) -> None:
        self.popular = np.asarray(popular, dtype=np.int64)
        self._cache: dict[int, list[int]] = {}

    def rank(self, context: SessionContext, n: int) -> list[int]:
        if n not in self._cache:
            self._cache[n] = [int(p) for p in self.popular[:n]]
        return list(self._cache[n])


class Recency:
    """The session's own products, most recent first, each once."""

    name = "recency"

    def rank(self, context: SessionContext, n: int) -> list[int]:
        return distinct_recent_first(context.items)[:n]


class RecencyCategory:
    """Recency, then the last event's category's most viewed products, then popularity.

    Args:
        category: int ``(P,)`` category index of each product.
        popular: every product by views, best first (:func:`popularity_order`).
        depth: how many of each category's most viewed products are kept.
    """

    name = "recency_category"

    def __init__(self, category: np.ndarray, popular: np.ndarray, depth: int = 100) -> None:
        self.popular = np.asarray(popular, dtype=np.int64)
        self._popular = self.popular.tolist()
        category = np.asarray(category, dtype=np.int64)
        by_category = self.popular[np.argsort(category[self.popular], kind="stable")]
        cats = category[by_category]
        self._top: dict[int, np.ndarray] = {}
        starts, ends = _session_bounds(cats)
        for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
            self._top[int(cats[lo])] = by_category[lo : min(hi, lo + depth)]
        self._top_lists = {c: top.tolist() for c, top in self._top.items()}

    def rank(self, context: SessionContext, n: int) -> list[int]:
        category_top = self._top_lists.get(context.category, [])
        return fill(distinct_recent_first(context.items), category_top, self._popular, n=n)


class CoVisitation:
    """Item-to-item co-visitation of the last event's product, then popularity.

    Args:
        items: training interactions' products, sessions contiguous, time order within each.
        session_codes: aligned: one code per session.
        n_products: catalogue size.
        popular: every product by views, best first (ties of co-visit counts follow it).
        window: interactions up to this many positions apart in a session are co-visited.
        neighbours: how many co-visited products each product keeps.
    """

    name = "covisitation"

    def __init__(
        self,
        items: np.ndarray,
        session_codes: np.ndarray,
        n_products: int,
        popular: np.ndarray,
        *,
        window: int = 3,
        neighbours: int = 50,
    ) -> None:
        self.popular = np.asarray(popular, dtype=np.int64)
        self._popular = self.popular.tolist()
        items = np.asarray(items, dtype=np.int64)
        codes = np.asarray(session_codes)
        pop_rank = np.empty(n_products, dtype=np.int64)
        pop_rank[self.popular] = np.arange(n_products)
        src_parts, dst_parts = [], []
        for offset in range(1, window + 1):
            same = codes[offset:] == codes[:-offset]
            a, b = items[:-offset][same], items[offset:][same]
            distinct = a != b
            src_parts += [a[distinct], b[distinct]]
            dst_parts += [b[distinct], a[distinct]]
        src = np.concatenate(src_parts) if src_parts else np.zeros(0, dtype=np.int64)
        dst = np.concatenate(dst_parts) if dst_parts else np.zeros(0, dtype=np.int64)
        pairs, counts = np.unique(src * n_products + dst, return_counts=True)
        pair_src, pair_dst = pairs // n_products, pairs % n_products
        order = np.lexsort((pop_rank[pair_dst], -counts, pair_src))
        pair_src, pair_dst, counts = pair_src[order], pair_dst[order], counts[order]
        first = np.searchsorted(pair_src, pair_src, side="left")
        kept = (np.arange(pair_src.size) - first) < neighbours
        self.neighbour_items = pair_dst[kept]
        self.neighbour_counts = counts[kept]
        self.offsets = np.searchsorted(pair_src[kept], np.arange(n_products + 1))

    def neighbours_of(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        """The co-visited products of ``item``, best first, and their co-visit counts."""
        lo, hi = self.offsets[item], self.offsets[item + 1]
        return self.neighbour_items[lo:hi], self.neighbour_counts[lo:hi]

    def rank(self, context: SessionContext, n: int) -> list[int]:
        if not context.items:
            return fill(self._popular, n=n)
        neighbours, _ = self.neighbours_of(int(context.items[-1]))
        return fill(neighbours.tolist(), self._popular, n=n)


class SessionKNN:
    """V-SKNN over the training sessions (definition in the module docstring).

    Args:
        items: training interactions' products, sessions contiguous, time order within each.
        session_codes: aligned: one code per session.
        times_ms: aligned event times (a session's recency is its last event's).
        n_products: catalogue size.
        popular: every product by views, best first (ties of scores follow it).
        sample_size: candidate neighbours, the most recent sessions sharing a product.
        k: neighbours kept, the most similar candidates.
    """

    name = "session_knn"

    def __init__(
        self,
        items: np.ndarray,
        session_codes: np.ndarray,
        times_ms: np.ndarray,
        n_products: int,
        popular: np.ndarray,
        *,
        sample_size: int = 500,
        k: int = 100,
    ) -> None:
        self.sample_size = sample_size
        self.k = k
        self.popular = np.asarray(popular, dtype=np.int64)
        self._popular = self.popular.tolist()
        self.pop_rank = np.empty(n_products, dtype=np.int64)
        self.pop_rank[self.popular] = np.arange(n_products)
        items = np.asarray(items, dtype=np.int64)
        starts, ends = _session_bounds(np.asarray(session_codes))
        times = np.asarray(times_ms, dtype=np.int64)
        last_ms = times[ends - 1] if ends.size else np.zeros(0, dtype=np.int64)
        # Session ids 0, 1, ... from the most recent session to the oldest (ties: later rows).
        recency = np.lexsort((-starts, -last_ms))
        session_of_row = np.repeat(np.arange(starts.size), ends - starts)
        new_id = np.empty(starts.size, dtype=np.int64)
        new_id[recency] = np.arange(starts.size)
        # Distinct (session, product) pairs: the session -> products and product -> sessions maps.
        pairs = np.unique(new_id[session_of_row] * n_products + items)
        sessions, products = pairs // n_products, pairs % n_products
        self.session_items = products  # by session id, then product
        self.session_offsets = np.searchsorted(sessions, np.arange(starts.size + 1))
        self.session_length = np.diff(self.session_offsets)
        by_product = np.lexsort((sessions, products))
        self.item_sessions = sessions[by_product]  # by product, most recent session first
        self.item_offsets = np.searchsorted(products[by_product], np.arange(n_products + 1))

    def weights(self, items: Sequence[int]) -> dict[int, float]:
        """Linear decay weight of each distinct product of a session (oldest first): position of
        its most recent interaction / session length."""
        n = len(items)
        return {int(item): (p + 1) / n for p, item in enumerate(items)}

    def neighbours(self, items: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The neighbour session ids of a session (oldest first) and their similarities, most
        similar first."""
        weights = self.weights(items)
        if not weights:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        query = np.fromiter(weights, dtype=np.int64, count=len(weights))
        query_w = np.fromiter(weights.values(), dtype=np.float64, count=len(weights))
        order = np.argsort(query)
        query, query_w = query[order], query_w[order]
        # Each product's most recent sessions (ids ascend from the most recent), then the most
        # recent of their union.
        lo = self.item_offsets[query]
        hi = np.minimum(self.item_offsets[query + 1], lo + self.sample_size)
        recent, _ = _segments(self.item_sessions, lo, hi)
        candidates = np.unique(recent)[: self.sample_size]
        if candidates.size == 0:
            return candidates, np.zeros(0)
        lengths = self.session_length[candidates]
        members, owner = _segments(
            self.session_items,
            self.session_offsets[candidates],
            self.session_offsets[candidates + 1],
        )
        at = np.minimum(np.searchsorted(query, members), query.size - 1)
        common = query[at] == members
        dot = np.bincount(owner[common], weights=query_w[at[common]], minlength=candidates.size)
        similarity = dot / (math.sqrt(float(np.dot(query_w, query_w))) * np.sqrt(lengths))
        best = np.argsort(-similarity, kind="stable")[: self.k]  # ties: the more recent
        best = best[similarity[best] > 0]
        return candidates[best], similarity[best]

    def scores(self, items: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Products of the neighbour sessions and their summed similarities, best first (ties:
        popularity)."""
        sessions, similarity = self.neighbours(items)
        if sessions.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        members, owner = _segments(
            self.session_items, self.session_offsets[sessions], self.session_offsets[sessions + 1]
        )
        products, inverse = np.unique(members, return_inverse=True)
        score = np.bincount(inverse, weights=similarity[owner])
        order = np.lexsort((self.pop_rank[products], -score))
        return products[order], score[order]

    def rank(self, context: SessionContext, n: int) -> list[int]:
        products, _ = self.scores(context.items)
        return fill(products[:n].tolist(), self._popular, n=n)


def fit_baselines(
    items: np.ndarray,
    types_are_views: np.ndarray,
    session_codes: np.ndarray,
    times_ms: np.ndarray,
    category: np.ndarray,
    *,
    covis_window: int = 3,
    neighbours: int = 50,
    sample_size: int = 500,
    k: int = 100,
) -> list[Ranker]:
    """Every heuristic ranker of :data:`BASELINE_NAMES`, built from training interactions.

    Args:
        items, session_codes, times_ms: aligned arrays of the training window's interactions,
            sessions contiguous, time order within each session.
        types_are_views: aligned bool: the interaction is a view (popularity counts views).
        category: int ``(P,)`` category index of every product of the catalogue.
        covis_window / neighbours: :class:`CoVisitation`'s; sample_size / k: :class:`SessionKNN`'s.
    """
    n_products = int(np.asarray(category).shape[0])
    items = np.asarray(items, dtype=np.int64)
    popular = popularity_order(items[np.asarray(types_are_views, dtype=bool)], n_products)
    return [
        Popularity(popular),
        Recency(),
        RecencyCategory(category, popular),
        CoVisitation(
            items, session_codes, n_products, popular, window=covis_window, neighbours=neighbours
        ),
        SessionKNN(
            items, session_codes, times_ms, n_products, popular, sample_size=sample_size, k=k
        ),
    ]


# -- metrics ---------------------------------------------------------------------------------


def best_rank(top_k: Sequence[int], targets: Collection[int]) -> int | None:
    """The best 1-based position in ``top_k`` of a product of ``targets``, or None."""
    for position, item in enumerate(top_k, 1):
        if item in targets:
            return position
    return None


@dataclass
class RankingMetrics:
    """HR@K, MRR@K, NDCG@K and recall@N of one ranker over one target (module docstring)."""

    events: int = 0
    hits: int = 0
    rr_sum: float = 0.0
    ndcg_sum: float = 0.0
    in_pool: int = 0

    def add(self, rank: int | None, k: int, in_pool: bool) -> None:
        """One event: its rank (None: no target product in the ranking), the cut-off ``K``,
        and whether a target product is in the ranker's pool of N."""
        self.events += 1
        self.in_pool += bool(in_pool)
        if rank is not None and rank <= k:
            self.hits += 1
            self.rr_sum += 1.0 / rank
            self.ndcg_sum += 1.0 / math.log2(rank + 1)

    def as_dict(self) -> dict[str, float | int]:
        n = max(self.events, 1)
        return {
            "events": self.events,
            "hit_rate": self.hits / n,
            "mrr": self.rr_sum / n,
            "ndcg": self.ndcg_sum / n,
            "recall": self.in_pool / n,
        }


@dataclass
class TargetMetrics:
    """One ranker on one target: all events, and the discovery variant (module docstring)."""

    all: RankingMetrics = field(default_factory=RankingMetrics)
    discovery: RankingMetrics = field(default_factory=RankingMetrics)

    def add(
        self,
        top_k: Sequence[int],
        pool: Collection[int],
        targets: Collection[int],
        seen: Collection[int],
        k: int,
    ) -> None:
        """One event with a non-empty target set.

        Args:
            top_k: the ranker's first K products, best first.
            pool: the ranker's N products (the model's candidates; a heuristic's top-N).
            targets: the event's target products.
            seen: the products of the session up to and including the event.
            k: the cut-off K.
        """
        self.all.add(best_rank(top_k, targets), k, any(t in pool for t in targets))
        new = [t for t in targets if t not in seen]
        if new:
            self.discovery.add(best_rank(top_k, new), k, any(t in pool for t in new))

    def as_dict(self) -> dict[str, Any]:
        return {**self.all.as_dict(), "discovery": self.discovery.as_dict()}
