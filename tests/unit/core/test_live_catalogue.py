"""The live catalogue: the model's catalogue opened to products it does not know, and the
trending counts that make them candidates.

Hypothesis checks (example counts set below):

* indices stay in range and stable while present, capacity and LRU eviction against a
  reference model of the table: 200 examples;
* the neutral values of a new product equal what ``train.build_tables`` gives a catalogue product
  without views: 150 examples;
* the trending top lists equal a brute-force ranking of the decayed counts: 150 examples.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.apps.train import TrainSettings, build_tables
from worker.core.candidates import generate_candidates
from worker.core.catalogue import CatalogueTables
from worker.core.features import FEATURE_NAMES, SessionBatch, build_features
from worker.core.live_catalogue import NEUTRAL_CART_RATE, LiveCatalogue, Trending
from worker.core.records import ADD_TO_CART, REMOVE_FROM_CART, VIEW
from worker.testing import tiny_catalogue

F = {name: i for i, name in enumerate(FEATURE_NAMES)}
T0 = 1_700_000_000_000
HOUR_MS = 3_600_000
SETTINGS = TrainSettings(covis_neighbours=3, category_top=4, global_top=6)


# -- indices, capacity, eviction -----------------------------------------------------------------

operations = st.lists(
    st.tuples(
        st.sampled_from(["event", "restore", "known"]),
        st.integers(0, 11),  # which new product (n0..n11), or which known product
        st.sampled_from([None, "c0", "c1", "zzz"]),
        st.one_of(st.none(), st.floats(0.0, 500.0)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(capacity=st.integers(1, 6), ops=operations)
def test_indices_stay_in_range_and_stable_and_the_least_recently_seen_is_evicted(
    capacity: int, ops: list[tuple[str, int, str | None, float | None]]
) -> None:
    """Against a reference LRU table: a new product keeps its index while it is held; indices
    are in P..P+capacity-1 and distinct; at most ``capacity`` are held, the least recently seen
    (event or restore) is evicted; known products keep the model's index; every index in use
    names its product."""
    tables = tiny_catalogue(n_products=10, n_categories=2)
    live = LiveCatalogue(tables, capacity=capacity)
    reference: OrderedDict[str, int] = OrderedDict()
    evictions = 0
    for kind, which, category, price in ops:
        if kind == "known":
            pid = f"p{which % 10:03d}"
            assert live.known_index(pid) == live.index_of(pid) == which % 10
            continue
        pid = f"n{which}"
        before = reference.get(pid)
        index = live.add(pid, category, price) if kind == "event" else live.index_of(pid)
        if before is not None:
            assert index == before  # stable while present
            reference.move_to_end(pid)
        else:
            if len(reference) == capacity:
                _, freed = reference.popitem(last=False)  # the least recently seen
                assert index == freed
                evictions += 1
            reference[pid] = index
        assert 10 <= index < 10 + capacity
        assert live.product_id_of(index) == pid
        assert dict(live._slots) == dict(reference)
        assert list(live._slots) == list(reference)  # the same recency order
    assert len(live) == len(reference) <= capacity
    assert len(set(reference.values())) == len(reference)
    assert live.n_products == 10 + min(capacity, len(reference) + evictions)
    assert live.evicted_total == evictions
    assert live.added_total == len(reference) + evictions
    for pid in {f"n{i}" for i in range(12)} - set(reference):
        assert live.lookup(pid) is None


def test_a_reused_slot_starts_afresh_and_leaves_the_trending_lists():
    """Capacity 1: the second product takes the first one's slot with its own category and price
    and the neutral values; the evicted product's count and list places are gone."""
    tables = tiny_catalogue(n_products=10, n_categories=2)
    live = LiveCatalogue(tables, capacity=1)
    a = live.add("a", "c1", 99.0)
    live.observe(np.array([a, a]), np.array([VIEW, VIEW]), np.array([T0, T0]))
    assert a in live.trending_overall and a in live.category_trending[1]
    b = live.add("b", None, None)
    assert b == a and live.lookup("a") is None and live.product_id_of(b) == "b"
    assert live.category[b] == live.unknown_category and live.log_price[b] == 0.0
    assert live.trending.counts[b] == 0.0
    assert b not in live.trending_overall and b not in live.category_trending
    assert live.drain_named() == [(b, "b")]  # the slot's latest name
    assert live.drain_named() == []


