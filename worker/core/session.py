"""Per-user session state, bounded in size and age.

A session is the user's recent interactions (product index, event type, event time) since the
website's session id last changed or since 30 minutes of inactivity. The store keeps at most
``max_users`` users (least recently active evicted first) and forgets users idle for longer than
``idle_ttl_ms`` of event time.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

SESSION_GAP_MS = 30 * 60 * 1000


@dataclass(slots=True)
class Session:
    """One user's current session: the last ``history`` interactions, oldest first."""

    session_id: str
    start_ms: int
    last_ms: int
    n_events: int = 0
    n_carts: int = 0
    # Product index and event type packed as ``item * 4 + type`` in one typed array, times in
    # another: a few hundred bytes less per user than lists of int objects, which matters with
    # a million active users (numpy reads them through the buffer protocol).
    codes: array[int] = field(default_factory=lambda: array("i"))
    times_ms: array[int] = field(default_factory=lambda: array("q"))
    prev_ms: int = -1  # time of the event before the last one, -1 if none
    partition: int = -1  # input partition of the user's events (to drop them on revocation)
    offset: int = -1  # input offset of the last event recorded (redelivered events are skipped)

    @property
    def items(self) -> list[int]:
        """Product indices of the history, oldest first."""
        return [code >> 2 for code in self.codes]

    @property
    def types(self) -> list[int]:
        """Event types of the history, oldest first."""
        return [code & 3 for code in self.codes]


@dataclass(slots=True)
class SessionStoreStats:
    users: int
    evicted_lru: int
    expired_idle: int


class SessionStore:
    """Sessions by user id, LRU-ordered by activity.

    Args:
        history: how many recent interactions a session keeps.
        max_users: the most users held; the least recently active is evicted beyond it.
        idle_ttl_ms: users without events for this long (event time) are forgotten.
        session_gap_ms: inactivity that starts a new session even with the same session id.
    """

    def __init__(
        self,
        *,
        history: int = 20,
        max_users: int = 2_000_000,
        idle_ttl_ms: int = 2 * SESSION_GAP_MS,
        session_gap_ms: int = SESSION_GAP_MS,
    ) -> None:
        self.history = history
        self.max_users = max_users
        self.idle_ttl_ms = idle_ttl_ms
        self.session_gap_ms = session_gap_ms
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._evicted_lru = 0
        self._expired_idle = 0
        # Newest event time per input partition: partitions progress unevenly (a partition
        # whose worker died lags by the time its takeover took), so idleness is judged against
        # the user's own partition, never against events of other partitions.
        self._watermarks_ms: dict[int, int] = {}
        self._forgotten: list[tuple[str, int]] = []

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, user_id: str) -> bool:
        return user_id in self._sessions

    def get(self, user_id: str) -> Session | None:
        return self._sessions.get(user_id)

    def record(
        self,
        user_id: str,
        session_id: str,
        item: int,
        event_type: int,
        time_ms: int,
        is_cart: bool,
        partition: int = -1,
        offset: int = -1,
    ) -> Session:
        """Add one interaction to the user's session (starting a new one if due) and return it.

        An event whose input ``offset`` is not after the last one recorded from the same
        partition is a redelivery (the state already holds it): the session is returned as is.
        """
        session = self._sessions.get(user_id)
        if (
            session is not None
            and offset >= 0
            and partition == session.partition
            and offset <= session.offset
        ):
            self._sessions.move_to_end(user_id)
            return session
        if (
            session is None
            or session.session_id != session_id
            or time_ms - session.last_ms > self.session_gap_ms
        ):
            session = Session(session_id=session_id, start_ms=time_ms, last_ms=time_ms)
            self._sessions[user_id] = session
            self._sessions.move_to_end(user_id)  # a returning user is the most recent one
        else:
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
        if len(self._sessions) > self.max_users:
            evicted_user, evicted = self._sessions.popitem(last=False)
            self._evicted_lru += 1
            self._forgotten.append((evicted_user, evicted.partition))
        return session

    def expire_idle(self) -> int:
        """Forget users idle for longer than ``idle_ttl_ms`` before the newest event seen on
        their own input partition (least recently active first).

        As ``idle_ttl_ms`` exceeds the session gap, an expired user's next event would have
        started a new session anyway: expiry frees memory without changing any suggestion.
        """
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
        """Forget the users whose events came from the given input partitions."""
        gone = [u for u, s in self._sessions.items() if s.partition in partitions]
        for user_id in gone:
            del self._sessions[user_id]
        return len(gone)

    def drain_forgotten(self) -> list[tuple[str, int]]:
        """``(user_id, partition)`` of the users evicted or expired since the last call."""
        forgotten, self._forgotten = self._forgotten, []
        return forgotten

    def put(self, user_id: str, session: Session) -> None:
        """Install a restored session (for example read back from a changelog)."""
        self._sessions[user_id] = session
        self._sessions.move_to_end(user_id)
        if session.last_ms > self._watermarks_ms.get(session.partition, 0):
            self._watermarks_ms[session.partition] = session.last_ms

    def users(self) -> list[str]:
        return list(self._sessions)

    def take(self, user_id: str) -> Session | None:
        """Remove the user's session and return it (None if absent), without counting the user
        as forgotten: the session moves elsewhere (to another model version's store), so no
        tombstone is due."""
        return self._sessions.pop(user_id, None)

    def watermarks(self) -> dict[int, int]:
        """Newest event time seen per input partition."""
        return dict(self._watermarks_ms)

    def advance_watermarks(self, watermarks: dict[int, int]) -> None:
        """Raise the per-partition watermarks to ``watermarks`` where those are newer: a store
        that no longer receives events (its model version stopped serving) still expires its
        idle users against the partitions' progress elsewhere."""
        mine = self._watermarks_ms
        for partition, time_ms in watermarks.items():
            if time_ms > mine.get(partition, 0):
                mine[partition] = time_ms

    def stats(self) -> SessionStoreStats:
        return SessionStoreStats(len(self._sessions), self._evicted_lru, self._expired_idle)

    def oldest_last_ms(self) -> int | None:
        """Last event time of the least recently active user, None when empty."""
        if not self._sessions:
            return None
        return next(iter(self._sessions.values())).last_ms

    def evict_oldest(self) -> None:
        """Evict the least recently active user (counted and forgotten as an LRU eviction)."""
        user_id, evicted = self._sessions.popitem(last=False)
        self._evicted_lru += 1
        self._forgotten.append((user_id, evicted.partition))


def trim_to_total(stores: Sequence[SessionStore], limit: int) -> int:
    """Evict users, least recently active first across ``stores`` (by their last event time),
    until the stores hold ``limit`` users together; returns how many were evicted. Each store
    caps itself (``max_users``); this caps the sum, for a worker that serves two model versions
    whose stores share one memory budget."""
    excess = sum(len(s) for s in stores) - limit
    evicted = 0
    while excess > 0:
        victim = min(
            (s for s in stores if len(s)),
            key=lambda s: s.oldest_last_ms() or 0,
        )
        victim.evict_oldest()
        excess -= 1
        evicted += 1
    return evicted
