"""The harness's input feeder against a fake producer that never serves one partition while it
serves the others (librdkafka #5430), and against a broker that does not answer at all."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from hypothesis import given, settings
from hypothesis import strategies as st

from devtools.input_feeder import InputFeeder, InputFeederError
from worker.kafka.watches import AckWatch


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Msg:
    def __init__(self, key: bytes, value: bytes) -> None:
        self._key, self._value = key, value

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value


class FakeBroker:
    """What reached the topic, in order, and whether the broker answers."""

    def __init__(self) -> None:
        self.log: list[tuple[bytes, bytes]] = []
        self.answers = True
        self.producers: list[FakeProducer] = []
        self.deliver_every = 1  # serve the queue on every n-th poll only (a linger)

    def producer(self, stuck_keys: set[bytes]) -> Any:
        def make(config: dict[str, Any]) -> FakeProducer:
            # Only the first producer has the stuck partition: a fresh one finds its leader.
            p = FakeProducer(self, stuck_keys if not self.producers else set())
            self.producers.append(p)
            return p

        return make


class FakeProducer:
    def __init__(self, broker: FakeBroker, stuck_keys: set[bytes]) -> None:
        self.broker, self.stuck_keys = broker, stuck_keys
        self.queued: list[tuple[bytes, bytes, Any]] = []
        self.polls = 0

    def produce(self, topic: str, key: bytes, value: bytes, on_delivery: Any) -> None:
        self.queued.append((key, value, on_delivery))

    def poll(self, timeout: float = 0) -> int:
        self.polls += 1
        if not self.broker.answers or self.polls % self.broker.deliver_every:
            return 0
        keep = []
        for key, value, cb in self.queued:
            if key in self.stuck_keys:
                keep.append((key, value, cb))
            else:
                self.broker.log.append((key, value))
                cb(None, _Msg(key, value))
        self.queued = keep
        return 0

    def flush(self, timeout: float = 0) -> int:
        self.polls = -1
        self.poll()
        return len(self.queued)

    def purge(self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True) -> None:
        purged, self.queued = self.queued, []
        for key, value, cb in purged:
            cb(KafkaError(KafkaError._PURGE_QUEUE), _Msg(key, value))

    def list_topics(self, topic: str, timeout: float) -> None:
        if not self.broker.answers:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))

    def __len__(self) -> int:
        return len(self.queued)


def _feeder(broker: FakeBroker, clock: Clock, stuck: set[bytes]) -> InputFeeder:
    return InputFeeder({}, "t", clock=clock, producer=broker.producer(stuck))


def _per_key(log: list[tuple[bytes, bytes]]) -> dict[bytes, list[int]]:
    out: dict[bytes, list[int]] = {}
    for key, value in log:
        out.setdefault(key, []).append(int(value))
    return out


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(st.sampled_from([b"a", b"b", b"c", b"d"]), min_size=1, max_size=200),
    stuck=st.sets(st.sampled_from([b"a", b"b", b"c", b"d"]), max_size=3),
    step_s=st.floats(0.05, 1.0),
)
def test_every_message_arrives_once_in_key_order_though_a_partition_is_never_served(
    keys, stuck, step_s
):
    broker, clock = FakeBroker(), Clock()
    feeder = _feeder(broker, clock, set(stuck))
    for i, key in enumerate(keys):
        clock.now += step_s
        feeder.send(key, str(i).encode())
    while feeder.unacknowledged and clock.now < 10_000:
        clock.now += 0.5
        feeder.check()
    assert feeder.unacknowledged == 0
    expected = _per_key([(k, str(i).encode()) for i, k in enumerate(keys)])
    assert _per_key(broker.log) == expected  # each exactly once, in its key's order
    assert (feeder.replaced > 0) == bool(stuck & set(keys))
    assert len(broker.producers) == 1 + feeder.replaced


def test_traffic_on_healthy_partitions_does_not_hide_a_stuck_one():
    """One message of 1,000 is stuck while the other 999 are acknowledged in batches as they
    go (so the count of unacknowledged messages keeps falling): the feeder replaces its producer
    about quiet_s + stuck_s after that message, not never."""
    broker, clock = FakeBroker(), Clock()
    broker.deliver_every = 5
    feeder = _feeder(broker, clock, {b"stuck"})
    watch = AckWatch()
    feeder.send(b"stuck", b"0")
    replaced_at = None
    for i in range(1, 1000):
        clock.now += 0.05
        feeder.send(b"ok", str(i).encode())
        if feeder.replaced and replaced_at is None:
            replaced_at = clock.now
    assert replaced_at is not None
    assert watch.quiet_s + watch.stuck_s <= replaced_at <= watch.quiet_s + watch.stuck_s + 3
    assert 1 <= feeder.resent <= broker.deliver_every  # the stuck one and any still lingering
    feeder.close()
    assert _per_key(broker.log) == {b"stuck": [0], b"ok": list(range(1, 1000))}


def test_a_broker_that_does_not_answer_is_waited_for_not_replaced():
    broker, clock = FakeBroker(), Clock()
    broker.answers = False
    feeder = _feeder(broker, clock, set())
    for i in range(100):
        feeder.send(b"k", str(i).encode())
    for _ in range(600):  # 5 minutes of a frozen broker
        clock.now += 0.5
        feeder.check()
    assert feeder.replaced == 0 and feeder.unacknowledged == 100
    broker.answers = True  # thawed
    clock.now += 0.5
    feeder.check()
    assert feeder.unacknowledged == 0
    assert _per_key(broker.log)[b"k"] == list(range(100))


def test_a_message_that_fails_for_good_is_raised_not_dropped():
    broker, clock = FakeBroker(), Clock()
    feeder = _feeder(broker, clock, set())
    producer = broker.producers[0]
    producer.produce = lambda topic, key, value, on_delivery: on_delivery(  # type: ignore[method-assign]
        KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), _Msg(key, value)
    )
    with pytest.raises(InputFeederError, match="MSG_SIZE_TOO_LARGE"):
        feeder.send(b"k", b"v")


# -- the settle policy, against the librdkafka-like fakes of worker.testing ---------------------


def _feeder_over_fakes(n_stuck: int = 1):
    """A feeder whose first ``n_stuck`` producers never send what they have queued."""
    from worker.testing import FakeBroker as Broker
    from worker.testing import FakeClock
    from worker.testing import FakeProducer as Producer

    broker, clock, made = Broker(), FakeClock(), []

    def producer(config: dict[str, Any]) -> Producer:
        p = Producer(broker, config, clock=clock)
        p.stuck = len(made) < n_stuck
        made.append(p)
        return p

    return InputFeeder({}, "t", clock=clock, producer=producer), broker, clock, made


def _settle_in_flight_once_purged(producer: Any) -> None:
    """Keep ``producer``'s in-flight messages unanswered until it has been purged."""
    producer.settle_in_flight = False

    def hook() -> None:
        producer.settle_in_flight = any(c.startswith("purge") for c in producer.calls)
        producer.during_flush.append(hook)

    producer.during_flush.append(hook)