def test_the_latest_category_and_price_an_event_gives_win():
    tables = tiny_catalogue(n_products=10, n_categories=2)
    live = LiveCatalogue(tables)
    i = live.index_of("x")  # restored: nothing known yet
    assert live.category[i] == live.unknown_category and live.log_price[i] == 0.0
    live.add("x", "c0", 5.0)
    assert live.category[i] == 0 and live.log_price[i] == np.float32(np.log1p(5.0))
    live.add("x", None, None)  # says nothing new
    assert live.category[i] == 0 and live.log_price[i] == np.float32(np.log1p(5.0))
    live.observe(np.array([i]), np.array([VIEW]), np.array([T0]))
    assert i in live.category_trending[0]
    live.add("x", "c1", 7.0)
    assert live.category[i] == 1 and live.log_price[i] == np.float32(np.log1p(7.0))
    assert i not in live.category_trending[0]  # listed again under c1 once counted again
    live.observe(np.array([i]), np.array([VIEW]), np.array([T0 + 1]))
    assert i in live.category_trending[1]
    live.add("x", "no-such-category")
    assert live.category[i] == live.unknown_category


def test_the_model_catalogue_is_left_as_it_is():
    tables = tiny_catalogue()
    copies = {name: getattr(tables, name).copy() for name in tables.__dataclass_fields__}
    live = LiveCatalogue(tables, capacity=3)
    for pid in ["a", "b", "c", "d"]:
        live.add(pid, "c1", 3.0)
    live.observe(np.arange(60), np.zeros(60, dtype=np.int8), np.full(60, T0))
    for name, before in copies.items():
        assert np.array_equal(getattr(tables, name), before), name
    assert live.category_top.shape == (tables.category_top.shape[0] + 1, 10)
    assert (live.category_top[live.unknown_category] == -1).all()
    assert np.array_equal(live.category_top[:-1], tables.category_top)


def test_capacity_must_be_positive():
    with pytest.raises(ValueError, match="capacity"):
        LiveCatalogue(tiny_catalogue(), capacity=0)


# -- neutral values ------------------------------------------------------------------------------


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """A small catalogue (categories) and training-window interactions (items, types, sessions)
    in which some products may have no views."""
    n = draw(st.integers(1, 10))
    categories = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=n, max_size=n))
    events = draw(
        st.lists(
            st.tuples(st.integers(0, n - 1), st.sampled_from([VIEW, ADD_TO_CART])),
            max_size=30,
        )
    )
    items = np.array([i for i, _ in events], dtype=np.int64)
    types = np.array([t for _, t in events], dtype=np.int64)
    sessions = np.arange(len(events)) // 3
    return categories, items, types, sessions


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=histories(),
    category=st.sampled_from(["a", "b", "c", "new-category"]),
    price=st.one_of(st.none(), st.floats(0.0, 1000.0)),
)
def test_a_new_product_gets_what_training_gives_a_catalogue_product_without_views(
    history: tuple[list[str], np.ndarray, np.ndarray, np.ndarray],
    category: str,
    price: float | None,
) -> None:
    """Train the tables twice on the same interactions: without product X, and with X in the
    catalogue (first by index, so it is the first of the products without views) but never
    viewed. X served as a new product by the live catalogue of the first tables has exactly the
    values X has in the second."""
    categories, items, types, sessions = history
    n = len(categories)
    prices = np.linspace(1.0, 50.0, n)
    without = build_tables(
        [f"p{i}" for i in range(n)], categories, prices, items, types, sessions, SETTINGS
    )
    with_x = build_tables(
        ["X", *(f"p{i}" for i in range(n))],
        [category, *categories],
        np.array([np.nan if price is None else price, *prices]),
        items + 1,
        types,
        sessions,
        SETTINGS,
    )
    live = LiveCatalogue(without)
    x = live.add("X", category, price)
    assert live.log_pop[x] == with_x.log_pop[0] == 0.0
    assert live.cart_rate[x] == with_x.cart_rate[0] == NEUTRAL_CART_RATE
    assert live.global_rank[x] == with_x.global_rank[0]
    assert live.category_rank[x] == with_x.category_rank[0]
    assert live.log_price[x] == with_x.log_price[0]
    assert (live.covis_items[x] == -1).all() and (with_x.covis_items[0] == -1).all()
    assert (live.covis_scores[x] == 0).all() and (with_x.covis_scores[0] == 0).all()
    assert live.category_ids[live.category[x]] == (category if category in categories else "")


