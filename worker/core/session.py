"""Per-user session state, bounded in size and age.

A session is the user's recent interactions (product index, event type, event time) since the
website's session id last changed or since 30 minutes of inactivity. The store keeps at most
``max_users`` users (least recently active evicted first) and forgets users idle for longer than
``idle_ttl_ms`` of event time.

The store holds every session in one slot of a set of fixed-width typed arrays (a struct of
arrays): a million users cost one dict entry and one user-id string each, plus about 200 bytes
of arrays, instead of an object graph of about 700 bytes. Slots of forgotten users go to a free
list and are reused; the arrays grow (amortized, without copying large blocks: the allocator
remaps them) only when more users are held at once than ever before. :class:`Session` remains
the exchange format (restore, changelog, migration between model versions, tests).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

SESSION_GAP_MS = 30 * 60 * 1000

# Event times are held relative to their session's start in int32 (about 24.8 days either way);
# the first time that does not fit widens every relative time of the store to int64.
_I32_MIN = -(1 << 31)
_I32_MAX = (1 << 31) - 1
_I64_MIN = -(1 << 63)
# User and session ids up to this many UTF-8 bytes are held in fixed-width byte pools (the width
# follows the longest id seen); longer ones as str objects in a side dict.
_TEXT_POOL_MAX = 64
_TEXT_LONG = 255  # length marker of a string held in the side dict


@dataclass(slots=True)
class Session:
    """One user's current session: the last ``history`` interactions, oldest first."""

    session_id: str
    start_ms: int
    last_ms: int
    n_events: int = 0
    n_carts: int = 0
    # Product index and event type packed as ``item * 4 + type`` in one typed array, times in
    # another.
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


@dataclass(frozen=True, slots=True)
class SessionRows:
    """Sessions right after each event of a batch (:meth:`SessionStore.record_rows`), as padded
    arrays: row ``b`` describes event ``b``, histories most recent first."""

    codes: np.ndarray  # int32 (B, history): item * 4 + type, -1 padded
    times_ms: np.ndarray  # int64 (B, history), 0 padded
    start_ms: np.ndarray  # int64 (B,)
    n_events: np.ndarray  # int32 (B,)
    n_carts: np.ndarray  # int32 (B,)
    prev_ms: np.ndarray  # int64 (B,), -1 if first event of the session


