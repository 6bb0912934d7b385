"""The heuristic rankers and the ranking metrics of the offline evaluation: properties over
random sessions and lists (hypothesis), and exact values on hand-made sessions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.core.baselines import (
    BASELINE_NAMES,
    CoVisitation,
    Popularity,
    RankingMetrics,
    Recency,
    RecencyCategory,
    SessionContext,
    SessionKNN,
    TargetMetrics,
    best_rank,
    distinct_recent_first,
    fill,
    fit_baselines,
    popularity_order,
)

N_PRODUCTS = 12
products = st.integers(min_value=0, max_value=N_PRODUCTS - 1)
sessions = st.lists(products, min_size=1, max_size=20)
rankings = st.lists(products, min_size=0, max_size=N_PRODUCTS, unique=True)
targets = st.sets(products, min_size=1, max_size=4)


def _training(
    session_lists: list[list[int]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Items, session codes and times of hand-made training sessions (contiguous, session
    ``s`` at times ``100 * s + position``: later sessions are more recent)."""
    items = [i for s in session_lists for i in s]
    codes = [c for c, s in enumerate(session_lists) for _ in s]
    times = [100 * c + p for c, s in enumerate(session_lists) for p in range(len(s))]
    return np.array(items), np.array(codes), np.array(times)


# -- properties ----------------------------------------------------------------------------------


@given(sessions)
def test_recency_top_1_is_the_last_product_and_the_list_is_the_distinct_session(
    session: list[int],
) -> None:
    ranked = Recency().rank(SessionContext(session), 50)
    assert ranked[0] == session[-1]
    assert len(ranked) == len(set(ranked)) == len(set(session))
    # Most recent first: each product's last position in the session decreases along the list.
    last_position = [max(p for p, i in enumerate(session) if i == item) for item in ranked]
    assert last_position == sorted(last_position, reverse=True)


@given(st.lists(sessions, min_size=1, max_size=8), sessions, st.integers(1, 30))
@settings(max_examples=60, deadline=None)
def test_every_ranker_returns_distinct_catalogue_products_and_fills_to_n(
    training: list[list[int]], session: list[int], n: int
) -> None:
    items, codes, times = _training(training)
    category = np.arange(N_PRODUCTS) % 3
    rankers = fit_baselines(items, np.ones(items.size, bool), codes, times, category)
    assert [r.name for r in rankers] == list(BASELINE_NAMES)
    for ranker in rankers:
        ranked = ranker.rank(SessionContext(session, int(category[session[-1]])), n)
        assert len(ranked) == len(set(ranked))
        assert all(0 <= i < N_PRODUCTS for i in ranked)
        expected = min(n, len(set(session))) if ranker.name == "recency" else min(n, N_PRODUCTS)
        assert len(ranked) == expected, ranker.name


@given(st.lists(st.tuples(rankings, targets, st.sets(products)), min_size=1, max_size=20))
def test_metrics_lie_between_0_and_1_and_recall_at_n_is_at_least_hr_at_k(
    cases: list[tuple[list[int], set[int], set[int]]],
) -> None:
    k, n = 3, 8
    metrics = TargetMetrics()
    for ranking, target, seen in cases:
        metrics.add(ranking[:k], ranking[:n], target, seen, k)
    result = metrics.as_dict()
    for row in (result, result["discovery"]):
        for key in ("hit_rate", "mrr", "ndcg", "recall"):
            assert 0.0 <= row[key] <= 1.0
        assert row["mrr"] <= row["ndcg"] <= row["hit_rate"] <= row["recall"]
    assert result["events"] == len(cases)


@given(rankings, targets, st.sets(products))
def test_discovery_never_counts_a_product_seen_earlier_in_the_session(
    ranking: list[int], target: set[int], seen: set[int]
) -> None:
    k = 5
    metrics = TargetMetrics()
    metrics.add(ranking[:k], ranking, target, seen, k)
    new = target - seen
    assert metrics.discovery.events == (1 if new else 0)
    hit_new = any(i in new for i in ranking[:k])
    assert metrics.discovery.hits == int(hit_new)
    # A list of seen products only never makes a discovery hit.
    only_seen = [i for i in ranking if i in seen]
    alone = TargetMetrics()
    alone.add(only_seen[:k], only_seen, target, seen, k)
    assert alone.discovery.hits == alone.discovery.in_pool == 0


@given(st.integers(1, 20))
def test_rank_1_has_ndcg_and_reciprocal_rank_1(k: int) -> None:
    metrics = RankingMetrics()
    metrics.add(1, k, True)
    assert metrics.as_dict() == {
        "events": 1,
        "hit_rate": 1.0,
        "mrr": 1.0,
        "ndcg": 1.0,
        "recall": 1.0,
    }


@given(rankings, rankings, st.integers(0, 15))
def test_fill_keeps_head_order_without_repeats(head: list[int], tail: list[int], n: int) -> None:
    out = fill(head, tail, n=n)
    assert len(out) == len(set(out)) == min(n, len(set(head) | set(tail)))
    assert out[: min(n, len(head))] == head[: min(n, len(head))]


# -- exact small cases -----------------------------------------------------------------------------


def test_metrics_of_one_event_at_rank_3() -> None:
    metrics = RankingMetrics()
    metrics.add(3, 10, True)
    metrics.add(None, 10, False)
    metrics.add(11, 10, True)  # beyond K: a miss, but inside the pool
    assert metrics.as_dict() == pytest.approx(
        {"events": 3, "hit_rate": 1 / 3, "mrr": 1 / 9, "ndcg": 0.5 / 3, "recall": 2 / 3}
    )
    assert best_rank([4, 7, 9], {9, 7}) == 2
    assert best_rank([4, 7, 9], {1}) is None


