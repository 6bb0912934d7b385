"""Candidates and features: the one implementation shared by training and serving.

Hand-built catalogue tables give hand-checked values; Hypothesis checks the invariants over
random catalogues and sessions (example counts set explicitly below):

* ``generate_candidates`` against a reference written from its docstring, with and without
  trending lists: 300 examples;
* batch invariance of candidates and features: 150 examples.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from worker.apps.train import TrainSettings, _covisitation, build_tables
from worker.core.candidates import generate_candidates
from worker.core.catalogue import CatalogueTables
from worker.core.features import (
    FEATURE_NAMES,
    N_FEATURES,
    NEVER_SEEN_S,
    SessionBatch,
    build_features,
)
from worker.core.pipeline import advance_sessions
from worker.core.records import ADD_TO_CART, REMOVE_FROM_CART, VIEW, BrowsingEvent
from worker.core.session import SessionStore

T0 = 1_700_000_000_000
F = {name: i for i, name in enumerate(FEATURE_NAMES)}


def hand_tables() -> CatalogueTables:
    """Six products in two categories (p0-p2 in c0, p3-p5 in c1), with explicit neighbours."""
    prices = np.array([10.0, 20.0, 40.0, 5.0, 0.0, 80.0])
    return CatalogueTables(
        product_ids=np.array([f"p{i}" for i in range(6)]),
        category_ids=np.array(["c0", "c1"]),
        category=np.array([0, 0, 0, 1, 1, 1], dtype=np.int32),
        log_price=np.log1p(prices).astype(np.float32),
        log_pop=np.array([3.0, 4.0, 1.0, 2.0, 0.5, 3.5], dtype=np.float32),
        cart_rate=np.array([0.1, 0.2, 0.3, 0.05, 0.01, 0.15], dtype=np.float32),
        global_rank=np.log1p(np.array([2, 0, 4, 3, 5, 1])).astype(np.float32),
        category_rank=np.log1p(np.array([1, 0, 2, 1, 2, 0])).astype(np.float32),
        covis_items=np.array([[1, 3], [0, 2], [0, 4], [-1, -1], [2, -1], [3, 0]], dtype=np.int32),
        covis_scores=np.array(
            [[0.6, 0.4], [0.5, 0.5], [0.75, 0.25], [0, 0], [1.0, 0], [0.5, 0.5]],
            dtype=np.float32,
        ),
        category_top=np.array([[1, 0, 2], [5, 3, 4]], dtype=np.int32),
        global_top=np.array([1, 5, 0, 3, 2, 4], dtype=np.int32),
    )


def event(
    user: str, item: int, event_type: int, t_ms: int, session: str = "s1", event_id: str = ""
) -> BrowsingEvent:
    return BrowsingEvent(
        event_id=event_id or f"{user}-{t_ms}",
        user_id=user,
        session_id=session,
        event_type=event_type,
        product_id=f"p{item}",
        category_id=None,
        price=None,
        event_time_ms=t_ms,
    )


# -- candidates -------------------------------------------------------------------------------


def test_candidates_are_session_items_most_recent_first_then_neighbours_then_tops() -> None:
    """Order of proposals: session (most recent first, deduplicated), co-visitation neighbours
    of the current product, its category's top, the global top."""
    tables = hand_tables()
    session = np.array([[2, 1, 0, 1, -1, -1]], dtype=np.int32)  # current p2, then p1, p0
    cands = generate_candidates(tables, session, np.array([2], dtype=np.int32), 5)
    # session 2, 1, 0; covis of 2 -> 0 (dup), 4; category c0 top adds nothing; global -> 5.
    assert cands.tolist() == [[2, 1, 0, 4, 5]]
    assert cands.dtype == np.int32


def test_candidates_for_an_empty_batch_have_the_right_width() -> None:
    """No events: a (0, C) matrix."""
    cands = generate_candidates(
        hand_tables(), np.zeros((0, 4), dtype=np.int32), np.zeros(0, dtype=np.int32), 5
    )
    assert cands.shape == (0, 5)


