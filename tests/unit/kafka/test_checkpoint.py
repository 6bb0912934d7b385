"""The commit protocol, step by step, against the fake clients of ``worker.testing``:

1. produce every output (waiting while the producer's queue is full),
2. flush: wait for the broker however long it is away; a producer stuck while the broker answers
   has its queued outputs re-sent through a fresh one (at-least-once) or its transaction
   abandoned (exactly-once),
3. verify: a failed output raises DeliveryError and nothing is stored,
4. store the offsets, only after every output was acknowledged.

Time is a fake clock that the fake producer advances while a flush waits, so the real
thresholds (10 s quiet, 10 s stuck, 30 s to settle, 20 s for a transaction call) pass in
milliseconds.
"""

from __future__ import annotations

import threading

import pytest
from confluent_kafka import KafkaError, KafkaException

from worker.kafka import checkpoint as checkpoint_module
from worker.kafka.checkpoint import (
    SETTLE_REPORT_S,
    TXN_STUCK_S,
    TXN_TIMEOUT_S,
    WAIT_LOG_EVERY_S,
    Checkpoint,
    DeliveryError,
    SettleTimeout,
    TransactionAbandonedError,
    TransactionalCheckpoint,
)
from worker.kafka.resend import Output
from worker.kafka.watches import ACK_QUIET_S, ACK_STUCK_S
from worker.testing import FakeBroker, FakeClock, FakeConsumer, FakeProducer

IN = "events"


class Log:
    """A structlog-style logger that keeps (event, fields) and the fake time of each line."""

    def __init__(self, clock: FakeClock) -> None:
        self.lines: list[tuple[str, dict]] = []
        self.times: list[float] = []
        self._clock = clock

    def _record(self, event: str, **fields) -> None:
        self.lines.append((event, fields))
        self.times.append(self._clock.now)

    info = warning = error = debug = _record

    def events(self) -> list[str]:
        return [e for e, _ in self.lines]

    def fields(self, event: str) -> list[dict]:
        return [f for e, f in self.lines if e == event]


def every_flush(producer: FakeProducer, action) -> None:
    """Run ``action(producer)`` at the start of every flush of ``producer``."""

    def hook() -> None:
        action(producer)
        producer.during_flush.append(hook)

    producer.during_flush.append(hook)


class Rig:
    """A broker, a clock, a consumer owning partitions 0-2 of the input, and producers made on
    demand (``stuck`` makes the first ``stuck`` of them stuck)."""

    def __init__(self, *, stuck: int = 0, transactional: bool = False) -> None:
        self.broker = FakeBroker(partitions=3)
        self.clock = FakeClock()
        self.log = Log(self.clock)
        self.consumer = FakeConsumer(
            self.broker, "g", {"enable.auto.commit": not transactional}, clock=self.clock
        )
        self.consumer.rebalance_now("assign", [(IN, 0), (IN, 1), (IN, 2)])
        self.producers: list[FakeProducer] = []
        self.stuck_reports: list[tuple[float, str | None]] = []
        self.waits = 0
        self.setup_producer = lambda producer: None  # applied to every producer made
        self._stuck = stuck
        self._config = {"transactional.id": "txn-1"} if transactional else {}

    def new_producer(self) -> FakeProducer:
        producer = FakeProducer(self.broker, self._config, clock=self.clock)
        producer.stuck = len(self.producers) < self._stuck
        self.producers.append(producer)
        self.setup_producer(producer)
        return producer

    def on_wait(self, _waited_s: float) -> None:
        self.waits += 1

    def on_stuck(self, reason: str | None) -> None:
        self.stuck_reports.append((self.clock.now, reason))

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(
            self.new_producer(),
            self.consumer,
            on_wait=self.on_wait,
            on_stuck=self.on_stuck,
            replacement=self.new_producer,
            log=self.log,
            clock=self.clock,
        )

    def transactional(self, **kwargs) -> TransactionalCheckpoint:
        return TransactionalCheckpoint(
            self.new_producer,
            self.consumer,
            on_wait=self.on_wait,
            log=self.log,
            clock=self.clock,
            **kwargs,
        )


