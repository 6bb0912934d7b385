"""The commit protocol: the one place that decides when an input offset may be committed.

For every micro-batch, in this order:

1. **Produce** every output of the batch (suggestions, dead letters, changelog records) to the
   producer's queue.
2. **Flush**: wait until the broker has acknowledged every one of them (``acks=all``,
   idempotent producer). While the broker is unreachable this waits (the loop fetches nothing
   meanwhile: backpressure instead of memory growth), calling ``on_wait`` every second so the
   process can report itself live but not ready; it resumes by itself when the broker returns.
   If the broker answers but the outputs still are not acknowledged (a stuck producer,
   :mod:`worker.kafka.watches`), exactly-once abandons the transaction at once. At-least-once
   (given a ``replacement`` producer factory) purges the outputs still queued in the stuck
   producer (never sent, so re-sending cannot duplicate them), waits until what it had in
   flight is settled, and re-sends them in order through a fresh producer
   (:mod:`worker.kafka.resend`), once per batch; if
   that one is stuck too, it keeps waiting but reports itself not live (``on_stuck``), so the
   kubelet restarts it.
3. **Verify**: if any record failed (``message.timeout.ms`` passed, or a permanent error),
   raise :class:`DeliveryError`. No offset of the batch is stored, so the whole batch is
   redelivered after a restart (at-least-once).
4. **Store** the next offset of every input partition of the batch (dead-lettered records
   included). The consumer's background auto-commit sends stored offsets; rebalance (revoke) and
   ``close()`` commit them synchronously.

Only offsets of fully acknowledged batches are ever stored, so a crash at any point loses
nothing: at worst the outputs of the last unstored batch are produced again.

**Overlapped** (at-least-once, :meth:`Checkpoint.defer` and :meth:`Checkpoint.settle`): steps 2-4
of a batch wait until the next batch has been consumed and answered, just before its outputs are
produced. The broker acknowledges a batch while the worker computes the next one instead of
the worker idling for the round trip; the order of the steps, and so the guarantee, is
unchanged: at most one batch is unacknowledged, a batch's offsets are stored only once its
outputs, and every earlier batch's, are acknowledged, and nothing of a batch is produced while
an earlier one still waits (the flush of step 2 waits for exactly that batch's outputs, so the
stuck-producer cure below applies unchanged).

In exactly-once mode (:class:`TransactionalCheckpoint`) the batch is one Kafka transaction
instead: begin, produce the outputs, send the input offsets to the transaction (with the
consumer's group metadata, so a fenced zombie cannot commit), commit. A reader with
``isolation.level=read_committed`` sees each batch's outputs exactly once or not at all.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from worker.core.errors import BrokerError
from worker.kafka.resend import Outbox, Output, SettlePolicy, Unsettled
from worker.kafka.watches import AckWatch

FLUSH_SLICE_S = 1.0
#: A wait for the broker logs ``waiting_for_broker`` this often.
WAIT_LOG_EVERY_S = 10.0
#: A blocking transaction call is given up after this long, or after the transaction timeout if
#: that is shorter (the broker aborts the transaction then anyway).
TXN_STUCK_S = 20.0
#: Default ``transaction.timeout.ms`` of the worker's producers (seconds): Kafka Streams' under
#: exactly-once-v2. A dead worker's open transaction holds read_committed readers back this long
#: (plus the coordinator's sweep interval) unless a producer with its transactional id fences it.
TXN_TIMEOUT_S = 10.0
#: ``init_transactions`` of a new or replacement producer: one attempt's timeout, at least; a
#: call that has not returned this long after its own timeout is given up (its producer
#: dropped, a fresh one tried); after ``INIT_TXN_BOUND_S`` in all the process gives up.
INIT_TXN_ATTEMPT_S = 10.0
INIT_TXN_HANG_SLACK_S = 10.0
INIT_TXN_BOUND_S = 300.0
#: The same once shutdown was requested: the shutdown has a deadline of its own.
TXN_STUCK_STOPPING_S = 5.0
#: A blocking transaction call is checked on this often (seconds).
GUARD_SLICE_S = 1.0
#: At-least-once, replacing a stuck producer: report itself stuck if what the old producer had
#: in flight is not settled after this long.
SETTLE_REPORT_S = 30.0


class DeliveryError(BrokerError):
    """Outputs of a batch were not acknowledged; its offsets were not stored."""


class SettleTimeout(DeliveryError):
    """The deferred batch's outputs were not acknowledged within the bound given to
    :meth:`Checkpoint.settle`; its offsets were not stored (its events are redelivered)."""


def _ignore(_: object) -> None:
    return None


class Checkpoint:
    """Produce, flush, verify, then store offsets (see the module docstring).

    Args:
        producer: the producer of the outputs.
        consumer: the consumer whose offsets are stored (only its ``store_offsets``, ``commit``
            and, in exactly-once mode, ``consumer_group_metadata`` are used).
        on_wait: called about every second while a batch waits for the broker (seconds so far).
        on_stuck: called with a reason when the outputs stay unacknowledged while the broker
            answers (at-least-once keeps waiting), with None when that is over.
        ack_watch: makes the watch that tells a broker away from a stuck producer.
        replacement: makes a fresh producer; given, a stuck producer's queued outputs are
            re-sent through one (once per batch, see :mod:`worker.kafka.resend`).
        log: a structlog-style logger, or None.
        clock: monotonic seconds (injectable for tests).
    """

    #: A stuck producer's queued outputs are re-sent through a ``replacement`` (at-least-once);
    #: exactly-once abandons the transaction instead.
    RESENDS_STUCK_OUTPUTS = True

    def __init__(
        self,
        producer: Producer,
        consumer: Consumer,
        *,
        on_wait: Callable[[float], None] = _ignore,
        on_stuck: Callable[[str | None], None] = _ignore,
        ack_watch: Callable[[], AckWatch] = AckWatch,
        replacement: Callable[[], Producer] | None = None,
        log: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._outbox = Outbox(producer, replacement, watch=ack_watch, clock=clock)
        self._resend = self.RESENDS_STUCK_OUTPUTS and replacement is not None
        self._consumer = consumer
        self._on_wait = on_wait
        self._on_stuck = on_stuck
        self._log = log
        self._clock = clock
        #: Overlapped mode: the batch whose outputs are produced but whose steps 2-4 wait for
        #: the next :meth:`settle` (its next offsets and the caller's token).
        self._deferred: tuple[dict[tuple[str, int], int], Any] | None = None
        self._settle_deadline: float | None = None

    def use_consumer(self, consumer: Consumer) -> None:
        """Store and commit offsets through ``consumer`` from now on (a replacement of a
        consumer that was given up; nothing stored in the old one is carried over)."""
        self._consumer = consumer

    @property
    def producer(self) -> Producer:
        return self._outbox.producer

    @property
    def replaced(self) -> int:
        """How many times the producer was replaced (stuck, or its transaction abandoned)."""
        return self._outbox.replaced

    def begin(self) -> None:
        """Start a batch (a transaction in exactly-once mode; nothing otherwise)."""

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp_ms: int = 0,
        partition: int = -1,
    ) -> None:
        """Step 1: queue one output record, waiting for room if the local queue is full.

        ``partition`` -1 lets the partitioner choose (murmur2 of the key).
        """
        self.send(Output(topic, key, value, headers, timestamp_ms, partition))

    def send(self, output: Output) -> None:
        """Step 1 for one :class:`Output`."""
        self._outbox.send(output)

    def send_all(self, outputs: Iterable[Output]) -> None:
        """Step 1 for a batch's outputs, in order."""
        send = self.send
        for output in outputs:
            send(output)

    def _flush(self) -> None:
        """Step 2: wait until the producer's queue is empty, however long the broker is away.

        If the broker answers but the outputs still are not acknowledged (a stuck producer, see
        :mod:`worker.kafka.watches`), :meth:`_stuck` is called once per batch (at-least-once
        with a replacement first re-sends the queued outputs through a fresh producer, once).
        Progress is counted in delivery reports, not in ``flush``'s return value: that is
        librdkafka's out-queue length, which also counts log and error events waiting to be
        served, so it can fall while no output was acknowledged.
        """
        outbox = self._outbox
        outbox.restart_watch()
        started = self._clock()
        reported = False
        replaced = False  # at most once per batch: a second stuck producer is reported
        next_log = started + WAIT_LOG_EVERY_S
        while _flush_slice(outbox.producer) > 0:
            self._on_wait(self._clock() - started)
            self._give_up_if_hurried()
            if self._settle_deadline is not None and self._clock() > self._settle_deadline:
                raise SettleTimeout(
                    f"{outbox.in_producer} outputs unacknowledged after "
                    f"{self._clock() - started:.1f} s; offsets not stored"
                )
            stuck = outbox.stuck()
            now = self._clock()
            watch = outbox.watch
            if now >= next_log:
                next_log = now + WAIT_LOG_EVERY_S
                self._log_wait(
                    "flush",
                    now - started,
                    unacknowledged=outbox.in_producer,
                    since_ack_s=round(watch.quiet_for(now), 1),
                    broker_answering_s=watch.answering_for(now),
                )
            if reported or not stuck:
                continue
            reason = (
                f"{outbox.in_producer} outputs unacknowledged for {watch.quiet_for(now):.0f} s "
                "while the broker answers"
            )
            if self._resend and not replaced:
                replaced = True
                self._resend_through_fresh_producer(reason, started)
                continue
            reported = True
            self._stuck(reason)
        if reported:
            self._on_stuck(None)

    def _resend_through_fresh_producer(self, reason: str, started: float) -> None:
        """At-least-once cure for a producer that stopped serving a partition (librdkafka
        #5430): :meth:`Outbox.replace`, waiting as long as the in-flight outputs take to settle
        and reporting itself stuck after ``SETTLE_REPORT_S`` of that."""

        def report(unsettled: str | None) -> None:
            if unsettled is None:
                self._on_stuck(None)
            else:
                self._stuck(f"{reason}; {unsettled}")

        resent = self._outbox.replace(
            SettlePolicy(
                settle_s=SETTLE_REPORT_S,
                if_unsettled=Unsettled.REPORT_AND_WAIT,
                report=report,
                on_wait=lambda _: self._on_wait(self._clock() - started),
                slice_s=FLUSH_SLICE_S,
            )
        )
        if self._log is not None:
            self._log.warning(
                "producer_replaced", reason=reason, resent=resent, cause="stuck producer"
            )

    def _log_wait(self, step: str, waited_s: float, **detail: Any) -> None:
        if self._log is not None:
            self._log.warning(
                "waiting_for_broker", step=step, waited_s=round(waited_s, 1), **detail
            )

    def _stuck(self, reason: str) -> None:
        """At-least-once keeps waiting (the outputs are not lost, and dropping them would break
        per-user order) but reports itself not live through ``on_stuck``, so the kubelet
        restarts it; the batch is then redelivered to the partitions' next owner."""
        if self._log is not None:
            self._log.error("outputs_stuck", reason=reason)
        self._on_stuck(reason)

    def _give_up_if_hurried(self) -> None:
        """At-least-once waits on (its SIGTERM bound ends the process; nothing was stored)."""

    def complete(self, next_offsets: dict[tuple[str, int], int]) -> None:
        """Steps 2-4 for one batch.

        Raises:
            DeliveryError: an output failed; nothing was stored.
        """
        self._flush()
        self._raise_failures()
        if not next_offsets:
            return
        try:
            self._consumer.store_offsets(
                offsets=[TopicPartition(t, p, o) for (t, p), o in next_offsets.items()]
            )
        except KafkaException as exc:
            # Partitions taken away while this batch waited for the broker: their new owner
            # starts from the last committed offset and answers these events again. (librdkafka
            # stores the offsets of the partitions still assigned and raises only when it could
            # store none.)
            if self._log is not None:
                self._log.warning("offsets_not_stored", error=str(exc))

    # -- overlapped mode ---------------------------------------------------------------------------

    def defer(self, next_offsets: dict[tuple[str, int], int], token: Any = None) -> None:
        """Overlapped steps 2-4: the batch whose outputs were just produced is completed by the
        next :meth:`settle`, which hands ``token`` back.

        Raises:
            RuntimeError: an earlier batch is still deferred (call :meth:`settle` first).
        """
        if self._deferred is not None:
            raise RuntimeError("a batch is already waiting for its acknowledgements: settle first")
        self._deferred = (next_offsets, token)

    @property
    def deferred(self) -> bool:
        """A batch's outputs are produced and its offsets not stored yet."""
        return self._deferred is not None

    def settle(self, within_s: float | None = None) -> list[Any]:
        """Steps 2-4 for the deferred batch, if any: wait until its outputs are acknowledged
        (however long the broker is away, as :meth:`complete`, unless ``within_s`` bounds the
        wait), then store its offsets. Call it before producing the next batch's outputs, on
        revoke and before close. Returns the settled batch's token (``[]`` when none was
        deferred). Either way the batch is no longer deferred afterwards.

        Raises:
            DeliveryError: an output failed; nothing was stored.
            SettleTimeout: not acknowledged within ``within_s``; nothing was stored.
        """
        if self._deferred is None:
            return []
        next_offsets, token = self._deferred
        self._deferred = None
        self._settle_deadline = None if within_s is None else self._clock() + within_s
        try:
            self.complete(next_offsets)
        finally:
            self._settle_deadline = None
        return [token]

    def _raise_failures(self) -> None:
        failures = self._outbox.take_failures()
        if failures:
            raise DeliveryError(
                f"{len(failures)} outputs failed; offsets not stored; first: {failures[0]}"
            )

    def hurry(self) -> None:
        """Shutdown was requested: give up sooner on calls that hang (exactly-once)."""

    def commit_stored(self) -> None:
        """Synchronously commit what is stored (on revoke and before close). A commit the group
        refuses because this member no longer holds the partitions (its session expired
        meanwhile) is logged, not raised: their next owner reads from the last commit."""
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            code = exc.args[0].code()
            if code == KafkaError._NO_OFFSET:
                return
            if code not in _MEMBERSHIP_GONE:
                raise
            if self._log is not None:
                self._log.warning("offsets_not_committed", error=str(exc))