def test_candidates_are_capped_at_the_catalogue_size() -> None:
    """Asking for more candidates than products gives every product once."""
    tables = hand_tables()
    cands = generate_candidates(
        tables, np.array([[3, -1]], dtype=np.int32), np.array([3], dtype=np.int32), 50
    )
    assert cands.shape == (1, 6)
    assert sorted(cands[0].tolist()) == list(range(6))
    assert cands[0, 0] == 3


def reference_candidates(
    tables: CatalogueTables,
    session_row: list[int],
    current: int,
    n_candidates: int,
    category_trending: np.ndarray | None = None,
    trending: np.ndarray | None = None,
) -> list[int]:
    """generate_candidates' docstring for one event, one proposal at a time; rows the lists
    cannot fill are completed with the lowest unused product indices."""
    category = tables.category[current]
    proposals = (
        session_row
        + tables.covis_items[current].tolist()
        + tables.category_top[category].tolist()
        + ([] if category_trending is None else category_trending[category].tolist())
        + ([] if trending is None else trending.tolist())
        + tables.global_top.tolist()
    )
    width = min(n_candidates, tables.n_products)
    out: list[int] = []
    for p in proposals:
        if p >= 0 and p not in out:
            out.append(p)
    out = out[:width]
    out += [p for p in range(tables.n_products) if p not in out][: width - len(out)]
    return out


@st.composite
def random_tables(draw: st.DrawFn) -> CatalogueTables:
    """A random, internally consistent catalogue (short lists, so rows sometimes need filling)."""
    n = draw(st.integers(1, 12))
    n_cat = draw(st.integers(1, min(n, 4)))
    category = np.array(draw(st.lists(st.integers(0, n_cat - 1), min_size=n, max_size=n)))
    m = draw(st.integers(1, 4))
    item = st.integers(-1, n - 1)
    covis = np.array(
        draw(st.lists(st.lists(item, min_size=m, max_size=m), min_size=n, max_size=n)),
        dtype=np.int32,
    )
    mc = draw(st.integers(1, 4))
    category_top = np.array(
        draw(st.lists(st.lists(item, min_size=mc, max_size=mc), min_size=n_cat, max_size=n_cat)),
        dtype=np.int32,
    )
    order = draw(st.permutations(range(n)))
    global_top = np.array(order[: draw(st.integers(0, n))], dtype=np.int32)
    zeros = np.zeros(n, dtype=np.float32)
    return CatalogueTables(
        product_ids=np.array([f"p{i}" for i in range(n)]),
        category_ids=np.array([f"c{i}" for i in range(n_cat)]),
        category=category.astype(np.int32),
        log_price=zeros,
        log_pop=zeros,
        cart_rate=zeros,
        global_rank=zeros,
        category_rank=zeros,
        covis_items=covis,
        covis_scores=np.ones((n, m), dtype=np.float32),
        category_top=category_top,
        global_top=global_top,
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    tables=random_tables(),
    n_candidates=st.integers(1, 15),
    history=st.integers(1, 6),
)
def test_candidates_match_reference_on_random_sessions(
    data: st.DataObject, tables: CatalogueTables, n_candidates: int, history: int
) -> None:
    """300 random catalogues and batches, half of them with random trending lists (per category
    and overall, -1 padded, repeats allowed): each row has exactly C = min(n, P) distinct valid
    indices, starts with the distinct session items most recent first (the current item first),
    and equals the reference. (Proposal lists narrower than C: see the full-width test below.)"""
    n = tables.n_products
    trending_lists: dict[str, np.ndarray] = {}
    if data.draw(st.booleans()):
        item = st.integers(-1, n - 1)
        rows, width = tables.category_top.shape[0], data.draw(st.integers(0, 3))
        trending_lists["category_trending"] = np.array(
            data.draw(st.lists(st.lists(item, min_size=width, max_size=width), min_size=rows)),
            dtype=np.int32,
        )[:rows].reshape(rows, width)
        trending_lists["trending"] = np.array(data.draw(st.lists(item, max_size=4)), dtype=np.int32)
    proposal_width = (
        history
        + tables.covis_items.shape[1]
        + tables.category_top.shape[1]
        + tables.global_top.shape[0]
        + sum(a.shape[-1] for a in trending_lists.values())
    )
    assume(proposal_width >= min(n_candidates, n))
    batch_size = data.draw(st.integers(1, 5))
    currents, rows = [], []
    for _ in range(batch_size):
        current = data.draw(st.integers(0, n - 1))
        earlier = data.draw(st.lists(st.integers(0, n - 1), max_size=history - 1))
        row = [current, *earlier]
        rows.append(row + [-1] * (history - len(row)))
        currents.append(current)
    session = np.array(rows, dtype=np.int32)
    cands = generate_candidates(
        tables, session, np.array(currents, dtype=np.int32), n_candidates, **trending_lists
    )

    width = min(n_candidates, n)
    assert cands.shape == (batch_size, width)
    for b in range(batch_size):
        row = cands[b].tolist()
        assert len(set(row)) == width
        assert all(0 <= p < n for p in row)
        assert row[0] == currents[b]
        distinct_session = list(dict.fromkeys(p for p in rows[b] if p >= 0))
        assert row[: len(distinct_session)] == distinct_session[:width]
        assert row == reference_candidates(
            tables, rows[b], currents[b], n_candidates, **trending_lists
        )