def outputs(n: int, topic: str = "out") -> list[Output]:
    """``n`` outputs of one key, each with its own header and timestamp."""
    return [
        Output(topic, b"k", str(i).encode(), [("n", str(i).encode())], 1_000 + i) for i in range(n)
    ]


def written(broker: FakeBroker, topic: str = "out") -> list[tuple[bytes, list, int]]:
    return [(m.value(), m.headers(), m.timestamp()[1]) for m in broker.messages(topic)]


def expected(n: int) -> list[tuple[bytes, list, int]]:
    return [(str(i).encode(), [("n", str(i).encode())], 1_000 + i) for i in range(n)]


# -- step 1: produce ---------------------------------------------------------------------------


def test_step1_produce_waits_for_room_when_the_queue_is_full_and_keeps_the_order():
    rig = Rig()
    checkpoint = Checkpoint(
        FakeProducer(rig.broker, clock=rig.clock, queue_limit=3), rig.consumer, clock=rig.clock
    )
    checkpoint.send_all(outputs(10))  # BufferError at the 4th: poll serves reports, then retry
    checkpoint.complete({(IN, 0): 10})
    assert written(rig.broker) == expected(10)
    assert rig.consumer.stored == {(IN, 0): 10}


# -- step 2: flush -----------------------------------------------------------------------------


def test_step2_a_broker_that_does_not_answer_is_waited_out_without_replacing_the_producer():
    rig = Rig()
    checkpoint = rig.checkpoint()
    checkpoint.send_all(outputs(5))
    rig.broker.answers = False

    def thaw_after_five_minutes(producer: FakeProducer) -> None:
        if rig.clock.now >= 1000.0 + 300:
            rig.broker.answers = True

    every_flush(rig.producers[0], thaw_after_five_minutes)
    checkpoint.complete({(IN, 0): 5})

    assert written(rig.broker) == expected(5)
    assert checkpoint.replaced == 0 and len(rig.producers) == 1
    assert rig.stuck_reports == []  # an outage is not a stuck producer
    assert rig.waits >= 299  # liveness reported every flush slice (1 s) while waiting
    waits = rig.log.fields("waiting_for_broker")
    assert len(waits) == pytest.approx(300 / WAIT_LOG_EVERY_S, abs=1)
    assert waits[0]["unacknowledged"] == 5 and waits[0]["broker_answering_s"] is None
    assert rig.consumer.stored == {(IN, 0): 5}


# -- step 3: verify ----------------------------------------------------------------------------


def test_step3_a_failed_output_raises_delivery_error_and_stores_no_offset():
    rig = Rig()
    checkpoint = rig.checkpoint()
    rig.producers[0].fail_topics["dlq"] = KafkaError.MSG_SIZE_TOO_LARGE
    checkpoint.send_all(outputs(3) + [Output("dlq", b"k", b"big")] + outputs(2, "other"))
    with pytest.raises(DeliveryError, match=r"1 outputs failed.*dlq: MSG_SIZE_TOO_LARGE"):
        checkpoint.complete({(IN, 0): 6, (IN, 1): 3})
    assert rig.consumer.stored == {}
    assert ("store_offsets", [(IN, 0, 6), (IN, 1, 3)]) not in rig.consumer.calls
    # The failure is reported once: the next batch starts clean.
    checkpoint.send_all(outputs(1, "next"))
    checkpoint.complete({(IN, 0): 7})
    assert rig.consumer.stored == {(IN, 0): 7}


# -- step 4: store -----------------------------------------------------------------------------