def test_discovery_ranks_only_the_products_new_to_the_session() -> None:
    metrics = TargetMetrics()
    # Bought 5 (seen in the session) and 6 (new): a hit at rank 1 overall, at rank 2 for
    # discovery.
    metrics.add([5, 6, 1], [5, 6, 1, 2], {5, 6}, {5, 3}, 3)
    # Next product 3 already seen: no discovery event.
    metrics.add([3], [3], {3}, {3}, 3)
    result = metrics.as_dict()
    assert (result["events"], result["hit_rate"], result["mrr"]) == (2, 1.0, 1.0)
    assert result["discovery"] == pytest.approx(
        {"events": 1, "hit_rate": 1.0, "mrr": 0.5, "ndcg": 1 / math.log2(3), "recall": 1.0}
    )


def test_popularity_and_recency_with_category() -> None:
    popular = popularity_order(np.array([3, 3, 1, 1, 4, 0]), 6)
    assert popular.tolist() == [1, 3, 0, 4, 2, 5]  # ties by index
    assert Popularity(popular).rank(SessionContext([2]), 3) == [1, 3, 0]
    category = np.array([0, 1, 0, 1, 0, 1])
    ranker = RecencyCategory(category, popular)
    # Session 5, 2, 5: recency [5, 2]; then category 1 by views: 1, 3 (5 already in); then
    # popularity: 0, 4.
    assert ranker.rank(SessionContext([5, 2, 5], category=1), 6) == [5, 2, 1, 3, 0, 4]
    assert ranker.rank(SessionContext([5], category=-1), 3) == [5, 1, 3]


def test_covisitation_of_the_last_product_on_hand_made_sessions() -> None:
    items, codes, times = _training([[0, 1, 2], [1, 2], [3, 1]])
    popular = popularity_order(items, 5)  # views: 1 x3, 2 x2, 0 and 3 x1, 4 never
    assert popular.tolist() == [1, 2, 0, 3, 4]
    covis = CoVisitation(items, codes, 5, popular, window=1, neighbours=10)
    neighbours, counts = covis.neighbours_of(1)
    # 1-2 twice; 1-0 and 1-3 once each, tie broken by popularity (0 before 3).
    assert neighbours.tolist() == [2, 0, 3] and counts.tolist() == [2, 1, 1]
    assert covis.neighbours_of(4)[0].tolist() == []
    assert covis.rank(SessionContext([0, 1]), 5) == [2, 0, 3, 1, 4]
    assert covis.rank(SessionContext([4]), 2) == [1, 2]  # never co-visited: popularity
    # Window 2 also pairs 0 and 2 (two positions apart in the first session).
    wide = CoVisitation(items, codes, 5, popular, window=2, neighbours=10)
    assert wide.neighbours_of(0)[0].tolist() == [1, 2]


def _knn_training() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # A {0,1,2} oldest; C {2,4}; B {1,3}; D {5} newest (shares nothing with the query).
    return _training([[0, 1, 2], [2, 4, 4], [1, 3], [5]])


def test_session_knn_similarities_and_scores_by_hand() -> None:
    items, codes, times = _knn_training()
    popular = popularity_order(items, 6)  # views: 4 x2, 1 x2, 2 x2, then 0, 3, 5
    assert popular.tolist() == [1, 2, 4, 0, 3, 5]
    knn = SessionKNN(items, codes, times, 6, popular)
    # Query 1 then 2: weights 1 -> 1/2, 2 -> 2/2, |w| = sqrt(1.25).
    norm = math.sqrt(1.25)
    sim_a = 1.5 / (norm * math.sqrt(3))
    sim_c = 1.0 / (norm * math.sqrt(2))
    sim_b = 0.5 / (norm * math.sqrt(2))
    sessions, similarity = knn.neighbours([1, 2])
    assert similarity.tolist() == pytest.approx([sim_a, sim_c, sim_b])
    assert knn.session_items[knn.session_offsets[sessions[0]] :][:3].tolist() == [0, 1, 2]
    products, scores = knn.scores([1, 2])
    assert products.tolist() == [2, 1, 0, 4, 3]
    assert scores.tolist() == pytest.approx([sim_a + sim_c, sim_a + sim_b, sim_a, sim_c, sim_b])
    assert knn.rank(SessionContext([1, 2]), 6) == [2, 1, 0, 4, 3, 5]
    assert knn.rank(SessionContext([5]), 3) == [5, 1, 2]  # D alone, then popularity


def test_session_knn_samples_the_most_recent_sessions_and_keeps_k_neighbours() -> None:
    items, codes, times = _knn_training()
    popular = popularity_order(items, 6)
    # Sample 2: only B and C, the most recent sessions sharing a product with the query;
    # 2 and 4 tie (C), 1 and 3 tie (B): popularity breaks them.
    sampled = SessionKNN(items, codes, times, 6, popular, sample_size=2)
    assert sampled.rank(SessionContext([1, 2]), 6) == [2, 4, 1, 3, 0, 5]
    # k = 1: the most similar session, A, alone.
    nearest = SessionKNN(items, codes, times, 6, popular, k=1)
    assert nearest.rank(SessionContext([1, 2]), 6) == [1, 2, 0, 4, 3, 5]


def test_session_knn_weighs_a_repeated_product_at_its_most_recent_position() -> None:
    items, codes, times = _knn_training()
    knn = SessionKNN(items, codes, times, 6, popularity_order(items, 6))
    assert knn.weights([2, 1, 2]) == pytest.approx({2: 1.0, 1: 2 / 3})
    assert distinct_recent_first([2, 1, 2]) == [2, 1]