def test_candidates_have_full_width_even_when_proposal_lists_are_short() -> None:
    """12 products and n_candidates=10, but history (1) + covis (2) + category top (2) + global
    top (3) is only 8 proposals wide: still 10 distinct candidates per row, as documented."""
    tables = build_tables(
        [f"p{i}" for i in range(12)],
        ["c"] * 12,
        np.ones(12),
        np.arange(12),
        np.zeros(12, dtype=np.int64),
        np.zeros(12, dtype=np.int64),
        TrainSettings(covis_neighbours=2, category_top=2, global_top=3),
    )
    cands = generate_candidates(
        tables, np.array([[5]], dtype=np.int32), np.array([5], dtype=np.int32), 10
    )
    assert cands.shape == (1, 10)
    assert len(set(cands[0].tolist())) == 10


# -- features: hand-checked -------------------------------------------------------------------

SESSION = [  # (item, type, seconds after T0); the last one is the current event
    (0, VIEW, 0),
    (1, ADD_TO_CART, 10),
    (1, ADD_TO_CART, 12),
    (0, VIEW, 25),
    (1, REMOVE_FROM_CART, 30),
    (2, VIEW, 40),
]


def _hand_batch(history: int = 8):
    tables = hand_tables()
    events = [event("u", item, kind, T0 + s * 1000) for item, kind, s in SESSION]
    items = np.array([item for item, _, _ in SESSION], dtype=np.int32)
    batch = advance_sessions(SessionStore(history=history), events, items)
    return tables, batch


def test_session_batch_snapshots_each_event_most_recent_first() -> None:
    """advance_sessions: row b is the session right after event b, most recent first."""
    _, batch = _hand_batch()
    assert batch.items[-1].tolist() == [2, 1, 0, 1, 1, 0, -1, -1]
    assert batch.types[-1].tolist()[:6] == [
        VIEW,
        REMOVE_FROM_CART,
        VIEW,
        ADD_TO_CART,
        ADD_TO_CART,
        VIEW,
    ]
    assert batch.items[0].tolist() == [0, -1, -1, -1, -1, -1, -1, -1]
    assert batch.n_events.tolist() == [1, 2, 3, 4, 5, 6]
    assert batch.n_carts.tolist() == [0, 1, 2, 2, 2, 2]
    assert batch.prev_ms[0] == -1 and batch.prev_ms[-1] == T0 + 30_000