# -- trending ------------------------------------------------------------------------------------


def test_counts_halve_every_half_life_and_rank_the_lists():
    trending = Trending(4, 2, half_life_ms=HOUR_MS, top=3, category_top=2)
    category = np.array([0, 0, 0, 1])  # product 3 is of the unknown category (the last row)
    trending.observe(
        np.array([0, 0, 1, 3]),
        np.array([VIEW, ADD_TO_CART, VIEW, VIEW]),
        np.array([T0, T0, T0, T0]),
        category,
    )
    assert trending.count(0, T0) == pytest.approx(2.0)
    assert trending.count(0, T0 + HOUR_MS) == pytest.approx(1.0)
    assert trending.count(1, T0 + 2 * HOUR_MS) == pytest.approx(0.25)
    assert trending.overall.tolist() == [0, 1, 3]  # 3 ties with 1: the lower index first
    assert trending.by_category.tolist() == [[0, 1], [-1, -1]]  # the unknown row stays empty
    # One view of product 2 an hour later weighs 2 views then: it ties with 0 and comes second
    # (lower index first); removals from the cart do not count.
    trending.observe(
        np.array([2, 1]),
        np.array([VIEW, REMOVE_FROM_CART]),
        np.array([T0 + HOUR_MS, T0 + HOUR_MS]),
        category,
    )
    assert trending.count(2, T0 + HOUR_MS) == pytest.approx(1.0)
    assert trending.overall.tolist() == [0, 2, 1]
    assert trending.by_category.tolist() == [[0, 2], [-1, -1]]
    assert trending.active_products() == 4
    # Far later (counts are rescaled to a new reference time): one view of 1 beats them all.
    later = T0 + 100 * HOUR_MS
    trending.observe(np.array([1]), np.array([VIEW]), np.array([later]), category)
    assert trending.count(1, later) == pytest.approx(1.0)
    assert trending.count(0, later) == pytest.approx(2.0 * 2.0**-100)
    assert trending.overall.tolist()[0] == 1 and trending.by_category[0, 0] == 1
    assert trending.active_products() == 1


