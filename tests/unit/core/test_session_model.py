"""SessionStore (slots in typed arrays) against the store it replaced (one Session object per user
in an OrderedDict), kept here as the reference: random sequences of every operation must give
the same sessions, the same LRU order and evictions, the same forgotten users and statistics,
and forgotten users' slots must be reused."""

from __future__ import annotations

from array import array
from collections import OrderedDict

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from worker.core.records import ADD_TO_CART, VIEW
from worker.core.session import SESSION_GAP_MS, Session, SessionStore, SessionStoreStats

T0 = 1_700_000_000_000
DAY_MS = 86_400_000


def copy_session(s: Session) -> Session:
    return Session(
        s.session_id,
        s.start_ms,
        s.last_ms,
        s.n_events,
        s.n_carts,
        array("i", s.codes),
        array("q", s.times_ms),
        s.prev_ms,
        s.partition,
        s.offset,
    )


class ReferenceStore:
    """The OrderedDict store of before the slots (commit bba7980), behaviour unchanged; get,
    record and take return copies, as the slot store does."""

    def __init__(self, *, history: int, max_users: int, idle_ttl_ms: int) -> None:
        self.history = history
        self.max_users = max_users
        self.idle_ttl_ms = idle_ttl_ms
        self.session_gap_ms = SESSION_GAP_MS
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._evicted_lru = 0
        self._expired_idle = 0
        self._watermarks_ms: dict[int, int] = {}
        self._forgotten: list[tuple[str, int]] = []

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, user_id: str) -> Session | None:
        session = self._sessions.get(user_id)
        return None if session is None else copy_session(session)

    def record(self, user_id, session_id, item, event_type, time_ms, is_cart, partition, offset):
        session = self._sessions.get(user_id)
        if (
            session is not None
            and offset >= 0
            and partition == session.partition
            and offset <= session.offset
        ):
            self._sessions.move_to_end(user_id)
            return copy_session(session)
        if (
            session is None
            or session.session_id != session_id
            or time_ms - session.last_ms > self.session_gap_ms
        ):
            session = Session(session_id=session_id, start_ms=time_ms, last_ms=time_ms)
            self._sessions[user_id] = session
        self._sessions.move_to_end(user_id)
        session.partition = partition
        session.offset = offset
        session.prev_ms = session.last_ms if session.n_events else -1
        session.last_ms = max(session.last_ms, time_ms)
        session.n_events += 1
        session.n_carts += is_cart
        session.codes.append(item * 4 + event_type)
        session.times_ms.append(time_ms)
        if len(session.codes) > self.history:
            del session.codes[0], session.times_ms[0]
        if time_ms > self._watermarks_ms.get(partition, 0):
            self._watermarks_ms[partition] = time_ms
        result = copy_session(session)
        if len(self._sessions) > self.max_users:
            evicted_user, evicted = self._sessions.popitem(last=False)
            self._evicted_lru += 1
            self._forgotten.append((evicted_user, evicted.partition))
        return result

    def expire_idle(self) -> int:
        expired = 0
        while self._sessions:
            user_id, oldest = next(iter(self._sessions.items()))
            horizon = self._watermarks_ms.get(oldest.partition, 0) - self.idle_ttl_ms
            if oldest.last_ms >= horizon:
                break
            del self._sessions[user_id]
            self._forgotten.append((user_id, oldest.partition))
            expired += 1
        self._expired_idle += expired
        return expired

    def drop_partitions(self, partitions: set[int]) -> int:
        gone = [u for u, s in self._sessions.items() if s.partition in partitions]
        for user_id in gone:
            del self._sessions[user_id]
        return len(gone)

    def drain_forgotten(self) -> list[tuple[str, int]]:
        forgotten, self._forgotten = self._forgotten, []
        return forgotten

    def put(self, user_id: str, session: Session) -> None:
        self._sessions[user_id] = copy_session(session)
        self._sessions.move_to_end(user_id)
        if session.last_ms > self._watermarks_ms.get(session.partition, 0):
            self._watermarks_ms[session.partition] = session.last_ms

    def users(self) -> list[str]:
        return list(self._sessions)

    def take(self, user_id: str) -> Session | None:
        return self._sessions.pop(user_id, None)

    def watermarks(self) -> dict[int, int]:
        return dict(self._watermarks_ms)

    def advance_watermarks(self, watermarks: dict[int, int]) -> None:
        for partition, time_ms in watermarks.items():
            if time_ms > self._watermarks_ms.get(partition, 0):
                self._watermarks_ms[partition] = time_ms

    def stats(self) -> SessionStoreStats:
        return SessionStoreStats(len(self._sessions), self._evicted_lru, self._expired_idle)