def test_build_features_shape_and_hand_checked_values() -> None:
    """Features of the last event of a hand-made session, candidate by candidate."""
    tables, batch = _hand_batch()
    cands = generate_candidates(tables, batch.items, batch.current_item, 5)
    feats = build_features(tables, batch, cands)
    assert feats.shape == (len(SESSION) * 5, N_FEATURES)
    assert feats.dtype == np.float32

    last = feats[-5:]
    assert cands[-1].tolist() == [2, 1, 0, 4, 5]
    row = {p: last[i] for i, p in enumerate(cands[-1].tolist())}
    expected = {  # product: (sess_views, net_carts, is_current, same_cat, covis_cur, secs, events)
        2: (1, 0, 1, 1, 0.0, 0.0, 0),  # the current product
        1: (0, 1, 0, 1, 0.0, 10.0, 1),  # 2 adds - 1 remove, last touched at 30 s
        0: (2, 0, 0, 1, 0.75, 15.0, 2),  # viewed twice, last at 25 s; covis 2 -> 0 is 0.75
        4: (0, 0, 0, 0, 0.25, NEVER_SEEN_S, 8),  # never seen: history length
        5: (0, 0, 0, 0, 0.0, NEVER_SEEN_S, 8),
    }
    names = [
        "sess_views",
        "sess_net_carts",
        "is_current",
        "same_category",
        "covis_current",
        "secs_since_seen",
        "events_since_seen",
    ]
    for product, values in expected.items():
        got = tuple(float(row[product][F[name]]) for name in names)
        assert got == pytest.approx(values), (product, got)

    # Earlier session products p1, p0, p1, p1, p0 -> candidate: 3 x 0.5 from p1 into p0 and p2,
    # 2 x 0.6 from p0 into p1.
    covis_session = {p: float(row[p][F["covis_session"]]) for p in row}
    assert covis_session == pytest.approx({2: 1.5, 1: 1.2, 0: 1.5, 4: 0.0, 5: 0.0})
    share = {p: float(row[p][F["category_share"]]) for p in row}
    assert share == {2: 1.0, 1: 1.0, 0: 1.0, 4: 0.0, 5: 0.0}
    price_ratio = {p: float(row[p][F["price_ratio"]]) for p in row}
    assert price_ratio == pytest.approx({2: 1.0, 1: 0.5, 0: 0.25, 4: 0.0, 5: 2.0}, rel=1e-5)
    for p in row:
        assert row[p][F["cand_log_pop"]] == tables.log_pop[p]
        assert row[p][F["cand_cart_rate"]] == tables.cart_rate[p]
        assert row[p][F["cand_global_rank"]] == tables.global_rank[p]
        assert row[p][F["cand_category_rank"]] == tables.category_rank[p]
        assert row[p][F["cand_log_price"]] == tables.log_price[p]
        # session-level features are the same for every candidate of the event
        assert row[p][F["sess_events"]] == 6
        assert row[p][F["sess_duration_s"]] == 40.0
        assert row[p][F["sess_carts"]] == 2
        assert row[p][F["current_is_cart"]] == 0
        assert row[p][F["gap_s"]] == 10.0


def test_heuristic_signal_features_by_hand() -> None:
    """Recency rank, session flag, rank in the current category, dwell and candidate position of
    the last event's candidates. Session, most recent first: p2 at 40 s (current), p1 at 30,
    p0 at 25, p1 at 12, p1 at 10, p0 at 0; dwell is the time to the next interaction."""
    tables, batch = _hand_batch()
    cands = generate_candidates(tables, batch.items, batch.current_item, 5)
    last = build_features(tables, batch, cands)[-5:]
    assert cands[-1].tolist() == [2, 1, 0, 4, 5]
    row = {p: last[i] for i, p in enumerate(cands[-1].tolist())}
    names = ["sess_recency_rank", "in_session", "current_category_rank", "sess_dwell_s"]
    expected = {
        2: (1, 1, np.log1p(2), 0.0),  # the current product: no dwell yet
        1: (2, 1, np.log1p(0), 10.0 + 13.0 + 2.0),
        0: (3, 1, np.log1p(1), 5.0 + 10.0),
        4: (0, 0, -1, 0.0),  # category c1, not the current product's
        5: (0, 0, -1, 0.0),
    }
    for product, values in expected.items():
        got = tuple(float(row[product][F[name]]) for name in names)
        assert got == pytest.approx(values), (product, got)
    assert [float(last[i][F["cand_position"]]) for i in range(5)] == [0, 1, 2, 3, 4]