def test_step4_offsets_are_stored_only_once_every_output_is_acknowledged():
    rig = Rig()
    checkpoint = rig.checkpoint()
    producer = rig.producers[0]
    seen_at_store: list[int] = []
    store = rig.consumer.store_offsets

    def store_offsets(message=None, offsets=None):
        seen_at_store.append(len(rig.broker.messages("out")))
        assert not producer.queued and not producer.in_flight
        store(message, offsets)

    rig.consumer.store_offsets = store_offsets  # type: ignore[method-assign]
    checkpoint.send_all(outputs(20))
    producer.send_in_flight(5)
    producer.settle_in_flight = False
    every_flush(producer, lambda p: setattr(p, "settle_in_flight", rig.clock.now >= 1003))
    checkpoint.complete({(IN, 0): 15, (IN, 2): 5})
    assert seen_at_store == [20]
    assert rig.consumer.stored == {(IN, 0): 15, (IN, 2): 5}


def test_step4_partitions_lost_while_the_batch_waited_keep_their_offsets_unstored():
    rig = Rig()
    checkpoint = rig.checkpoint()
    rig.producers[0].during_flush.append(lambda: rig.consumer.take_away([(IN, 1)]))
    checkpoint.send_all(outputs(3))
    checkpoint.complete({(IN, 0): 7, (IN, 1): 9})
    # librdkafka stores what it still owns and says nothing about the rest.
    assert rig.consumer.stored == {(IN, 0): 7}
    assert "offsets_not_stored" not in rig.log.events()

    rig.producers[0].during_flush.append(lambda: rig.consumer.take_away([(IN, 0), (IN, 2)]))
    checkpoint.send_all(outputs(1, "next"))
    checkpoint.complete({(IN, 0): 8, (IN, 2): 1})  # none owned any more: not raised, logged
    (warning,) = rig.log.fields("offsets_not_stored")
    assert "_STATE" in warning["error"]
    assert rig.consumer.stored == {}


# -- overlapped: a batch's steps 2-4 wait until the next batch is computed -----------------------


def test_overlapped_a_deferred_batch_is_stored_by_the_next_settle_once_acknowledged():
    rig = Rig()
    checkpoint = rig.checkpoint()
    producer = rig.producers[0]
    assert checkpoint.settle() == [] and not checkpoint.deferred  # nothing deferred: no wait
    checkpoint.send_all(outputs(4))
    checkpoint.defer({(IN, 0): 4}, token="first")
    assert checkpoint.deferred
    assert rig.consumer.stored == {} and len(producer.queued) == 4  # nothing waited for yet
    with pytest.raises(RuntimeError, match="settle first"):
        checkpoint.defer({(IN, 0): 5})
    # The next batch is computed meanwhile; before its outputs go out, the first is settled.
    producer.send_in_flight()
    producer.settle_in_flight = False
    every_flush(producer, lambda p: setattr(p, "settle_in_flight", rig.clock.now >= 1002))
    assert checkpoint.settle() == ["first"]
    assert written(rig.broker) == expected(4) and rig.consumer.stored == {(IN, 0): 4}
    assert not checkpoint.deferred and rig.clock.now >= 1002


def test_overlapped_a_failed_output_of_the_deferred_batch_stores_nothing():
    rig = Rig()
    checkpoint = rig.checkpoint()
    rig.producers[0].fail_topics["dlq"] = KafkaError.MSG_SIZE_TOO_LARGE
    checkpoint.send_all(outputs(2) + [Output("dlq", b"k", b"big")])
    checkpoint.defer({(IN, 0): 3, (IN, 1): 1}, token="t")
    with pytest.raises(DeliveryError, match="dlq: MSG_SIZE_TOO_LARGE"):
        checkpoint.settle()
    assert rig.consumer.stored == {} and not checkpoint.deferred


