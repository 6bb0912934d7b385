"""Watches over the Kafka clients: a stuck producer (:class:`AckWatch`), partitions that are
assigned but not fetched (:class:`FetchWatch`), and a consumer that lost its partitions and never
rejoins its group (:class:`RejoinWatch`).

**AckWatch**: tell a broker outage from a stuck producer while a batch waits for its
acknowledgements.

An exactly-once batch waits in ``flush`` until the broker has acknowledged all its outputs.
Two very different things look the same from there:

* **the broker is away** (stopped, frozen, partitioned): waiting is right. Fetching has stopped,
  memory stays flat (backpressure), and the batch completes once the broker is back;
* **the broker answers but this producer never gets its outputs acknowledged**, for example
  after a thaw in which librdkafka lost a partition's leader and did not find it again. Its
  open transaction then pins the last stable offset of every partition it wrote to, so
  ``read_committed`` readers see nobody's answers on those partitions until the broker aborts
  the transaction (``transaction.timeout.ms`` later). Giving the transaction up at once
  (replacing the producer, which aborts it) and redoing the batch is right.

:class:`AckWatch` decides between them from three observations the caller feeds it: the number
of outputs still unacknowledged, and the outcome of a cheap request to the broker (a metadata
request), which the watch asks for only after ``quiet_s`` without an acknowledgement. The
producer counts as stuck once the broker has been answering for ``stuck_s`` in a row while no
acknowledgement came. Any acknowledgement or any unanswered probe starts the count again.

Pure: no clock and no Kafka of its own (times are passed in), so it is tested by properties.

**FetchWatch** reads librdkafka's statistics for assigned partitions whose fetch state stays out
of ``active``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from worker.ops.health import Health

#: No acknowledgement for this long: start asking whether the broker answers.
ACK_QUIET_S = 10.0
#: The broker answered throughout this long, still without an acknowledgement: stuck.
ACK_STUCK_S = 10.0
#: At most one probe per this many seconds.
PROBE_EVERY_S = 2.0


@dataclass
class AckWatch:
    quiet_s: float = ACK_QUIET_S
    stuck_s: float = ACK_STUCK_S
    probe_every_s: float = PROBE_EVERY_S
    _outstanding: int | None = field(default=None, init=False)
    _progress_at: float = field(default=0.0, init=False)
    _probed_at: float | None = field(default=None, init=False)
    _answering_since: float | None = field(default=None, init=False)

    def observe(self, now: float, outstanding: int) -> None:
        """The producer has ``outstanding`` outputs unacknowledged at ``now``. The first call
        starts the watch; a lower count than last time is progress."""
        if self._outstanding is None or outstanding < self._outstanding:
            self._progress_at = now
            self._answering_since = None
            self._probed_at = None
        self._outstanding = outstanding

    def wants_probe(self, now: float) -> bool:
        """Whether to ask the broker now (quiet for ``quiet_s``, last probe long enough ago)."""
        if self._outstanding is None or self._outstanding == 0:
            return False
        if now - self._progress_at < self.quiet_s:
            return False
        return self._probed_at is None or now - self._probed_at >= self.probe_every_s

    def probed(self, now: float, answered: bool) -> None:
        """Outcome of a probe sent at ``now``: did the broker answer?"""
        self._probed_at = now
        if not answered:
            self._answering_since = None
        elif self._answering_since is None:
            self._answering_since = now

    def quiet_for(self, now: float) -> float:
        """Seconds since the last acknowledgement (or since the watch started)."""
        return now - self._progress_at

    def answering_for(self, now: float) -> float | None:
        """Seconds the broker has answered every probe since the last acknowledgement (None if
        not asked yet, or if the last probe went unanswered)."""
        if self._answering_since is None:
            return None
        return round(now - self._answering_since, 1)

    def stuck(self, now: float) -> bool:
        """The broker has answered every probe for ``stuck_s`` and nothing was acknowledged."""
        return (
            self._outstanding is not None
            and self._outstanding > 0
            and self._answering_since is not None
            and now - self._answering_since >= self.stuck_s
        )


#: After its partitions were lost, a consumer that has not rejoined while the broker answered
#: throughout this long is wedged (a healthy one rejoins within a session timeout or two).
REJOIN_S = 30.0
#: At most one "does the broker answer?" probe per this many seconds while waiting to rejoin.
REJOIN_PROBE_EVERY_S = 5.0


@dataclass
class RejoinWatch:
    """Tell a consumer that is rejoining its group from one that never will.

    When a consumer's session times out (the broker was frozen or unreachable for longer than
    ``session.timeout.ms``) its partitions are lost and it rejoins: the next assignment, maybe
    empty, comes within seconds of the broker answering again. librdkafka can instead stay in
    join state ``wait-incr-unassign-to-complete`` for good, counting offset commits that were in
    flight when the coordinator went away as still pending: no partition, no rejoin, and
    ``close`` waits for those commits without end, while the loop turns and looks healthy. The
    cure is a fresh consumer.

    The caller reports the loss (:meth:`lost`) and any assignment (:meth:`rejoined`), and the
    outcome of a cheap request to the broker when the watch asks for one (:meth:`wants_probe`,
    :meth:`probed`). The consumer is wedged once the broker has answered every probe for
    ``rejoin_s`` while no assignment came since the loss. An unanswered probe starts the count
    again: a broker that is away is waited for, however long.

    Pure: times are passed in.
    """

    rejoin_s: float = REJOIN_S
    probe_every_s: float = REJOIN_PROBE_EVERY_S
    _lost_at: float | None = field(default=None, init=False)
    _probed_at: float | None = field(default=None, init=False)
    _answering_since: float | None = field(default=None, init=False)

    def lost(self, now: float) -> None:
        """The consumer's partitions were lost at ``now`` (a later loss does not restart it)."""
        if self._lost_at is None:
            self._lost_at = now

    def rejoined(self) -> None:
        """An assignment came (the consumer is in the group again): stop watching."""
        self._lost_at = self._probed_at = self._answering_since = None

    @property
    def watching(self) -> bool:
        return self._lost_at is not None

    def waiting_for(self, now: float) -> float:
        """Seconds since the loss (0 when not watching)."""
        return 0.0 if self._lost_at is None else now - self._lost_at

    def wants_probe(self, now: float) -> bool:
        return self._lost_at is not None and (
            self._probed_at is None or now - self._probed_at >= self.probe_every_s
        )

    def probed(self, now: float, answered: bool) -> None:
        """Outcome of a probe sent at ``now``: did the broker answer?"""
        self._probed_at = now
        if not answered:
            self._answering_since = None
        elif self._answering_since is None:
            self._answering_since = now

    def wedged(self, now: float) -> bool:
        """No assignment since the loss although the broker answered for ``rejoin_s``."""
        return (
            self._lost_at is not None
            and self._answering_since is not None
            and now - self._answering_since >= self.rejoin_s
        )