def test_first_event_of_session_has_gap_minus_one_and_cart_flag() -> None:
    """gap_s is -1 on a session's first event; current_is_cart flags an add-to-cart."""
    tables, batch = _hand_batch()
    cands = generate_candidates(tables, batch.items, batch.current_item, 5)
    feats = build_features(tables, batch, cands).reshape(len(SESSION), 5, N_FEATURES)
    assert (feats[0, :, F["gap_s"]] == -1.0).all()
    assert (feats[0, :, F["sess_duration_s"]] == 0.0).all()
    assert (feats[1, :, F["current_is_cart"]] == 1.0).all()
    assert (feats[1, :, F["gap_s"]] == 10.0).all()


def test_build_features_of_empty_batch_is_empty() -> None:
    """No events: a (0, N_FEATURES) matrix."""
    tables, batch = _hand_batch()
    empty = batch.take(np.zeros(0, dtype=np.int64))
    cands = generate_candidates(tables, empty.items, empty.current_item, 5)
    assert build_features(tables, empty, cands).shape == (0, N_FEATURES)


# -- features: batch invariance ---------------------------------------------------------------


def small_trained_tables() -> CatalogueTables:
    """Tables from worker.apps.train.build_tables on a tiny synthetic interaction list."""
    rng = np.random.default_rng(11)
    n_products = 15
    sessions = np.repeat(np.arange(40), 6)
    items = rng.integers(0, n_products, size=sessions.size)
    types = rng.choice([VIEW, VIEW, VIEW, ADD_TO_CART, REMOVE_FROM_CART], size=sessions.size)
    return build_tables(
        [f"p{i}" for i in range(n_products)],
        [f"c{i % 4}" for i in range(n_products)],
        rng.uniform(1, 100, size=n_products),
        items,
        types,
        sessions,
        TrainSettings(covis_neighbours=4, category_top=3, global_top=8),
    )


TRAINED = small_trained_tables()
HISTORY = 5
N_CANDS = 7

user_events = st.lists(
    st.tuples(
        st.integers(0, 14),
        st.sampled_from([VIEW, ADD_TO_CART, REMOVE_FROM_CART]),
        st.integers(0, 40 * 60),
        st.booleans(),
    ),
    min_size=1,
    max_size=8,
)