#: One event for :meth:`SessionStore.record_rows`: user id, session id, item, event type, event
#: time (ms), is an add-to-cart, input partition, input offset.
EventFields = tuple[str, str, int, int, int, bool, int, int]


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
        if not 1 <= history <= 0xFFFF:
            raise ValueError(f"history must be within 1..65535, not {history}")
        self.history = history
        self.max_users = max_users
        self.idle_ttl_ms = idle_ttl_ms
        self.session_gap_ms = session_gap_ms
        # User id -> slot: an open-addressing table (linear probing, at most half full) of
        # slots, keyed by the low 32 bits of the id's hash, which every slot keeps.
        self._table = array("i", [-1]) * 8
        self._count = 0
        self._hashes = array("I")
        self._used = bytearray()  # 1 while the slot holds a user
        self._users = _TextColumn()  # user ids
        self._free = array("i")  # free slots (a stack)
        # One element per slot (``history`` elements for the two histories, most recent first).
        self._codes = array("i")  # item * 4 + event type
        self._times = array("i")  # event time - start_ms ("q" once widened)
        self._length = array("H")  # interactions held
        self._start = array("q")  # start_ms
        self._last = array("i")  # last_ms - start_ms
        self._prev = array("i")  # prev_ms - start_ms, or the type's minimum for none
        self._no_prev = _I32_MIN
        self._n_events = array("i")
        self._n_carts = array("i")
        self._partition = array("i")
        self._offset = array("q")
        self._older = array("i")  # LRU neighbours, -1 at either end
        self._newer = array("i")
        self._oldest = -1
        self._newest = -1
        self._sids = _TextColumn()  # session ids
        self._blank_codes = array("i", [0]) * history
        self._blank_times = array("i", [0]) * history
        self._evicted_slot = -1  # the slot the last record() evicted, -1 if none
        self._evicted_lru = 0
        self._expired_idle = 0
        # Newest event time per input partition: partitions progress unevenly (a partition
        # whose worker died lags by the time its takeover took), so idleness is judged against
        # the user's own partition, never against events of other partitions.
        self._watermarks_ms: dict[int, int] = {}
        self._forgotten: list[tuple[str, int]] = []

    def __len__(self) -> int:
        return self._count

    def __contains__(self, user_id: str) -> bool:
        return self._find(user_id, _utf8(user_id)) >= 0

    @property
    def capacity(self) -> int:
        """Slots allocated: the most users held at once so far (freed slots are reused)."""
        return len(self._used)

    def get(self, user_id: str) -> Session | None:
        """A copy of the user's session (None if absent)."""
        slot = self._find(user_id, _utf8(user_id))
        return None if slot < 0 else self._session_at(slot)

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
        """Add one interaction to the user's session (starting a new one if due) and return a
        copy of the session.

        An event whose input ``offset`` is not after the last one recorded from the same
        partition is a redelivery (the state already holds it): the session is returned as is.
        """
        slot = self._record(
            user_id, session_id, item, event_type, time_ms, is_cart, partition, offset
        )
        return self._session_at(slot)

    def record_rows(self, events: Sequence[EventFields]) -> SessionRows:
        """Record each event in its user's session, in order, and return every session as it
        stands right after its event (the batch path: no :class:`Session` objects).

        A row whose session is changed again later in the batch (the user has another event,
        or is evicted) is copied at that moment; all the others are gathered at the end with
        one numpy indexing per field.
        """
        n_rows = len(events)
        history = self.history
        codes_out = np.full((n_rows, history), -1, dtype=np.int32)
        times_out = np.zeros((n_rows, history), dtype=np.int64)
        start_out = np.empty(n_rows, dtype=np.int64)
        n_events_out = np.empty(n_rows, dtype=np.int32)
        n_carts_out = np.empty(n_rows, dtype=np.int32)
        prev_out = np.empty(n_rows, dtype=np.int64)
        outs = (codes_out, times_out, start_out, n_events_out, n_carts_out, prev_out)
        pending: dict[int, int] = {}  # slot -> the row that reads it at the end
        find = self._find
        record = self._record
        copy_row = self._copy_row
        for row, fields in enumerate(events):
            held = find(fields[0], fields[0].encode("utf-8", "surrogatepass"))
            if held in pending:
                copy_row(held, pending.pop(held), outs)
            slot = record(*fields, held)
            pending[slot] = row
            evicted = self._evicted_slot
            if evicted >= 0 and evicted in pending:
                copy_row(evicted, pending.pop(evicted), outs)
        if pending:
            slots = np.fromiter(pending.keys(), dtype=np.int64, count=len(pending))
            rows = np.fromiter(pending.values(), dtype=np.int64, count=len(pending))
            self._gather(slots, rows, outs)
        return SessionRows(codes_out, times_out, start_out, n_events_out, n_carts_out, prev_out)

    def expire_idle(self) -> int:
        """Forget users idle for longer than ``idle_ttl_ms`` before the newest event seen on
        their own input partition (least recently active first).

        As ``idle_ttl_ms`` exceeds the session gap, an expired user's next event would have
        started a new session anyway: expiry frees memory without changing any suggestion.
        """
        expired = 0
        marks = self._watermarks_ms
        while (oldest := self._oldest) >= 0:
            partition = self._partition[oldest]
            horizon = marks.get(partition, 0) - self.idle_ttl_ms
            if self._start[oldest] + self._last[oldest] >= horizon:
                break
            user_id = self._users.get(oldest)
            self._release(oldest)
            self._forgotten.append((user_id, partition))
            expired += 1
        self._expired_idle += expired
        return expired

    def drop_partitions(self, partitions: set[int]) -> int:
        """Forget the users whose events came from the given input partitions."""
        if not partitions or not self._count:
            return 0
        tagged = np.flatnonzero(
            np.isin(np.frombuffer(self._partition, dtype=np.int32), list(partitions))
        ).tolist()
        gone = [slot for slot in tagged if self._used[slot]]
        for slot in gone:
            self._release(slot)
        return len(gone)

    def drain_forgotten(self) -> list[tuple[str, int]]:
        """``(user_id, partition)`` of the users evicted or expired since the last call."""
        forgotten, self._forgotten = self._forgotten, []
        return forgotten

    def put(self, user_id: str, session: Session) -> None:
        """Install a restored session (for example read back from a changelog); a history
        longer than ``history`` keeps its most recent interactions."""
        slot = self._find(user_id, _utf8(user_id))
        if slot < 0:
            slot = self._new_slot(user_id)
        else:
            self._touch(slot)
        start = session.start_ms
        n = min(len(session.codes), self.history)
        rel_times = [t - start for t in session.times_ms[len(session.times_ms) - n :]]
        rel_last = session.last_ms - start
        rel_prev = None if session.prev_ms == -1 else session.prev_ms - start
        for rel in (*rel_times, rel_last, *(() if rel_prev is None else (rel_prev,))):
            if not _I32_MIN < rel <= _I32_MAX and self._no_prev == _I32_MIN:
                self._widen_times()
        base = slot * self.history
        codes = session.codes[len(session.codes) - n :]
        codes.reverse()
        rel_times.reverse()
        self._codes[base : base + n] = codes
        self._times[base : base + n] = array(self._times.typecode, rel_times)
        self._length[slot] = n
        self._start[slot] = start
        self._last[slot] = rel_last
        self._prev[slot] = self._no_prev if rel_prev is None else rel_prev
        self._n_events[slot] = session.n_events
        self._n_carts[slot] = session.n_carts
        self._partition[slot] = session.partition
        self._offset[slot] = session.offset
        self._sids.set(slot, session.session_id, _utf8(session.session_id))
        if session.last_ms > self._watermarks_ms.get(session.partition, 0):
            self._watermarks_ms[session.partition] = session.last_ms

    def users(self) -> list[str]:
        """User ids, least recently active first."""
        out = []
        slot = self._oldest
        while slot >= 0:
            out.append(self._users.get(slot))
            slot = self._newer[slot]
        return out

    def take(self, user_id: str) -> Session | None:
        """Remove the user's session and return it (None if absent), without counting the user
        as forgotten: the session moves elsewhere (to another model version's store), so no
        tombstone is due."""
        slot = self._find(user_id, _utf8(user_id))
        if slot < 0:
            return None
        session = self._session_at(slot)
        self._release(slot)
        return session

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
        return SessionStoreStats(self._count, self._evicted_lru, self._expired_idle)

    def oldest_last_ms(self) -> int | None:
        """Last event time of the least recently active user, None when empty."""
        oldest = self._oldest
        if oldest < 0:
            return None
        return int(self._start[oldest] + self._last[oldest])

    def evict_oldest(self) -> None:
        """Evict the least recently active user (counted and forgotten as an LRU eviction).

        Raises:
            KeyError: the store is empty.
        """
        oldest = self._oldest
        if oldest < 0:
            raise KeyError("no session to evict")
        user_id, partition = self._users.get(oldest), self._partition[oldest]
        self._release(oldest)
        self._evicted_lru += 1
        self._forgotten.append((user_id, partition))

    # -- slots ---------------------------------------------------------------------------------

    def _record(
        self,
        user_id: str,
        session_id: str,
        item: int,
        event_type: int,
        time_ms: int,
        is_cart: bool,
        partition: int,
        offset: int,
        held: int | None = None,
    ) -> int:
        """:meth:`record` without the copy: the user's slot (``held``: the user's slot, -1 if
        none, when the caller looked it up)."""
        self._evicted_slot = -1
        slot = self._find(user_id, _utf8(user_id)) if held is None else held
        sid = _utf8(session_id)
        if slot < 0:
            slot = self._new_slot(user_id)
            fresh = True
        else:
            if offset >= 0 and partition == self._partition[slot] and offset <= self._offset[slot]:
                self._touch(slot)
                return slot
            fresh = (
                not self._sids.equals(slot, session_id, sid)
                or time_ms - (self._start[slot] + self._last[slot]) > self.session_gap_ms
            )
            self._touch(slot)
        history = self.history
        base = slot * history
        codes = self._codes
        times = self._times
        if fresh:
            start = time_ms
            self._start[slot] = start
            self._sids.set(slot, session_id, sid)
            self._prev[slot] = self._no_prev
            self._last[slot] = 0
            n_events = n_carts = length = 0
            rel = 0
        else:
            start = self._start[slot]
            n_events = self._n_events[slot]
            n_carts = self._n_carts[slot]
            length = self._length[slot]
            last = self._last[slot]
            self._prev[slot] = last if n_events else self._no_prev
            rel = time_ms - start
            if not _I32_MIN < rel <= _I32_MAX and self._no_prev == _I32_MIN:
                self._widen_times()
                times = self._times
            if rel > last:
                self._last[slot] = rel
        self._partition[slot] = partition
        self._offset[slot] = offset
        self._n_events[slot] = n_events + 1
        self._n_carts[slot] = n_carts + is_cart
        if length:
            keep = length if length < history else history - 1
            codes[base + 1 : base + 1 + keep] = codes[base : base + keep]
            times[base + 1 : base + 1 + keep] = times[base : base + keep]
        if length < history:
            self._length[slot] = length + 1
        codes[base] = item * 4 + event_type
        times[base] = rel
        marks = self._watermarks_ms
        if time_ms > marks.get(partition, 0):
            marks[partition] = time_ms
        if self._count > self.max_users:
            victim = self._oldest
            self._forgotten.append((self._users.get(victim), self._partition[victim]))
            self._release(victim)
            self._evicted_lru += 1
            self._evicted_slot = victim
        return slot

    def _new_slot(self, user_id: str) -> int:
        """A slot for a new user, linked as the most recently active."""
        if self._free:
            slot = self._free.pop()
        else:
            slot = len(self._used)
            self._used.append(0)
            self._hashes.append(0)
            self._users.add_slot()
            self._sids.add_slot()
            self._codes.extend(self._blank_codes)
            self._times.extend(self._blank_times)
            for column in (self._length, self._start, self._last, self._prev, self._n_events):
                column.append(0)
            for column in (self._n_carts, self._partition, self._offset, self._older):
                column.append(0)
            self._newer.append(0)
        self._index(slot, hash(user_id))  # first: a growing table takes the slots in use
        self._used[slot] = 1
        self._users.set(slot, user_id, _utf8(user_id))
        newest = self._newest
        self._older[slot] = newest
        self._newer[slot] = -1
        if newest >= 0:
            self._newer[newest] = slot
        else:
            self._oldest = slot
        self._newest = slot
        return slot

    def _touch(self, slot: int) -> None:
        """Make ``slot`` the most recently active."""
        newest = self._newest
        if slot == newest:
            return
        older, newer = self._older, self._newer
        before, after = older[slot], newer[slot]  # after >= 0: slot is not the newest
        if before >= 0:
            newer[before] = after
        else:
            self._oldest = after
        older[after] = before
        older[slot] = newest
        newer[slot] = -1
        newer[newest] = slot
        self._newest = slot

    def _release(self, slot: int) -> None:
        """Unlink ``slot`` and return it to the free list; its data stay until reused."""
        self._unindex(slot)
        self._used[slot] = 0
        self._users.clear(slot)
        self._sids.clear(slot)
        older, newer = self._older, self._newer
        before, after = older[slot], newer[slot]
        if before >= 0:
            newer[before] = after
        else:
            self._oldest = after
        if after >= 0:
            older[after] = before
        else:
            self._newest = before
        self._free.append(slot)

    def _find(self, user_id: str, utf8: bytes) -> int:
        """The user's slot, -1 if the user is not held."""
        key = hash(user_id)
        table = self._table
        mask = len(table) - 1
        at = key & mask
        key &= 0xFFFFFFFF
        hashes = self._hashes
        while (slot := table[at]) >= 0:
            if hashes[slot] == key:
                users = self._users  # the equality test of _TextColumn.equals, inlined
                length = users.lengths[slot]
                if length == len(utf8):
                    base = slot * users.width
                    if users.pool[base : base + length] == utf8:
                        return slot
                elif length == _TEXT_LONG and users.long[slot] == user_id:
                    return slot
            at = (at + 1) & mask
        return -1

    def _index(self, slot: int, key: int) -> None:
        """Enter ``slot`` in the table under ``key`` (the user id's hash)."""
        if (self._count + 1) * 2 > len(self._table):
            self._grow_table()
        table = self._table
        mask = len(table) - 1
        at = key & mask
        while table[at] >= 0:
            at = (at + 1) & mask
        table[at] = slot
        self._hashes[slot] = key & 0xFFFFFFFF
        self._count += 1

    def _unindex(self, slot: int) -> None:
        """Remove ``slot`` from the table, moving back the entries probed past it (no
        tombstones: lookups stay as short as the load allows)."""
        table = self._table
        mask = len(table) - 1
        hashes = self._hashes
        hole = hashes[slot] & mask
        while table[hole] != slot:
            hole = (hole + 1) & mask
        at = hole
        while (other := table[at := (at + 1) & mask]) >= 0:
            home = hashes[other] & mask
            # ``other`` stays where it is if its home is in the cyclic range (hole, at].
            if hole < home <= at if hole < at else (home > hole or home <= at):
                continue
            table[hole] = other
            hole = at
        table[hole] = -1
        self._count -= 1

    def _grow_table(self) -> None:
        table = array("i", [-1]) * (len(self._table) * 2)
        mask = len(table) - 1
        hashes = self._hashes
        for slot in np.flatnonzero(np.frombuffer(self._used, dtype=np.uint8)).tolist():
            at = hashes[slot] & mask
            while table[at] >= 0:
                at = (at + 1) & mask
            table[at] = slot
        self._table = table

    def _widen_times(self) -> None:
        """Hold relative times as int64 from now on: one did not fit in int32."""
        self._times = array("q", self._times)
        self._last = array("q", self._last)
        self._prev = array("q", (_I64_MIN if t == _I32_MIN else t for t in self._prev))
        self._blank_times = array("q", [0]) * self.history
        self._no_prev = _I64_MIN

    def _session_at(self, slot: int) -> Session:
        base = slot * self.history
        length = self._length[slot]
        codes = self._codes[base : base + length]
        codes.reverse()
        start = self._start[slot]
        times = array("q", [start + t for t in self._times[base : base + length]])
        times.reverse()
        prev = self._prev[slot]
        return Session(
            session_id=self._sids.get(slot),
            start_ms=start,
            last_ms=start + self._last[slot],
            n_events=self._n_events[slot],
            n_carts=self._n_carts[slot],
            codes=codes,
            times_ms=times,
            prev_ms=-1 if prev == self._no_prev else start + prev,
            partition=self._partition[slot],
            offset=self._offset[slot],
        )

    def _copy_row(self, slot: int, row: int, outs: tuple[np.ndarray, ...]) -> None:
        """Row ``row`` of :meth:`record_rows`' arrays from ``slot`` as it stands."""
        codes_out, times_out, start_out, n_events_out, n_carts_out, prev_out = outs
        base = slot * self.history
        length = self._length[slot]
        start = self._start[slot]
        codes_out[row, :length] = self._codes[base : base + length]
        times_out[row, :length] = self._times[base : base + length]
        times_out[row, :length] += start
        start_out[row] = start
        n_events_out[row] = self._n_events[slot]
        n_carts_out[row] = self._n_carts[slot]
        prev = self._prev[slot]
        prev_out[row] = -1 if prev == self._no_prev else start + prev

    def _gather(self, slots: np.ndarray, rows: np.ndarray, outs: tuple[np.ndarray, ...]) -> None:
        """Rows ``rows`` of :meth:`record_rows`' arrays from ``slots`` as they stand.

        The numpy views of the arrays are temporaries of each expression: an array exporting
        its buffer cannot grow, so none outlives this call, not even in a traceback's frame.
        """
        codes_out, times_out, start_out, n_events_out, n_carts_out, prev_out = outs
        history = self.history
        time_type = np.int32 if self._no_prev == _I32_MIN else np.int64
        start = np.frombuffer(self._start, dtype=np.int64)[slots]
        held = (
            np.arange(history)[None, :]
            < np.frombuffer(self._length, dtype=np.uint16)[slots][:, None]
        )
        codes = np.frombuffer(self._codes, dtype=np.int32).reshape(-1, history)[slots]
        codes_out[rows] = np.where(held, codes, -1)
        times = np.frombuffer(self._times, dtype=time_type).reshape(-1, history)[slots]
        times_out[rows] = np.where(held, times + start[:, None], 0)
        start_out[rows] = start
        n_events_out[rows] = np.frombuffer(self._n_events, dtype=np.int32)[slots]
        n_carts_out[rows] = np.frombuffer(self._n_carts, dtype=np.int32)[slots]
        prev = np.frombuffer(self._prev, dtype=time_type)[slots]
        prev_out[rows] = np.where(prev == self._no_prev, -1, start + prev)