def test_overlapped_a_bounded_settle_gives_the_batch_up_unstored_when_the_broker_stays_away():
    rig = Rig()
    checkpoint = rig.checkpoint()
    checkpoint.send_all(outputs(3))
    checkpoint.defer({(IN, 0): 3}, token="t")
    rig.broker.answers = False
    with pytest.raises(SettleTimeout, match="3 outputs unacknowledged"):
        checkpoint.settle(within_s=5.0)
    assert rig.consumer.stored == {} and not checkpoint.deferred
    assert 1005.0 <= rig.clock.now <= 1007.0
    # The bound was for that call only: the next batch waits the broker out.
    checkpoint.send_all(outputs(1, "next"))
    checkpoint.defer({(IN, 0): 4})

    def thaw(producer: FakeProducer) -> None:
        if rig.clock.now >= 1060:
            rig.broker.answers = True

    every_flush(rig.producers[0], thaw)
    checkpoint.settle()
    assert rig.consumer.stored == {(IN, 0): 4}


def test_overlapped_a_stuck_producer_is_cured_while_settling_the_deferred_batch():
    rig = Rig(stuck=1)
    checkpoint = rig.checkpoint()
    checkpoint.send_all(outputs(6))
    checkpoint.defer({(IN, 0): 6}, token="t")
    assert checkpoint.settle() == ["t"]
    assert checkpoint.replaced == 1 and written(rig.broker) == expected(6)
    assert rig.consumer.stored == {(IN, 0): 6}


def test_commit_stored_tolerates_nothing_to_commit_and_commits_the_rest():
    rig = Rig()
    checkpoint = rig.checkpoint()
    checkpoint.commit_stored()  # _NO_OFFSET: nothing stored yet
    checkpoint.send_all(outputs(1))
    checkpoint.complete({(IN, 2): 4})
    checkpoint.commit_stored()
    assert rig.broker.committed["g"] == {(IN, 2): 4}


def test_a_commit_refused_because_the_partitions_were_lost_is_logged_not_raised():
    """A member whose session expired (a frozen process) commits on its way out of the
    assignment: the group refuses; that is not a failure of the process."""
    rig = Rig()
    checkpoint = rig.checkpoint()
    checkpoint.send_all(outputs(1))
    checkpoint.complete({(IN, 2): 4})

    def refused(*_args, **_kwargs):
        raise KafkaException(KafkaError(KafkaError._ASSIGNMENT_LOST, "assignment lost"))

    rig.consumer.commit = refused  # type: ignore[method-assign]
    checkpoint.commit_stored()
    (warning,) = rig.log.fields("offsets_not_committed")
    assert "assignment lost" in warning["error"]

    def broken(*_args, **_kwargs):
        raise KafkaException(KafkaError(KafkaError._TRANSPORT, "broker away"))

    rig.consumer.commit = broken  # type: ignore[method-assign]
    with pytest.raises(KafkaException, match="broker away"):
        checkpoint.commit_stored()


# -- step 2, at-least-once: a stuck producer -----------------------------------------------------


def test_stuck_producer_queued_outputs_are_resent_in_order_with_headers_and_timestamps():
    """The first producer never sends what it has queued (librdkafka #5430) though the broker
    answers; 4 outputs were in flight and settle late. After quiet + stuck seconds the queued
    ones are purged, the in-flight ones settle first, and the purged ones are re-sent, in order
    and unchanged, through a fresh producer."""
    rig = Rig(stuck=1)
    checkpoint = rig.checkpoint()
    stuck = rig.producers[0]
    checkpoint.send_all(outputs(30))
    stuck.send_in_flight(4)
    stuck.settle_in_flight = False
    every_flush(stuck, lambda p: setattr(p, "settle_in_flight", "purge" in str(p.calls)))
    checkpoint.complete({(IN, 0): 30})

    assert written(rig.broker) == expected(30)  # once each, in order, as they were
    assert checkpoint.replaced == 1 and len(rig.producers) == 2
    assert "purge(in_queue=True, in_flight=False)" in stuck.calls
    (replaced,) = rig.log.fields("producer_replaced")
    assert replaced["resent"] == 26 and replaced["cause"] == "stuck producer"
    assert "30 outputs unacknowledged" in replaced["reason"]  # 4 in flight, 26 queued
    replaced_at = rig.log.times[rig.log.events().index("producer_replaced")]
    assert ACK_QUIET_S + ACK_STUCK_S <= replaced_at - 1000.0 <= ACK_QUIET_S + ACK_STUCK_S + 4
    assert rig.stuck_reports == []
    assert rig.consumer.stored == {(IN, 0): 30}