def _features_of(events: list[BrowsingEvent]) -> tuple[np.ndarray, np.ndarray]:
    store = SessionStore(history=HISTORY)
    items = np.array([int(e.product_id[1:]) for e in events], dtype=np.int32)
    batch = advance_sessions(store, events, items)
    cands = generate_candidates(TRAINED, batch.items, batch.current_item, N_CANDS)
    feats = build_features(TRAINED, batch, cands).reshape(len(events), -1, N_FEATURES)
    return cands, feats


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(per_user=st.lists(user_events, min_size=1, max_size=4), data=st.data())
def test_features_depend_only_on_earlier_events_of_the_same_user(
    per_user: list[list[tuple[int, int, int, bool]]], data: st.DataObject
) -> None:
    """150 examples: an event's candidates and feature rows are identical whether the events go
    through advance_sessions in one batch, one at a time, or in any other interleaving of users
    that keeps each user's order; rows are finite and self-consistent."""
    streams: list[list[BrowsingEvent]] = []
    for u, steps in enumerate(per_user):
        t, stream, session = T0, [], 0
        for item, kind, gap_s, new_session in steps:
            t += gap_s * 1000
            session += new_session
            stream.append(
                event(f"u{u}", item, kind, t, session=f"s{session}", event_id=f"u{u}-{len(stream)}")
            )
        streams.append(stream)

    def interleave(choices: list[int]) -> list[BrowsingEvent]:
        queues = [list(s) for s in streams]
        out: list[BrowsingEvent] = []
        for c in choices:
            live = [q for q in queues if q]
            out.append(live[c % len(live)].pop(0))
        return out

    total = sum(len(s) for s in streams)
    first = interleave(data.draw(st.lists(st.integers(0, 3), min_size=total, max_size=total)))
    second = interleave(data.draw(st.lists(st.integers(0, 3), min_size=total, max_size=total)))

    cands, feats = _features_of(first)
    by_id = {e.event_id: (cands[i], feats[i]) for i, e in enumerate(first)}

    # one at a time through the same store
    store = SessionStore(history=HISTORY)
    for e in first:
        batch = advance_sessions(store, [e], np.array([int(e.product_id[1:])], dtype=np.int32))
        c1 = generate_candidates(TRAINED, batch.items, batch.current_item, N_CANDS)
        f1 = build_features(TRAINED, batch, c1)
        assert np.array_equal(c1[0], by_id[e.event_id][0])
        assert np.array_equal(f1, by_id[e.event_id][1])

    # another interleaving of the users, in one batch
    cands2, feats2 = _features_of(second)
    for i, e in enumerate(second):
        assert np.array_equal(cands2[i], by_id[e.event_id][0])
        assert np.array_equal(feats2[i], by_id[e.event_id][1])

    # invariants of every row
    assert np.isfinite(feats).all()
    for i, e in enumerate(first):
        current = int(e.product_id[1:])
        assert cands[i, 0] == current
        assert feats[i, :, F["is_current"]].tolist() == [1.0] + [0.0] * (cands.shape[1] - 1)
        assert feats[i, 0, F["secs_since_seen"]] == 0.0
        assert feats[i, 0, F["events_since_seen"]] == 0.0
        assert (feats[i, :, F["events_since_seen"]] <= HISTORY).all()
        assert (
            (feats[i, :, F["category_share"]] >= 0) & (feats[i, :, F["category_share"]] <= 1)
        ).all()
        assert (feats[i, :, F["sess_events"]] >= 1).all()


# -- co-visitation ----------------------------------------------------------------------------


def test_covisitation_scores_pairs_within_one_session_window() -> None:
    """Sessions [p0 p1 p2] and [p1 p2], window 1: pairs are counted both ways within a session
    (never across the session boundary) and scored by share of the source's co-visits."""
    items = np.array([0, 1, 2, 1, 2])
    sessions = np.array([0, 0, 0, 1, 1])
    neighbours, scores = _covisitation(
        items, sessions, 4, TrainSettings(covis_window=1, covis_neighbours=2)
    )
    assert neighbours.tolist() == [[1, -1], [2, 0], [1, -1], [-1, -1]]
    assert scores.ravel().tolist() == pytest.approx([1.0, 0.0, 2 / 3, 1 / 3, 1.0, 0.0, 0.0, 0.0])
    assert neighbours.dtype == np.int32 and scores.dtype == np.float32


def test_covisitation_wider_window_ties_break_by_product_index() -> None:
    """Window 2 adds p0-p2 in the first session; equal counts are ordered by product index."""
    items = np.array([0, 1, 2, 1, 2])
    sessions = np.array([0, 0, 0, 1, 1])
    neighbours, scores = _covisitation(
        items, sessions, 3, TrainSettings(covis_window=2, covis_neighbours=2)
    )
    assert neighbours.tolist() == [[1, 2], [2, 0], [1, 0]]
    assert scores.ravel().tolist() == pytest.approx([0.5, 0.5, 2 / 3, 1 / 3, 2 / 3, 1 / 3])