class _TextColumn:
    """A string per slot: UTF-8 in a fixed-width byte pool (the width follows the longest held,
    up to ``_TEXT_POOL_MAX`` bytes), longer ones as str objects aside."""

    __slots__ = ("width", "pool", "lengths", "long")

    def __init__(self) -> None:
        self.width = 4
        self.pool = bytearray()
        self.lengths = array("B")
        self.long: dict[int, str] = {}

    def add_slot(self) -> None:
        self.lengths.append(0)
        self.pool.extend(bytes(self.width))

    def equals(self, slot: int, text: str, utf8: bytes) -> bool:
        length = self.lengths[slot]
        if length == _TEXT_LONG:
            return self.long[slot] == text
        if length != len(utf8):
            return False
        base = slot * self.width
        return self.pool[base : base + length] == utf8

    def set(self, slot: int, text: str, utf8: bytes) -> None:
        length = len(utf8)
        if length > _TEXT_POOL_MAX:
            self.long[slot] = text
            self.lengths[slot] = _TEXT_LONG
            return
        if self.long:
            self.long.pop(slot, None)
        if length > self.width:
            self._widen(length)
        base = slot * self.width
        self.pool[base : base + length] = utf8
        self.lengths[slot] = length

    def get(self, slot: int) -> str:
        length = self.lengths[slot]
        if length == _TEXT_LONG:
            return self.long[slot]
        base = slot * self.width
        return self.pool[base : base + length].decode("utf-8", "surrogatepass")

    def clear(self, slot: int) -> None:
        if self.long:
            self.long.pop(slot, None)

    def _widen(self, length: int) -> None:
        """Room for ``length`` bytes in every slot (the pool is rebuilt)."""
        width = min(max(length, self.width * 3 // 2), _TEXT_POOL_MAX)
        old = np.frombuffer(self.pool, dtype=np.uint8).reshape(-1, self.width)
        new = np.zeros((old.shape[0], width), dtype=np.uint8)
        new[:, : self.width] = old
        del old
        self.pool = bytearray(new.tobytes())
        self.width = width


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


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
