"""Restoring sessions partition by partition (worker.kafka.changelog.ChangelogRestorer).

A partition whose changelog has not caught up with the group's committed offset (its previous
owner's last transaction is still open, or its commit markers are on the way) is restored only
once it has; the others are handed back meanwhile, so the worker answers them.
"""

from __future__ import annotations

from typing import Any

import pytest

from worker.config import KafkaSettings
from worker.core.errors import BrokerError
from worker.core.session import Session
from worker.kafka.changelog import CHECKPOINT_KEY, ChangelogRestorer, checkpoint_value
from worker.testing import FakeBroker, FakeClock, FakeConsumer, RecordingLog
from worker.wire.session_codec import encode_session

TOPIC = "group.sessions-changelog"


def session(n_events: int) -> Session:
    s = Session(session_id="s", start_ms=1000, last_ms=1000 + n_events)
    for i in range(n_events):
        s.codes.append(i * 4)
        s.times_ms.append(1000 + i)
    s.n_events = n_events
    return s


def write_user(broker: FakeBroker, partition: int, user: str, n_events: int | None) -> None:
    value = None if n_events is None else encode_session(session(n_events), lambda i: f"p{i}")
    broker.add(TOPIC, partition, user.encode(), value)


def write_checkpoint(broker: FakeBroker, partition: int, next_offset: int) -> None:
    broker.add(TOPIC, partition, CHECKPOINT_KEY, checkpoint_value(next_offset))


def restorer(broker: FakeBroker, clock: FakeClock, timeout_s: float = 120.0) -> ChangelogRestorer:
    def factory(settings: Any, group_id: str, log: Any, **config: Any) -> FakeConsumer:
        return FakeConsumer(broker, group_id, config, clock=clock)

    return ChangelogRestorer(
        KafkaSettings("fake:9092"), TOPIC, RecordingLog(), factory, timeout_s=timeout_s, clock=clock
    )


def index_of(product_id: str) -> int:
    return int(product_id.removeprefix("p"))


def test_a_partition_behind_its_committed_offset_holds_back_only_itself():
    broker, clock, log = FakeBroker(partitions=2), FakeClock(), RecordingLog()
    write_user(broker, 0, "ann", 3)
    write_checkpoint(broker, 0, 40)
    write_user(broker, 1, "bob", 2)
    write_checkpoint(broker, 1, 10)  # the group committed 25: the last batch is not readable
    r = restorer(broker, clock)
    r.begin([0, 1], committed={0: 40, 1: 25})

    done = r.step(index_of, log, budget_s=0.5)
    assert list(done) == [0] and set(done[0]) == {"ann"}
    assert done[0]["ann"].items == [0, 1, 2]
    assert r.restoring == {1}
    assert r.step(index_of, log, budget_s=0.5) == {}  # still behind

    write_user(broker, 1, "bob", 4)  # the previous owner's last transaction becomes readable
    write_user(broker, 1, "cyd", None)  # a tombstone: cyd was forgotten
    write_checkpoint(broker, 1, 25)
    done = r.step(index_of, log, budget_s=0.5)
    assert list(done) == [1] and set(done[1]) == {"bob"} and done[1]["bob"].n_events == 4
    assert r.restoring == set()


def test_without_committed_offsets_a_partition_is_restored_at_its_end():
    broker, clock, log = FakeBroker(partitions=2), FakeClock(), RecordingLog()
    write_user(broker, 0, "ann", 1)
    write_user(broker, 0, "ann", None)
    r = restorer(broker, clock)
    r.begin([0, 1])
    done = r.step(index_of, log, budget_s=0.5)
    assert done == {0: {}, 1: {}}


def test_a_cancelled_partition_is_neither_returned_nor_read_further():
    broker, clock, log = FakeBroker(partitions=2), FakeClock(), RecordingLog()
    write_user(broker, 0, "ann", 1)
    write_user(broker, 1, "bob", 1)
    r = restorer(broker, clock)
    r.begin([0, 1], committed={0: -1, 1: 99})
    r.cancel([1])
    assert r.restoring == {0}
    assert set(r.step(index_of, log, budget_s=0.5)) == {0}
    r.begin([1], committed={1: -1})  # gained again later: read from the beginning
    assert set(r.step(index_of, log, budget_s=0.5)[1]) == {"bob"}


def test_a_partition_that_never_catches_up_fails_after_the_timeout():
    broker, clock, log = FakeBroker(partitions=2), FakeClock(), RecordingLog()
    write_checkpoint(broker, 1, 3)
    r = restorer(broker, clock, timeout_s=30.0)
    r.begin([0, 1], committed={0: -1, 1: 8})
    assert set(r.step(index_of, log, budget_s=0.5)) == {0}
    clock.advance(31.0)
    with pytest.raises(BrokerError, match=r"partitions \[1\] took over 30 s"):
        r.step(index_of, log, budget_s=0.5)


def test_restore_at_once_installs_every_named_partition_and_cancels_the_rest():
    from worker.core.session import SessionStore

    broker, clock, log = FakeBroker(partitions=3), FakeClock(), RecordingLog()
    for p, user in enumerate(["ann", "bob", "cyd"]):
        write_user(broker, p, user, p + 1)
    r = restorer(broker, clock)
    r.begin([2], committed={2: 50})  # under way, and never catching up
    store = SessionStore()
    assert r.restore([0, 1], store, index_of, log) == 2
    assert sorted(store.users()) == ["ann", "bob"]
    assert r.restoring == set()
    (line,) = log.fields("sessions_restored")
    assert line["partitions"] == [0, 1] and line["sessions"] == 2