def test_covisitation_keeps_only_the_best_neighbours_and_skips_self_pairs() -> None:
    """covis_neighbours caps the list (scores keep the full share); repeats are not neighbours."""
    items = np.array([0, 0, 1, 2, 1, 1])
    sessions = np.zeros(6, dtype=np.int64)
    neighbours, scores = _covisitation(
        items, sessions, 3, TrainSettings(covis_window=1, covis_neighbours=1)
    )
    # adjacent pairs: 0-0 (self, skipped), 0-1, 1-2, 2-1, 1-1 (self) -> 1->2 twice, 1->0 once
    assert neighbours.tolist() == [[1], [2], [1]]
    assert scores.ravel().tolist() == pytest.approx([1.0, 2 / 3, 1.0])


def test_covisitation_without_pairs_is_all_padding() -> None:
    """Single-event sessions co-visit nothing."""
    neighbours, scores = _covisitation(
        np.array([0, 1]), np.array([0, 1]), 2, TrainSettings(covis_window=3, covis_neighbours=2)
    )
    assert (neighbours == -1).all() and (scores == 0).all()


def test_build_tables_ranks_by_views() -> None:
    """build_tables: global top and ranks follow view counts (ties by index), category tops
    per category, cart rate smoothed."""
    items = np.array([2, 2, 2, 1, 1, 0, 3, 1])
    types = np.array([VIEW, VIEW, VIEW, VIEW, VIEW, VIEW, VIEW, ADD_TO_CART])
    tables = build_tables(
        ["a", "b", "c", "d"],
        ["x", "y", "x", "y"],
        np.array([1.0, 2.0, np.nan, 4.0]),
        items,
        types,
        np.zeros(8, dtype=np.int64),
        TrainSettings(covis_neighbours=2, category_top=3, global_top=3),
    )
    assert tables.global_top.tolist() == [2, 1, 0]  # views c=3, b=2, a=1 and d=1 (a first)
    assert tables.category_top.tolist() == [[2, 0, -1], [1, 3, -1]]
    assert tables.popular_product_ids(2) == ["c", "b"]
    assert tables.log_price[2] == 0.0  # unknown price
    assert tables.cart_rate[1] == pytest.approx((1 + 0.1) / (2 + 10.0))
    assert tables.index_of("d") == 3


# -- the fast paths against the broadcast ones ------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    n_products=st.integers(1, 30),
    data=st.data(),
)
def test_first_occurrences_by_scatter_equal_the_sorted_ones(
    n_products: int, data: st.DataObject
) -> None:
    """Random proposal rows (repeats and -1 padding anywhere; up to 40 wide, and 250-300 wide
    for the two-byte scratch): the scatter path keeps exactly the first occurrence of each
    product per row, as the per-row stable sort does."""
    from worker.core import candidates as module

    rows = data.draw(st.integers(1, 6))
    if data.draw(st.booleans()):
        width = data.draw(st.integers(1, 40))
        proposals = np.array(
            data.draw(
                st.lists(
                    st.lists(st.integers(-1, n_products - 1), min_size=width, max_size=width),
                    min_size=rows,
                    max_size=rows,
                )
            ),
            dtype=np.int32,
        )
    else:
        width = data.draw(st.integers(250, 300))
        rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
        proposals = rng.integers(-1, n_products, size=(rows, width), dtype=np.int32)
    fast = module._first_occurrences(proposals, n_products)
    assert (fast == module._first_occurrences_sorted(proposals)).all()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), tables=random_tables(), history=st.integers(1, 6))