def _flush_slice(producer: Producer) -> int:
    """``producer.flush`` for one slice. A fatal error that reaches confluent-kafka while it
    serves delivery reports (a transaction the broker timed out and fenced) can come out as a
    ``SystemError`` ("<callback> returned a result with an exception set") whose cause is the
    ``KafkaException``: the latter is raised, so that it is handled as the error it is."""
    try:
        return producer.flush(FLUSH_SLICE_S)
    except SystemError as exc:
        if isinstance(exc.__cause__, KafkaException):
            raise exc.__cause__ from exc
        raise


#: Commit errors that mean the member lost its partitions (not a broker failure).
_MEMBERSHIP_GONE = frozenset(
    {
        KafkaError._ASSIGNMENT_LOST,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.FENCED_INSTANCE_ID,
    }
)


class TransactionAbandonedError(DeliveryError):
    """The batch's transaction was aborted (or its producer replaced); nothing of it is visible
    to read_committed readers and its offsets were not committed. The caller rewinds its
    consumer to the committed offsets and its state to the changelog, then goes on."""


class TransactionalCheckpoint(Checkpoint):
    """Exactly-once: each batch is one transaction that also carries the input offsets.

    A transaction that fails with an abortable error is aborted; one whose call hangs (below)
    has its producer replaced by a new one with the same ``transactional.id``, which fences the
    old one and aborts its transaction. Either way :class:`TransactionAbandonedError` tells the
    worker to rewind and redo the batch, without a process restart. A fatal error of a
    transaction open longer than ``transaction_timeout_s`` is the broker having aborted it (the
    producer's epoch was bumped): handled the same way. Other fatal errors raise
    :class:`DeliveryError` (the process exits; its restarted self resumes from the last
    committed transaction).

    ``transaction_timeout_s`` is the producers' ``transaction.timeout.ms``: a blocking call is
    given up after it (or ``TXN_STUCK_S`` if shorter), since the broker aborts the transaction
    then anyway.
    """

    RESENDS_STUCK_OUTPUTS = False

    def __init__(
        self,
        producer_factory: Callable[[], Producer],
        consumer: Consumer,
        *,
        transaction_timeout_s: float = TXN_TIMEOUT_S,
        **kwargs: Any,
    ) -> None:
        self._producer_factory = producer_factory
        self._transaction_timeout_s = transaction_timeout_s
        self._stuck_after_s = min(TXN_STUCK_S, transaction_timeout_s)
        self._hurried_at: float | None = None
        self._begun_at: float | None = None
        # What _init needs before Checkpoint.__init__ sets them (to the same values).
        self._on_wait = kwargs.get("on_wait", _ignore)
        self._log = kwargs.get("log")
        self._clock = kwargs.get("clock", time.monotonic)
        # The replacement (same transactional.id) fences the old producer; it never re-sends.
        super().__init__(self._new_producer(), consumer, replacement=self._new_producer, **kwargs)
        self._open = False

    def hurry(self) -> None:
        self._stuck_after_s = TXN_STUCK_STOPPING_S
        self._hurried_at = self._clock()

    def _stuck(self, reason: str) -> None:
        """Exactly-once abandons the transaction at once (the producer is replaced, which
        aborts it): its open transaction would hold read_committed readers back."""
        raise _TransactionCallStuck(reason)

    def _give_up_if_hurried(self) -> None:
        """Shutting down while the batch's outputs are still unacknowledged: after
        ``TXN_STUCK_STOPPING_S`` the transaction is abandoned (its producer replaced, which aborts
        it at once, so read_committed readers are not held back until it times out)."""
        if self._hurried_at is not None:
            waited = self._clock() - self._hurried_at
            if waited > TXN_STUCK_STOPPING_S:
                raise _TransactionCallStuck(f"flush unacknowledged {waited:.0f} s into shutdown")

    def _new_producer(self) -> Producer:
        """A fresh producer with transactions initialised (which fences its predecessor of the
        same ``transactional.id`` and aborts the transaction that one left open).

        Bounded: each ``init_transactions`` attempt has a timeout, a retriable failure (the
        broker away, a coordinator moving, the previous transaction still being aborted) is
        retried while the health beat goes on, a call that hangs past its timeout
        (``INIT_TXN_HANG_SLACK_S``) is given up with its producer and a fresh one tried.

        Raises:
            DeliveryError: a fatal or non-retriable error, or no success within
                ``INIT_TXN_BOUND_S`` (the process exits; its restart tries again).
        """
        attempt_s = max(INIT_TXN_ATTEMPT_S, self._transaction_timeout_s)
        started = self._clock()
        producer = self._producer_factory()
        last = ""
        while True:
            try:
                self._guarded(
                    "init_transactions",
                    partial(producer.init_transactions, attempt_s),
                    stuck_after_s=attempt_s + INIT_TXN_HANG_SLACK_S,
                )
                return producer
            except KafkaException as exc:
                error = exc.args[0]
                if error.fatal() or not error.retriable():
                    raise DeliveryError(f"cannot initialise transactions: {exc}") from exc
                last = str(exc)
            except _TransactionCallStuck as exc:
                last = str(exc)
                producer = self._producer_factory()  # the hung one is left to its thread
            waited = self._clock() - started
            if self._log is not None:
                self._log.warning("init_transactions_retry", waited_s=round(waited, 1), reason=last)
            if waited > INIT_TXN_BOUND_S:
                raise DeliveryError(
                    f"cannot initialise transactions within {INIT_TXN_BOUND_S:.0f} s: {last}"
                )

    def begin(self) -> None:
        if not self._open:
            self.producer.begin_transaction()
            self._open = True
            self._begun_at = self._clock()

    def send(self, output: Output) -> None:
        self.begin()
        super().send(output)

    def complete(self, next_offsets: dict[tuple[str, int], int]) -> None:
        if not self._open and not next_offsets:
            return
        self.begin()
        try:
            self._flush()
            self._raise_failures()
            if next_offsets:
                offsets = [TopicPartition(t, p, o) for (t, p), o in next_offsets.items()]
                metadata = self._consumer.consumer_group_metadata()
                producer = self.producer
                self._guarded(
                    "send_offsets_to_transaction",
                    lambda: producer.send_offsets_to_transaction(offsets, metadata, 60),
                )
            producer = self.producer
            self._guarded("commit_transaction", lambda: producer.commit_transaction(60))
        except _TransactionCallStuck as exc:
            self._replace_producer(str(exc))
            raise TransactionAbandonedError(f"transaction abandoned: {exc}") from exc
        except KafkaException as exc:
            error = exc.args[0]
            if error.fatal():
                if not self._outlived_timeout():
                    raise DeliveryError(f"fatal transaction error: {exc}") from exc
                # The broker aborted the transaction (it outlived transaction.timeout.ms) and
                # bumped the producer's epoch: a fresh producer of the same id carries on.
                self._replace_producer(f"transaction timed out: {exc}")
                raise TransactionAbandonedError(f"transaction timed out: {exc}") from exc
            self._abort_or_replace(str(exc))
            raise TransactionAbandonedError(f"transaction aborted: {exc}") from exc
        except DeliveryError as exc:
            # Outputs of this transaction failed (typically timed out after a broker restart):
            # the producer that could not deliver them is not trusted with the retry. A fresh one
            # with the same transactional.id fences it and aborts its transaction at once.
            self._replace_producer(str(exc))
            raise TransactionAbandonedError(f"transaction aborted: {exc}") from exc
        finally:
            self._open = False

    def _outlived_timeout(self) -> bool:
        """Whether the open transaction began longer than the transaction timeout ago."""
        return (
            self._begun_at is not None
            and self._clock() - self._begun_at >= self._transaction_timeout_s
        )

    def _guarded(
        self, name: str, call: Callable[[], None], *, stuck_after_s: float | None = None
    ) -> None:
        """Run a blocking transaction call in a helper thread and give up on it if it hangs.

        librdkafka's send_offsets_to_transaction can block past its timeout when the group
        coordinator went away, for example across a broker restart (confluentinc/librdkafka
        #5456, #5511). Waiting here reports backpressure every second; after ``TXN_STUCK_S``
        the call is abandoned (its thread stays blocked in the old producer, which the caller
        then replaces and fences); after ``TXN_STUCK_STOPPING_S`` once shutdown was requested.
        """
        outcome: list[BaseException | None] = []

        def target() -> None:
            try:
                call()
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 (handed to the waiting thread)
                outcome.append(exc)

        thread = threading.Thread(target=target, name=f"txn-{name}", daemon=True)
        started = self._clock()
        next_log = started + WAIT_LOG_EVERY_S
        thread.start()
        while True:
            thread.join(GUARD_SLICE_S)
            if outcome:
                if outcome[0] is not None:
                    raise outcome[0]
                return
            waited = self._clock() - started
            self._on_wait(waited)
            if self._clock() >= next_log:
                next_log = self._clock() + WAIT_LOG_EVERY_S
                self._log_wait(name, waited)
            if waited > (self._stuck_after_s if stuck_after_s is None else stuck_after_s):
                raise _TransactionCallStuck(f"{name} blocked for {waited:.0f} s")

    def _abort_or_replace(self, reason: str) -> None:
        producer = self.producer
        try:
            self._guarded("abort_transaction", lambda: producer.abort_transaction(30))
        except (KafkaException, _TransactionCallStuck):
            self._replace_producer(reason)
            return
        # The aborted outputs will be produced again; the purge reports abort_transaction leaves
        # to be served are not failures of the next batch.
        self._outbox.forget()

    def _replace_producer(self, reason: str) -> None:
        if self._log is not None:
            self._log.warning("transactional_producer_replaced", reason=reason)
        self._outbox.abandon()  # same transactional.id: the fresh producer fences the old one

    def commit_stored(self) -> None:
        """Nothing to do: offsets are committed by the transactions."""


class _TransactionCallStuck(Exception):
    pass
