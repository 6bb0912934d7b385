"""SessionStore: per-user sessions bounded in length (history), count (max_users, LRU) and age
(idle expiry), with new sessions on a session id change or a 30-minute gap."""

from __future__ import annotations

from worker.core.records import ADD_TO_CART, REMOVE_FROM_CART, VIEW
from worker.core.session import SESSION_GAP_MS, SessionStore

T0 = 1_700_000_000_000
MIN_MS = 60_000


def view(
    store: SessionStore, user: str, item: int, t: int, session_id: str = "s1", partition: int = -1
):
    return store.record(user, session_id, item, VIEW, t, False, partition)


def test_history_keeps_only_the_last_interactions_oldest_first() -> None:
    """Beyond ``history`` interactions the oldest are dropped; counters keep counting."""
    store = SessionStore(history=3)
    for i in range(5):
        session = store.record("u", "s1", 10 + i, ADD_TO_CART if i == 1 else VIEW, T0 + i, i == 1)
    assert list(session.items) == [12, 13, 14]
    assert list(session.types) == [VIEW, VIEW, VIEW]
    assert list(session.times_ms) == [T0 + 2, T0 + 3, T0 + 4]
    assert session.n_events == 5
    assert session.n_carts == 1  # the cart event fell out of the history but still counts


def test_events_of_one_session_accumulate() -> None:
    """Same session id within the gap: one session, with start, last and previous times."""
    store = SessionStore()
    view(store, "u", 1, T0)
    store.record("u", "s1", 2, ADD_TO_CART, T0 + MIN_MS, True)
    session = store.record("u", "s1", 2, REMOVE_FROM_CART, T0 + 2 * MIN_MS, False)
    assert session.start_ms == T0
    assert session.last_ms == T0 + 2 * MIN_MS
    assert session.prev_ms == T0 + MIN_MS
    assert session.n_events == 3 and session.n_carts == 1
    assert list(session.items) == [1, 2, 2]
    assert list(session.types) == [VIEW, ADD_TO_CART, REMOVE_FROM_CART]


def test_first_event_of_a_session_has_no_previous_time() -> None:
    """prev_ms is -1 for the first event of a session."""
    assert view(SessionStore(), "u", 1, T0).prev_ms == -1


def test_new_session_when_the_session_id_changes() -> None:
    """A different website session id starts a fresh session, even a second later."""
    store = SessionStore()
    view(store, "u", 1, T0)
    view(store, "u", 2, T0 + 500)
    session = view(store, "u", 3, T0 + 1000, session_id="s2")
    assert session.session_id == "s2"
    assert list(session.items) == [3]
    assert session.n_events == 1
    assert session.start_ms == T0 + 1000
    assert session.prev_ms == -1
    assert len(store) == 1


def test_new_session_after_more_than_30_minutes_of_inactivity() -> None:
    """Same session id but a gap over 30 min: a fresh session; exactly 30 min: the same one."""
    store = SessionStore()
    view(store, "u", 1, T0)
    same = view(store, "u", 2, T0 + SESSION_GAP_MS)
    assert list(same.items) == [1, 2] and same.start_ms == T0
    fresh = view(store, "u", 3, T0 + 2 * SESSION_GAP_MS + 1)
    assert list(fresh.items) == [3]
    assert fresh.start_ms == T0 + 2 * SESSION_GAP_MS + 1
    assert fresh.n_events == 1


def test_custom_session_gap_is_honoured() -> None:
    """session_gap_ms is configurable."""
    store = SessionStore(session_gap_ms=1000)
    view(store, "u", 1, T0)
    assert list(view(store, "u", 2, T0 + 1001).items) == [2]


def test_late_event_stays_in_the_session_and_does_not_move_last_time_back() -> None:
    """An event older than the session's last one joins the session; last_ms stays the max."""
    store = SessionStore()
    view(store, "u", 1, T0 + 10 * MIN_MS)
    session = view(store, "u", 2, T0)
    assert list(session.items) == [1, 2]
    assert session.last_ms == T0 + 10 * MIN_MS


def test_lru_eviction_at_max_users_drops_the_least_recently_active() -> None:
    """Beyond max_users, the user whose last event is least recent is evicted and counted."""
    store = SessionStore(max_users=2)
    view(store, "a", 1, T0)
    view(store, "b", 1, T0 + 1)
    view(store, "a", 2, T0 + 2)  # a is now more recent than b
    view(store, "c", 1, T0 + 3)
    assert store.users() == ["a", "c"]
    assert "b" not in store
    assert store.get("b") is None
    assert store.stats().evicted_lru == 1
    assert store.stats().users == 2