def test_a_second_stuck_producer_is_reported_and_its_outputs_kept_until_acknowledged():
    rig = Rig(stuck=2)
    unstick_at = 1000.0 + 120
    rig.setup_producer = lambda producer: every_flush(
        producer, lambda p: setattr(p, "stuck", rig.clock.now < unstick_at)
    )
    checkpoint = rig.checkpoint()
    checkpoint.send_all(outputs(8))
    checkpoint.complete({(IN, 1): 8})

    assert checkpoint.replaced == 1  # once per batch: the second stuck producer is reported
    (stuck_at, reason), (cleared_at, cleared) = rig.stuck_reports
    assert "while the broker answers" in reason
    assert stuck_at < unstick_at <= cleared_at and cleared is None
    assert rig.log.events().count("outputs_stuck") == 1
    assert written(rig.broker) == expected(8)
    assert rig.consumer.stored == {(IN, 1): 8}


def test_in_flight_outputs_that_do_not_settle_are_reported_and_waited_for():
    rig = Rig(stuck=1)
    checkpoint = rig.checkpoint()
    checkpoint.send_all(outputs(6))
    stuck = rig.producers[0]
    stuck.send_in_flight(2)
    stuck.settle_in_flight = False
    purged_at: list[float] = []

    def settle_late(p: FakeProducer) -> None:
        if "purge" in str(p.calls) and not purged_at:
            purged_at.append(rig.clock.now)
        p.settle_in_flight = bool(purged_at) and rig.clock.now >= purged_at[0] + 45

    every_flush(stuck, settle_late)
    checkpoint.complete({(IN, 0): 6})

    (reported_at, reason), (cleared_at, cleared) = rig.stuck_reports
    assert "2 in-flight outputs not settled" in reason
    assert SETTLE_REPORT_S <= reported_at - purged_at[0] <= SETTLE_REPORT_S + 2
    assert cleared is None and cleared_at >= purged_at[0] + 45
    assert written(rig.broker) == expected(6)


# -- exactly-once --------------------------------------------------------------------------------


def test_a_transaction_makes_outputs_and_input_offsets_visible_together():
    rig = Rig(transactional=True)
    checkpoint = rig.transactional()
    checkpoint.send_all(outputs(4))
    assert rig.broker.messages("out") == []  # nothing visible before the commit
    checkpoint.complete({(IN, 0): 4, (IN, 2): 9})
    assert written(rig.broker) == expected(4)
    assert rig.broker.committed["g"] == {(IN, 0): 4, (IN, 2): 9}
    assert rig.producers[0].calls[:2] == ["init_transactions", "begin_transaction"]
    assert rig.consumer.stored == {}  # offsets travel in the transaction, never stored


def test_an_abortable_commit_error_aborts_the_transaction_and_the_next_batch_is_clean():
    rig = Rig(transactional=True)
    checkpoint = rig.transactional()
    producer = rig.producers[0]
    producer.txn_errors["commit_transaction"] = KafkaError(
        KafkaError._STATE, "coordinator moved", txn_requires_abort=True
    )
    checkpoint.send_all(outputs(3))
    with pytest.raises(TransactionAbandonedError, match="transaction aborted"):
        checkpoint.complete({(IN, 0): 3})
    assert "abort_transaction" in producer.calls
    assert rig.broker.messages("out") == [] and "g" not in rig.broker.committed

    # Redone: the aborted outputs' purge reports are not failures of this batch.
    checkpoint.send_all(outputs(3))
    checkpoint.complete({(IN, 0): 3})
    assert written(rig.broker) == expected(3)
    assert rig.broker.committed["g"] == {(IN, 0): 3}
    assert checkpoint.replaced == 0