def test_features_by_position_equal_the_broadcast_ones(
    data: st.DataObject, tables: CatalogueTables, history: int
) -> None:
    """Random catalogues with random co-visitation scores, sessions (random event types and
    gaps) and candidate matrices (distinct per row, or with repeats and -1): every feature
    through the candidates' position matrix equals the broadcast comparison's, to float32
    rounding (the co-visitation sums add the same scores in another order)."""
    from worker.core import scratch as module

    n = tables.n_products
    m = tables.covis_items.shape[1]
    scores = np.array(
        data.draw(st.lists(st.floats(0, 1, width=32), min_size=n * m, max_size=n * m)),
        dtype=np.float32,
    ).reshape(n, m)
    tables = dataclasses.replace(tables, covis_scores=scores)
    batch_size = data.draw(st.integers(1, 5))
    width = data.draw(st.integers(1, 8))
    item = st.integers(0, n - 1)
    sessions = [data.draw(st.lists(item, min_size=1, max_size=history)) for _ in range(batch_size)]
    items = np.array([s + [-1] * (history - len(s)) for s in sessions], dtype=np.int32)
    if data.draw(st.booleans()):  # distinct per row, as generate_candidates makes them
        width = min(width, n)
        rows = [data.draw(st.permutations(range(n)))[:width] for _ in range(batch_size)]
    else:  # repeats and -1: the broadcast path is taken
        rows = data.draw(
            st.lists(
                st.lists(st.integers(-1, n - 1), min_size=width, max_size=width),
                min_size=batch_size,
                max_size=batch_size,
            )
        )
    candidates = np.array(rows, dtype=np.int32)
    zeros = np.zeros(batch_size, dtype=np.int64)
    types = data.draw(
        st.lists(st.sampled_from([VIEW, ADD_TO_CART, REMOVE_FROM_CART]), min_size=items.size)
    )[: items.size]
    gaps = np.array(
        data.draw(st.lists(st.integers(0, 90_000), min_size=items.size))[: items.size]
    ).reshape(items.shape)
    times = T0 - np.cumsum(gaps, axis=1)  # most recent first
    batch = SessionBatch(
        items=items,
        types=np.array(types, dtype=np.int8).reshape(items.shape),
        times_ms=np.where(items >= 0, times, -1).astype(np.int64),
        current_item=items[:, 0].copy(),
        current_type=np.zeros(batch_size, dtype=np.int8),
        now_ms=zeros + T0,
        start_ms=zeros + T0,
        n_events=np.ones(batch_size, dtype=np.int32),
        n_carts=np.zeros(batch_size, dtype=np.int32),
        prev_ms=zeros - 1,
    )
    fast = build_features(tables, batch, candidates)
    limit = module.MAX_SCRATCH_BYTES
    module.MAX_SCRATCH_BYTES = 0  # no scratch: the broadcast paths
    try:
        broadcast = build_features(tables, batch, candidates)
    finally:
        module.MAX_SCRATCH_BYTES = limit
    # The scratch is left as it was found: all zero.
    assert build_features(tables, batch, candidates).tobytes() == fast.tobytes()
    np.testing.assert_allclose(fast, broadcast, rtol=1e-6, atol=1e-6)


def test_a_failed_batch_leaves_the_scratch_clean() -> None:
    """A batch that fails after the candidates' positions were written (a co-visitation table
    naming a product outside the catalogue: IndexError) leaves no marks in the thread's
    scratch: a next batch with fewer candidates gets the features it would get alone."""
    tables = hand_tables()
    store = SessionStore(history=4)
    events = [event("u", 0, VIEW, T0), event("u", 1, VIEW, T0 + 5_000), event("v", 3, VIEW, T0)]
    batch = advance_sessions(store, events, np.array([0, 1, 3], dtype=np.int32))
    candidates = generate_candidates(tables, batch.items, batch.current_item, 4)
    others = candidates[:, :2].copy()  # fewer products: a stale mark would be misread
    alone = build_features(tables, batch, others)
    broken = tables.covis_items.copy()
    broken[1, 1] = tables.n_products + 7
    with pytest.raises(IndexError):
        build_features(dataclasses.replace(tables, covis_items=broken), batch, candidates)
    assert build_features(tables, batch, others).tobytes() == alone.tobytes()