def rows_of(sessions: list[Session], history: int) -> dict[str, np.ndarray]:
    """What record_rows returns, from the reference's sessions right after each event."""
    codes = np.full((len(sessions), history), -1, dtype=np.int32)
    times = np.zeros((len(sessions), history), dtype=np.int64)
    for row, s in enumerate(sessions):
        codes[row, : len(s.codes)] = s.codes[::-1]
        times[row, : len(s.codes)] = s.times_ms[::-1]
    return {
        "codes": codes,
        "times_ms": times,
        "start_ms": np.array([s.start_ms for s in sessions], dtype=np.int64),
        "n_events": np.array([s.n_events for s in sessions], dtype=np.int32),
        "n_carts": np.array([s.n_carts for s in sessions], dtype=np.int32),
        "prev_ms": np.array([s.prev_ms for s in sessions], dtype=np.int64),
    }


USERS = ["a", "b", "c", "d", "e", "f", "ü-7", "x" * 70]  # one id beyond the session-id pool
SESSION_IDS = ["s1", "s2", "s-longer-than-the-first", "é", "\ud800", "z" * 80]
HISTORY = 3
MAX_USERS = 4
IDLE_TTL_MS = 2 * SESSION_GAP_MS

# Time steps: same session, a new one after the gap, late events, and jumps beyond int32 ms.
steps = st.sampled_from([0, 1, 1_000, SESSION_GAP_MS, SESSION_GAP_MS + 1, 3 * SESSION_GAP_MS])
steps = steps | st.sampled_from([-5_000, -30 * DAY_MS, 30 * DAY_MS]) | st.integers(-60_000, 60_000)
event = st.tuples(
    st.sampled_from(USERS),
    st.sampled_from(SESSION_IDS),
    st.integers(0, 40),
    st.sampled_from([VIEW, ADD_TO_CART, 2, 3]),
    steps,
    st.sampled_from([-1, 0, 1, 2]),  # partition
    st.integers(-2, 3),  # offset step: <= 0 is a redelivery (or no offset when negative)
)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = SessionStore(history=HISTORY, max_users=MAX_USERS, idle_ttl_ms=IDLE_TTL_MS)
        self.ref = ReferenceStore(history=HISTORY, max_users=MAX_USERS, idle_ttl_ms=IDLE_TTL_MS)
        self.clock = T0
        self.offsets: dict[int, int] = {}
        self.most_held = 0

    def fields(self, e: tuple) -> tuple:
        user, sid, item, event_type, step, partition, offset_step = e
        self.clock += step
        offset = -1
        if partition >= 0 and offset_step > -2:
            offset = max(self.offsets.get(partition, 0) + offset_step, 0)
            self.offsets[partition] = max(self.offsets.get(partition, 0), offset)
        return (
            user,
            sid,
            item,
            event_type,
            self.clock,
            event_type == ADD_TO_CART,
            partition,
            offset,
        )

    @rule(e=event)
    def record(self, e: tuple) -> None:
        fields = self.fields(e)
        assert self.store.record(*fields) == self.ref.record(*fields)

    @rule(batch=st.lists(event, max_size=12))
    def record_rows(self, batch: list[tuple]) -> None:
        events = [self.fields(e) for e in batch]
        got = self.store.record_rows(events)
        want = rows_of([self.ref.record(*f) for f in events], HISTORY)
        for name, expected in want.items():
            np.testing.assert_array_equal(getattr(got, name), expected, err_msg=name)

    @rule()
    def expire_idle(self) -> None:
        assert self.store.expire_idle() == self.ref.expire_idle()

    @rule(partitions=st.sets(st.sampled_from([-1, 0, 1, 2, 9])))
    def drop_partitions(self, partitions: set[int]) -> None:
        assert self.store.drop_partitions(partitions) == self.ref.drop_partitions(partitions)

    @rule()
    def drain_forgotten(self) -> None:
        assert self.store.drain_forgotten() == self.ref.drain_forgotten()

    @rule(user=st.sampled_from(USERS))
    def take(self, user: str) -> None:
        assert self.store.take(user) == self.ref.take(user)

    @rule(user=st.sampled_from(USERS), source=st.sampled_from(USERS), history=st.integers(0, 5))
    def put(self, user: str, source: str, history: int) -> None:
        """A restored session: a held one, or a made-up one whose history may exceed the
        store's (the slot store keeps the most recent ``history`` interactions)."""
        session = self.ref.get(source) or Session(
            "restored", self.clock - 10, self.clock - 1, n_events=history, partition=1, offset=7
        )
        if self.ref.get(source) is None:
            session.codes = array("i", range(1, 4 * history + 1, 4))
            session.times_ms = array("q", range(self.clock - history, self.clock))
            session.prev_ms = self.clock - 2 if history > 1 else -1
        trimmed = copy_session(session)
        del trimmed.codes[: max(len(trimmed.codes) - HISTORY, 0)]
        del trimmed.times_ms[: max(len(trimmed.times_ms) - HISTORY, 0)]
        self.store.put(user, session)
        self.ref.put(user, trimmed)

    @rule(marks=st.dictionaries(st.sampled_from([-1, 0, 1, 2]), st.integers(0, 4 * DAY_MS)))
    def advance_watermarks(self, marks: dict[int, int]) -> None:
        marks = {p: T0 + t for p, t in marks.items()}
        self.store.advance_watermarks(marks)
        self.ref.advance_watermarks(marks)

    @invariant()
    def same_state(self) -> None:
        assert self.store.users() == self.ref.users()  # the LRU order too
        assert len(self.store) == len(self.ref)
        assert self.store.stats() == self.ref.stats()
        assert self.store.watermarks() == self.ref.watermarks()
        for user in USERS:
            assert (user in self.store) == (self.ref.get(user) is not None)
            assert self.store.get(user) == self.ref.get(user)

    @invariant()
    def slots_are_reused(self) -> None:
        """No more slots than users ever held at once (one over the cap while evicting; a
        batch only adds users, so its end holds its most)."""
        self.most_held = max(self.most_held, len(self.ref))
        assert self.store.capacity <= self.most_held + 1