#: An assigned partition that librdkafka has not been fetching for this long fails liveness.
FETCH_STALL_S = 60.0


class FetchWatch:
    """Assigned partitions that the client is not fetching, from librdkafka's statistics.

    A partition the application holds (``desired``) normally sits in fetch state ``active``;
    it leaves it only briefly (an offset lookup, a seek, a leader change). One that stays out of
    it for ``stall_after_s`` is stalled: the loop turns and looks healthy but that partition's
    events are never read. Restarting the process is the known cure, so it fails liveness.
    """

    def __init__(self, stall_after_s: float = FETCH_STALL_S) -> None:
        self.stall_after_s = stall_after_s
        self._since: dict[tuple[str, int], float] = {}
        self.states: dict[tuple[str, int], str] = {}

    def observe(self, stats: dict[str, Any], now: float) -> list[tuple[str, int]]:
        """Feed one statistics object; return the stalled partitions, sorted."""
        states = {}
        for name, topic in stats.get("topics", {}).items():
            for p in topic.get("partitions", {}).values():
                number = p.get("partition", -1)
                if number < 0 or not p.get("desired", False):
                    continue
                state = p.get("fetch_state", "")
                if state != "active":
                    states[(name, number)] = state
        self.states = states
        self._since = {tp: self._since.get(tp, now) for tp in states}
        return sorted(tp for tp, t in self._since.items() if now - t >= self.stall_after_s)

    def update(self, stats: dict[str, Any], health: Health, gauge: Any, log: Any) -> None:
        """Feed one statistics object and report: ``health`` (liveness), ``gauge`` and, when a
        stall starts, one ``fetch_stalled`` error line."""
        stalled = self.observe(stats, time.monotonic())
        if stalled and not health.fetch_stalled:
            log.error(
                "fetch_stalled",
                partitions=[f"{t}/{p}" for t, p in stalled],
                fetch_states=sorted({self.states[tp] for tp in stalled}),
                stalled_for_s=self.stall_after_s,
            )
        health.fetch_stalled = len(stalled)
        gauge.set(len(stalled))