def test_stuck_outputs_abandon_the_transaction_and_a_fresh_producer_fences_the_old_one():
    rig = Rig(stuck=1, transactional=True)
    checkpoint = rig.transactional()
    checkpoint.send_all(outputs(5))
    with pytest.raises(TransactionAbandonedError, match="while the broker answers"):
        checkpoint.complete({(IN, 0): 5})
    assert checkpoint.replaced == 1 and rig.log.events() == [
        *(["waiting_for_broker"] * rig.log.events().count("waiting_for_broker")),
        "transactional_producer_replaced",
    ]
    assert rig.clock.now - 1000.0 <= ACK_QUIET_S + ACK_STUCK_S + 4
    old, fresh = rig.producers
    with pytest.raises(Exception, match="_FENCED"):
        old.commit_transaction()
    checkpoint.send_all(outputs(5))
    checkpoint.complete({(IN, 0): 5})
    assert written(rig.broker) == expected(5)
    assert fresh.calls.count("commit_transaction") == 1


def test_a_fatal_transaction_error_is_a_delivery_error_not_an_abandon():
    rig = Rig(transactional=True)
    checkpoint = rig.transactional()
    rig.producers[0].txn_errors["send_offsets_to_transaction"] = KafkaError(
        KafkaError._FENCED, "fenced", fatal=True
    )
    checkpoint.send_all(outputs(1))
    with pytest.raises(DeliveryError, match="fatal transaction error") as raised:
        checkpoint.complete({(IN, 0): 1})
    assert not isinstance(raised.value, TransactionAbandonedError)


def test_a_transaction_call_that_hangs_is_abandoned(monkeypatch):
    """librdkafka's send_offsets_to_transaction can block past its timeout (#5456): after
    TXN_STUCK_S the call is given up, the producer replaced (fencing the blocked one)."""
    monkeypatch.setattr(checkpoint_module, "GUARD_SLICE_S", 0.001)
    rig = Rig(transactional=True)
    rig.clock.tick_s = 0.5  # time passes while the helper thread is blocked
    checkpoint = rig.transactional()
    release = threading.Event()
    hung = rig.producers[0]
    send_offsets = hung.send_offsets_to_transaction

    def block(*args, **kwargs):
        release.wait(5)
        send_offsets(*args, **kwargs)

    hung.send_offsets_to_transaction = block  # type: ignore[method-assign]
    checkpoint.send_all(outputs(2))
    try:
        with pytest.raises(TransactionAbandonedError, match="send_offsets_to_transaction blocked"):
            checkpoint.complete({(IN, 0): 2})
    finally:
        release.set()
    assert checkpoint.replaced == 1
    assert rig.log.fields("transactional_producer_replaced")
    # Given up after the transaction timeout (the broker aborts the transaction then anyway),
    # before the general bound.
    assert TXN_TIMEOUT_S < rig.clock.now - 1000.0 < TXN_STUCK_S


def test_a_fatal_error_of_a_transaction_the_broker_timed_out_is_redone_not_fatal():
    """The broker aborts a transaction open longer than transaction.timeout.ms and bumps the
    producer's epoch; librdkafka then reports a fatal error. That is not a newer instance: a
    fresh producer of the same id carries on and the batch is redone (no process exit)."""
    rig = Rig(transactional=True)
    checkpoint = rig.transactional(transaction_timeout_s=5.0)
    producer = rig.producers[0]
    checkpoint.send_all(outputs(2))
    rig.clock.advance(6.0)  # the broker was away longer than the timeout
    producer.txn_errors["commit_transaction"] = KafkaError(
        KafkaError._FENCED, "producer fenced: epoch bumped by a timed-out transaction", fatal=True
    )
    _redone_with_a_fresh_producer(rig, checkpoint)
    assert rig.broker.committed["g"] == {(IN, 0): 2}