def test_in_flight_messages_settle_before_the_purged_ones_are_resent_after_them():
    feeder, broker, clock, made = _feeder_over_fakes()
    for i in range(10):
        feeder.send(b"k", str(i).encode())
    made[0].send_in_flight(3)
    _settle_in_flight_once_purged(made[0])
    while not feeder.replaced and clock.now < 2000:
        clock.advance(0.5)
        feeder.check()
    feeder.close(60)
    assert [m.value() for m in broker.messages("t")] == [str(i).encode() for i in range(10)]
    assert feeder.replaced == 1 and feeder.resent == 7
    assert "purge(in_queue=True, in_flight=False)" in made[0].calls


def test_in_flight_messages_that_do_not_settle_raise_instead_of_being_resent():
    feeder, broker, clock, made = _feeder_over_fakes()
    for i in range(10):
        feeder.send(b"k", str(i).encode())
    made[0].send_in_flight(3)
    made[0].settle_in_flight = False  # never answered
    with pytest.raises(InputFeederError, match="3 in-flight outputs not settled 60 s"):
        while clock.now < 5000:
            clock.advance(0.5)
            feeder.check()
    assert len(made) == 1 and broker.messages("t") == []  # nothing re-sent, nothing duplicated


def test_an_in_flight_message_that_fails_while_settling_raises_instead_of_resending():
    feeder, broker, clock, made = _feeder_over_fakes()
    for i in range(10):
        feeder.send(b"k", str(i).encode())
    made[0].send_in_flight(3)
    made[0].fail_topics["t"] = KafkaError._MSG_TIMED_OUT  # what is in flight fails
    _settle_in_flight_once_purged(made[0])
    with pytest.raises(InputFeederError, match="in-flight output failed.*_MSG_TIMED_OUT"):
        while clock.now < 5000:
            clock.advance(0.5)
            feeder.check()
    assert len(made) == 1 and broker.messages("t") == []