TestStoreAgainstReference = StoreMachine.TestCase
TestStoreAgainstReference.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)
)


def test_capacity_stays_flat_when_users_churn_at_a_constant_population() -> None:
    """1,000 users at a time, replaced by new ones every round and expired: slots are reused,
    the arrays do not grow past the first round's."""
    store = SessionStore(idle_ttl_ms=60_000)
    t = T0
    for round_ in range(20):
        for u in range(1_000):
            store.record(f"r{round_}-u{u}", "s", u, VIEW, t, False, partition=0)
        t += 120_000
        store.record("clock", "s", 0, VIEW, t, False, partition=0)  # moves the watermark
        assert store.expire_idle() == 1_000
        assert len(store.drain_forgotten()) == 1_000
    assert len(store) == 1
    assert store.capacity == 1_001


def test_relative_times_beyond_int32_widen_and_stay_exact() -> None:
    """A late event 40 days before its session's start (beyond int32 milliseconds) keeps its
    exact time, and so do the other sessions."""
    store = SessionStore()
    store.record("a", "s", 1, VIEW, T0, False)
    store.record("b", "s", 2, VIEW, T0, False)
    session = store.record("b", "s", 3, VIEW, T0 - 40 * DAY_MS, False)
    assert list(session.times_ms) == [T0, T0 - 40 * DAY_MS]
    assert list(store.get("a").times_ms) == [T0]
    rows = store.record_rows([("a", "s", 4, VIEW, T0 + 1, False, -1, -1)])
    assert rows.times_ms[0, :2].tolist() == [T0 + 1, T0]
    assert rows.prev_ms.tolist() == [T0]