def test_user_starting_a_new_session_counts_as_recently_active_for_lru() -> None:
    """A user who just started a new session is the most recently active: not evicted next."""
    store = SessionStore(max_users=2)
    view(store, "a", 1, T0)
    view(store, "b", 1, T0 + 1)
    view(store, "a", 2, T0 + 2, session_id="s2")  # a active again, in a new session
    view(store, "c", 1, T0 + 3)
    assert "a" in store
    assert "b" not in store


def test_expire_idle_forgets_idle_users_behind_a_user_who_restarted_a_session() -> None:
    """Idle users expire even if an active user's session was restarted after theirs began."""
    store = SessionStore(idle_ttl_ms=10 * MIN_MS)
    view(store, "a", 1, T0)
    view(store, "b", 1, T0 + 1)
    view(store, "a", 2, T0 + 60 * MIN_MS)  # gap > 30 min: a new session for a
    view(store, "c", 1, T0 + 61 * MIN_MS)
    assert store.expire_idle() == 1
    assert store.users() == ["a", "c"]


def test_expire_idle_forgets_users_idle_longer_than_ttl_of_event_time() -> None:
    """Users whose last event is more than idle_ttl_ms before the newest event seen go; the
    count is returned and accumulated in stats."""
    store = SessionStore(idle_ttl_ms=10 * MIN_MS)
    view(store, "old", 1, T0)
    view(store, "edge", 1, T0 + 5 * MIN_MS)
    view(store, "fresh", 1, T0 + 14 * MIN_MS)
    view(store, "newest", 1, T0 + 15 * MIN_MS)
    assert store.expire_idle() == 1  # horizon T0 + 5 min: "edge" is exactly at it and stays
    assert store.users() == ["edge", "fresh", "newest"]
    assert store.expire_idle() == 0
    view(store, "newest", 2, T0 + 16 * MIN_MS)
    assert store.expire_idle() == 1
    assert store.users() == ["fresh", "newest"]
    assert store.stats().expired_idle == 2


def test_expire_idle_on_empty_store_is_a_no_op() -> None:
    """Nothing to expire: 0."""
    assert SessionStore().expire_idle() == 0


def test_drop_partitions_forgets_only_users_of_those_partitions() -> None:
    """On revocation, users tagged with the revoked partitions are dropped; others stay. A user
    is tagged with the partition of their latest event."""
    store = SessionStore()
    view(store, "a", 1, T0, partition=0)
    view(store, "b", 1, T0, partition=1)
    view(store, "c", 1, T0, partition=2)
    view(store, "d", 1, T0, partition=2)
    view(store, "d", 1, T0 + 1, partition=3)
    assert store.drop_partitions({1, 2}) == 2
    assert sorted(store.users()) == ["a", "d"]
    assert store.drop_partitions({7}) == 0
    assert len(store) == 2


def test_idleness_is_judged_against_the_users_own_partition() -> None:
    """A lagging partition (its worker died and another took it over) keeps its active users even
    when another partition's events are hours ahead; its own idle users do expire."""
    from worker.core.session import SessionStore

    hour = 3_600_000
    store = SessionStore(idle_ttl_ms=hour)
    store.record("lagging", "s1", 1, 0, 0, False, partition=1, offset=0)
    store.record("ahead", "s1", 1, 0, 5 * hour, False, partition=2, offset=0)
    assert store.expire_idle() == 0
    assert "lagging" in store
    store.record("other-on-1", "s1", 1, 0, 2 * hour, False, partition=1, offset=1)
    assert store.expire_idle() == 1
    assert "lagging" not in store and "other-on-1" in store and "ahead" in store


def test_trim_to_total_evicts_the_least_recently_active_across_stores() -> None:
    """The sum is capped; the victims are the users with the oldest last event, whichever store
    holds them; each store forgets its own (its tombstones)."""
    from worker.core.session import trim_to_total

    a, b = SessionStore(), SessionStore()
    for t, (store, user) in enumerate([(a, "a1"), (b, "b1"), (a, "a2"), (b, "b2"), (a, "a3")]):
        store.record(user, "s", 1, 0, 1000 * t, False, partition=0, offset=t)
    assert trim_to_total([a, b], 5) == 0
    assert trim_to_total([a, b], 2) == 3
    assert (a.users(), b.users()) == (["a3"], ["b2"])
    assert a.drain_forgotten() == [("a1", 0), ("a2", 0)] and b.drain_forgotten() == [("b1", 0)]
    assert a.stats().evicted_lru == 2 and b.stats().evicted_lru == 1
    assert trim_to_total([a, b], 0) == 2 and len(a) == len(b) == 0