batches = st.lists(
    st.lists(
        st.tuples(
            st.integers(0, 11),
            st.sampled_from([VIEW, VIEW, ADD_TO_CART, REMOVE_FROM_CART]),
            st.integers(0, 5 * HOUR_MS),
        ),
        max_size=12,
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches, top=st.integers(0, 5), category_top=st.integers(0, 4))
def test_top_lists_equal_a_brute_force_ranking_of_the_decayed_counts(
    batches: list[list[tuple[int, int, int]]], top: int, category_top: int
) -> None:
    """After every batch, the lists hold the products with the highest counts decayed to any
    common time (equal counts: lower index first), of products with a count; per category
    among its products; the unknown category (the last row) has none."""
    category = np.array([i % 4 for i in range(12)])  # 3: the unknown category
    trending = Trending(12, 4, HOUR_MS, top=top, category_top=category_top)
    counts = np.zeros(12)
    origin = None
    for batch in batches:
        if not batch:
            continue
        items, types, times = (np.array(column) for column in zip(*batch, strict=True))
        trending.observe(items, types, T0 + times, category)
        counted = (types == VIEW) | (types == ADD_TO_CART)
        if counted.any():
            origin = T0 + int(times[counted].max()) if origin is None else origin
            weights = np.exp2((T0 + times[counted] - origin) / HOUR_MS)
            np.add.at(counts, items[counted], weights)

        def ranked(members: list[int], n: int) -> list[int]:
            order = sorted((i for i in members if counts[i] > 0), key=lambda i: (-counts[i], i))
            return (order + [-1] * n)[:n]

        assert trending.overall.tolist() == ranked(list(range(12)), top)
        for c in range(4):
            members = [i for i in range(12) if category[i] == c] if c < 3 else []
            assert trending.by_category[c].tolist() == ranked(members, category_top), c


# -- serving through the live catalogue ----------------------------------------------------------


def _batch(items: list[list[int]], now_ms: int = T0) -> SessionBatch:
    """One event per row: its session, most recent first (the current product first)."""
    width = max(len(row) for row in items)
    padded = np.array([row + [-1] * (width - len(row)) for row in items], dtype=np.int32)
    n = len(items)
    return SessionBatch(
        items=padded,
        types=np.where(padded >= 0, VIEW, -1).astype(np.int8),
        times_ms=np.where(padded >= 0, now_ms, 0).astype(np.int64),
        current_item=padded[:, 0].copy(),
        current_type=np.zeros(n, dtype=np.int8),
        now_ms=np.full(n, now_ms, dtype=np.int64),
        start_ms=np.full(n, now_ms, dtype=np.int64),
        n_events=np.ones(n, dtype=np.int32),
        n_carts=np.zeros(n, dtype=np.int32),
        prev_ms=np.full(n, -1, dtype=np.int64),
    )


def test_candidates_and_features_read_the_live_catalogue_unchanged():
    """A product viewed by many users trends, so an event on another product of its category
    gets it as a candidate, and an event on a product of an unknown category gets the overall
    trending products; the features of new products are the neutral values."""
    tables: CatalogueTables = tiny_catalogue()  # 60 products, categories c0..c3
    live = LiveCatalogue(tables, capacity=10)
    hot = live.add("hot", "c2", 20.0)
    odd = live.add("odd", "somewhere-else", None)
    live.observe(np.full(30, hot), np.zeros(30, dtype=np.int8), np.full(30, T0))
    assert live.trending_overall[0] == hot and live.category_trending[2, 0] == hot
    known_c2 = int(np.flatnonzero(tables.category == 2)[0])
    known_c1 = int(np.flatnonzero(tables.category == 1)[0])
    batch = _batch([[known_c2], [known_c1], [odd], [hot, known_c1]])
    trending = {"category_trending": live.category_trending, "trending": live.trending_overall}
    cands = generate_candidates(live, batch.items, batch.current_item, 40, **trending)
    assert cands.shape == (4, 40)
    assert all(len(set(row)) == 40 and row.max() < live.n_products for row in cands)
    assert hot in cands[0]  # of the event's category (its lists are short of 40 anyway)
    assert cands[2, 0] == odd and hot in cands[2][:2]  # unknown category: overall trending next
    assert cands[3, :2].tolist() == [hot, known_c1]  # the session first
    without = generate_candidates(live, batch.items, batch.current_item, 40)
    assert hot not in without[0] and hot not in without[2]  # only trending proposes it there

    feats = build_features(live, batch, cands).reshape(4, 40, -1)
    at = {int(p): j for j, p in enumerate(cands[0])}
    row = feats[0, at[hot]]
    assert row[F["cand_log_pop"]] == 0.0
    assert row[F["cand_cart_rate"]] == NEUTRAL_CART_RATE
    assert row[F["cand_global_rank"]] == np.float32(np.log1p(60))  # after the 60 viewed
    assert row[F["cand_category_rank"]] == np.float32(np.log1p(15))  # 15 viewed in c2
    assert row[F["cand_log_price"]] == np.float32(np.log1p(20.0))
    assert row[F["same_category"]] == 1.0 and row[F["covis_current"]] == 0.0
    assert np.isfinite(feats).all()