def _redone_with_a_fresh_producer(rig: Rig, checkpoint) -> None:
    """The two-output batch's transaction is abandoned as timed out, its producer replaced, and
    the batch sent again goes through the fresh one."""
    with pytest.raises(TransactionAbandonedError, match="transaction timed out"):
        checkpoint.complete({(IN, 0): 2})
    assert checkpoint.replaced == 1 and len(rig.producers) == 2
    checkpoint.send_all(outputs(2))
    checkpoint.complete({(IN, 0): 2})
    assert written(rig.broker) == expected(2)


def test_a_fatal_error_surfacing_as_a_systemerror_in_flush_is_handled_as_itself():
    """confluent-kafka can report a fatal error met while serving delivery reports as a
    SystemError caused by the KafkaException (seen when a frozen worker woke with its
    transaction timed out and fenced by the broker): redone like the KafkaException itself."""
    rig = Rig(transactional=True)
    checkpoint = rig.transactional(transaction_timeout_s=5.0)
    producer = rig.producers[0]
    checkpoint.send_all(outputs(2))
    rig.clock.advance(6.0)  # frozen for longer than the transaction timeout

    def flush_fenced(*_args, **_kwargs):
        fenced = KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True))
        raise SystemError("<function _on_delivery> returned a result with an exception set") from (
            fenced
        )

    producer.flush = flush_fenced  # type: ignore[method-assign]
    _redone_with_a_fresh_producer(rig, checkpoint)


def test_init_transactions_is_retried_while_retriable_and_fatal_errors_stop_at_once():
    """A replacement producer's init_transactions that times out (the broker away, the previous
    transaction being aborted) is tried again with the health beat going on; a fatal error is a
    DeliveryError."""
    rig = Rig(transactional=True)
    failures = [KafkaError(KafkaError._TIMED_OUT, "timed out", retriable=True)] * 2

    def fail_init_twice(producer: FakeProducer) -> None:
        real = producer.init_transactions

        def init(timeout=None):
            producer.calls.append("init_attempt")
            if failures:
                rig.clock.advance(timeout or 0)
                raise KafkaException(failures.pop())
            real(timeout)

        producer.init_transactions = init  # type: ignore[method-assign]

    rig.setup_producer = fail_init_twice
    checkpoint = rig.transactional()
    assert rig.producers[0].calls.count("init_attempt") == 3
    assert len(rig.log.fields("init_transactions_retry")) == 2
    checkpoint.send_all(outputs(1))
    checkpoint.complete({(IN, 0): 1})
    assert written(rig.broker) == expected(1)

    fatal = Rig(transactional=True)

    def fenced(producer: FakeProducer) -> None:
        producer.txn_errors["init_transactions"] = KafkaError(
            KafkaError._FENCED, "fenced", fatal=True
        )

    fatal.setup_producer = fenced
    with pytest.raises(DeliveryError, match="cannot initialise transactions"):
        fatal.transactional()


def test_init_transactions_that_hangs_is_given_up_for_a_fresh_producer(monkeypatch):
    """librdkafka's init_transactions was seen not to return: after its timeout plus a slack the
    call is left to its thread and a fresh producer (same id, fencing the hung one) tried."""
    monkeypatch.setattr(checkpoint_module, "GUARD_SLICE_S", 0.001)
    monkeypatch.setattr(checkpoint_module, "INIT_TXN_HANG_SLACK_S", 1.0)
    rig = Rig(transactional=True)
    rig.clock.tick_s = 0.5  # time passes while the helper thread is blocked
    release = threading.Event()

    def hang_first(producer: FakeProducer) -> None:
        if len(rig.producers) == 1:
            real = producer.init_transactions

            def init(timeout=None):
                release.wait(5)
                real(timeout)

            producer.init_transactions = init  # type: ignore[method-assign]

    rig.setup_producer = hang_first
    try:
        checkpoint = rig.transactional(transaction_timeout_s=2.0)
    finally:
        release.set()
    assert len(rig.producers) == 2 and checkpoint.producer is rig.producers[1]
    assert "init_transactions blocked" in rig.log.fields("init_transactions_retry")[0]["reason"]
