"""The commit protocol: the one place that decides when an input offset may be committed.

For every micro-batch, in this order:

1. **Produce** every output of the batch (suggestions and dead letters) to the producer's queue.
2. **Flush**: wait until the broker has acknowledged every one of them (``acks=all``,
   idempotent producer). While the broker is unreachable this waits (the loop fetches nothing
   meanwhile: backpressure instead of memory growth), calling ``on_wait`` every second so the
   process can report itself live but not ready; it resumes by itself when the broker returns.
   If the broker answers but the outputs still are not acknowledged (a stuck producer,
   :mod:`worker.kafka.watches`), exactly-once abandons the transaction at once. At-least-once
   (given a ``replacement`` producer factory) purges the outputs still queued in the stuck
   producer (never sent, so re-sending cannot duplicate them), waits until what it had in
   flight is settled, and re-sends them in order through a fresh producer, once per batch; if
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

In exactly-once mode (:class:`TransactionalCheckpoint`) the batch is one Kafka transaction
instead: begin, produce the outputs, send the input offsets to the transaction (with the
consumer's group metadata, so a fenced zombie cannot commit), commit. A reader with
``isolation.level=read_committed`` sees each batch's outputs exactly once or not at all.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from worker.core.errors import BrokerError
from worker.kafka.watches import AckWatch

FLUSH_SLICE_S = 1.0
#: A wait for the broker logs ``waiting_for_broker`` this often.
WAIT_LOG_EVERY_S = 10.0
TXN_STUCK_S = 20.0
#: The same once shutdown was requested: the shutdown has a deadline of its own.
TXN_STUCK_STOPPING_S = 5.0
#: Bound of the metadata request that asks whether the broker answers (see ``AckWatch``).
PROBE_TIMEOUT_S = 5.0
#: At-least-once, replacing a stuck producer: report itself stuck if what the old producer had
#: in flight is not settled after this long.
SETTLE_REPORT_S = 30.0


class DeliveryError(BrokerError):
    """Outputs of a batch were not acknowledged; its offsets were not stored."""


def _ignore(_: object) -> None:
    return None


class Checkpoint:
    """Produce, flush, verify, then store offsets (see the module docstring)."""

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
    ) -> None:
        self._producer = producer
        # At-least-once with a replacement: the batch's outputs, by sequence number, so the
        # queued ones a purge hands back can be re-sent as they were, in order, through a fresh
        # producer (a purged message comes back without its headers and timestamp).
        self._replacement = replacement
        self._batch: list[tuple[str, dict[str, Any]]] = []
        self._purged: list[int] = []
        self.replaced = 0
        self._consumer = consumer
        self._on_wait = on_wait
        self._on_stuck = on_stuck
        self._ack_watch = ack_watch
        self._log = log
        self._failures: list[str] = []
        self._last_topic: str | None = None
        self._unacked = 0  # produced by the current producer, no delivery report yet
        self.produced = 0

    def on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        """Producer delivery callback (failures are kept; successes only counted)."""
        self._unacked -= 1
        if err is not None:
            self._failures.append(f"{msg.topic()}: {err.name()}: {err.str()}")

    def _on_tracked_delivery(self, i: int, err: KafkaError | None, msg: Any) -> None:
        """Delivery callback of a numbered output: purged ones are kept to be re-sent."""
        if err is not None and err.code() == KafkaError._PURGE_QUEUE:
            self._unacked -= 1
            self._purged.append(i)
            return
        self.on_delivery(err, msg)

    @property
    def producer(self) -> Producer:
        return self._producer

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
        kwargs: dict[str, Any] = {
            "value": value,
            "key": key,
            "headers": headers,
            "timestamp": timestamp_ms,
        }
        if partition >= 0:
            kwargs["partition"] = partition
        if self._replacement is None:
            self._send(topic, kwargs, self.on_delivery)
        else:
            self._batch.append((topic, kwargs))
            self._send(topic, kwargs, partial(self._on_tracked_delivery, len(self._batch) - 1))
        self.produced += 1

    def _send(self, topic: str, kwargs: dict[str, Any], on_delivery: Callable[..., None]) -> None:
        while True:
            try:
                self._producer.produce(topic, on_delivery=on_delivery, **kwargs)
                self._unacked += 1
                self._last_topic = topic
                return
            except BufferError:
                self._producer.poll(0.05)

    def _flush(self) -> None:
        """Step 2: wait until the producer's queue is empty, however long the broker is away.

        If the broker answers but the outputs still are not acknowledged (a stuck producer, see
        :mod:`worker.kafka.watches`), :meth:`_stuck` is called once per batch. Progress is counted
        in delivery reports, not in ``flush``'s return value: that is librdkafka's out-queue
        length, which also counts log and error events waiting to be served, so it can fall
        while no output was acknowledged.
        """
        watch = self._ack_watch()
        started = time.monotonic()
        watch.observe(started, self._unacked)
        reported = False
        replaced = False  # at most once per batch: a second stuck producer is reported
        next_log = started + WAIT_LOG_EVERY_S
        while self._producer.flush(FLUSH_SLICE_S) > 0:
            now = time.monotonic()
            self._on_wait(now - started)
            self._give_up_if_hurried()
            outstanding = self._unacked
            watch.observe(now, outstanding)
            if watch.wants_probe(now):
                watch.probed(time.monotonic(), self._broker_answers())
            now = time.monotonic()
            if now >= next_log:
                next_log = now + WAIT_LOG_EVERY_S
                self._log_wait(
                    "flush",
                    now - started,
                    unacknowledged=outstanding,
                    since_ack_s=round(watch.quiet_for(now), 1),
                    broker_answering_s=watch.answering_for(now),
                )
            if not reported and watch.stuck(now):
                reason = (
                    f"{outstanding} outputs unacknowledged for {watch.quiet_for(now):.0f} s "
                    "while the broker answers"
                )
                if self._replacement is not None and not replaced:
                    replaced = True
                    self._resend_through_fresh_producer(reason, started)
                    watch = self._ack_watch()
                    watch.observe(time.monotonic(), self._unacked)
                    continue
                reported = True
                self._stuck(reason)
        self._batch.clear()
        if reported:
            self._on_stuck(None)

    def _resend_through_fresh_producer(self, reason: str, started: float) -> None:
        """At-least-once cure for a producer that stopped serving a partition (for example
        librdkafka #5430, a partition whose leader it lost for good after its broker was
        fenced): purge the outputs still queued (never sent: re-sending them cannot duplicate
        them), wait until what was in flight is settled (a partition's queued outputs come
        after its in-flight ones, so per-key order is kept), and re-send the purged ones in
        order through a fresh producer."""
        assert self._replacement is not None
        old = self._producer
        old.purge(in_queue=True, in_flight=False, blocking=True)
        settling = time.monotonic()
        reported = False
        while old.flush(FLUSH_SLICE_S) > 0:  # in flight: acknowledged or failed, never lost
            self._on_wait(time.monotonic() - started)
            if not reported and time.monotonic() - settling > SETTLE_REPORT_S:
                reported = True
                self._stuck(f"{reason}; in-flight outputs not settled after purging the rest")
        if reported:
            self._on_stuck(None)
        purged = sorted(self._purged)
        self._purged = []
        self._producer = self._replacement()
        self.replaced += 1
        if self._log is not None:
            self._log.warning(
                "producer_replaced", reason=reason, resent=len(purged), cause="stuck producer"
            )
        for i in purged:
            topic, kwargs = self._batch[i]
            self._send(topic, kwargs, partial(self._on_tracked_delivery, i))

    def _log_wait(self, step: str, waited_s: float, **detail: Any) -> None:
        if self._log is not None:
            self._log.warning(
                "waiting_for_broker", step=step, waited_s=round(waited_s, 1), **detail
            )

    def _broker_answers(self) -> bool:
        """One metadata request through this producer (for one topic the batch writes to, not
        the whole cluster's): does the broker answer it?"""
        try:
            self._producer.list_topics(topic=self._last_topic, timeout=PROBE_TIMEOUT_S)
        except KafkaException:
            return False
        return True

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
            # starts from the last committed offset and answers these events again.
            if self._log is not None:
                self._log.warning("offsets_not_stored", error=str(exc))

    def _raise_failures(self) -> None:
        if self._failures:
            failures, self._failures = self._failures, []
            raise DeliveryError(
                f"{len(failures)} outputs failed; offsets not stored; first: {failures[0]}"
            )

    def hurry(self) -> None:
        """Shutdown was requested: give up sooner on calls that hang (exactly-once)."""

    def commit_stored(self) -> None:
        """Synchronously commit what is stored (on revoke and before close)."""
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                raise


class TransactionAbandonedError(DeliveryError):
    """The batch's transaction was aborted (or its producer replaced); nothing of it is visible
    to read_committed readers and its offsets were not committed. The caller rewinds its
    consumer to the committed offsets and its state to the changelog, then goes on."""


class TransactionalCheckpoint(Checkpoint):
    """Exactly-once: each batch is one transaction that also carries the input offsets.

    A transaction that fails with an abortable error is aborted; one whose call hangs (below)
    has its producer replaced by a new one with the same ``transactional.id``, which fences the
    old one and aborts its transaction. Either way :class:`TransactionAbandonedError` tells the
    worker to rewind and redo the batch, without a process restart. Fatal errors raise
    :class:`DeliveryError` (the process exits; its restarted self resumes from the last
    committed transaction).
    """

    def __init__(
        self,
        producer_factory: Callable[[], Producer],
        consumer: Consumer,
        **kwargs: Any,
    ) -> None:
        self._producer_factory = producer_factory
        super().__init__(self._new_producer(), consumer, **kwargs)
        self._open = False
        self._stuck_after_s = TXN_STUCK_S
        self._hurried_at: float | None = None

    def hurry(self) -> None:
        self._stuck_after_s = TXN_STUCK_STOPPING_S
        self._hurried_at = time.monotonic()

    def _stuck(self, reason: str) -> None:
        """Exactly-once abandons the transaction at once (the producer is replaced, which
        aborts it): its open transaction would hold read_committed readers back."""
        raise _TransactionCallStuck(reason)

    def _give_up_if_hurried(self) -> None:
        """Shutting down while the batch's outputs are still unacknowledged: after
        ``TXN_STUCK_STOPPING_S`` the transaction is abandoned (its producer replaced, which aborts
        it at once, so read_committed readers are not held back until it times out)."""
        if self._hurried_at is not None:
            waited = time.monotonic() - self._hurried_at
            if waited > TXN_STUCK_STOPPING_S:
                raise _TransactionCallStuck(f"flush unacknowledged {waited:.0f} s into shutdown")

    @staticmethod
    def _init(producer: Producer) -> Producer:
        try:
            producer.init_transactions(60)
        except KafkaException as exc:
            raise DeliveryError(f"cannot initialise transactions: {exc}") from exc
        return producer

    def _new_producer(self) -> Producer:
        return self._init(self._producer_factory())

    def begin(self) -> None:
        if not self._open:
            self._producer.begin_transaction()
            self._open = True

    def produce(self, *args: Any, **kwargs: Any) -> None:
        self.begin()
        super().produce(*args, **kwargs)

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
                self._guarded(
                    "send_offsets_to_transaction",
                    lambda: self._producer.send_offsets_to_transaction(offsets, metadata, 60),
                )
            self._guarded("commit_transaction", lambda: self._producer.commit_transaction(60))
        except _TransactionCallStuck as exc:
            self._replace_producer(str(exc))
            raise TransactionAbandonedError(f"transaction abandoned: {exc}") from exc
        except KafkaException as exc:
            error = exc.args[0]
            if error.fatal():
                raise DeliveryError(f"fatal transaction error: {exc}") from exc
            self._abort_or_replace(str(exc))
            raise TransactionAbandonedError(f"transaction aborted: {exc}") from exc
        except DeliveryError as exc:
            self._abort_or_replace(str(exc))
            raise TransactionAbandonedError(f"transaction aborted: {exc}") from exc
        finally:
            self._open = False

    def _guarded(self, name: str, call: Callable[[], None]) -> None:
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
        started = time.monotonic()
        next_log = started + WAIT_LOG_EVERY_S
        thread.start()
        while True:
            thread.join(1.0)
            if outcome:
                if outcome[0] is not None:
                    raise outcome[0]
                return
            waited = time.monotonic() - started
            self._on_wait(waited)
            if time.monotonic() >= next_log:
                next_log = time.monotonic() + WAIT_LOG_EVERY_S
                self._log_wait(name, waited)
            if waited > self._stuck_after_s:
                raise _TransactionCallStuck(f"{name} blocked for {waited:.0f} s")

    def _abort_or_replace(self, reason: str) -> None:
        try:
            self._guarded("abort_transaction", lambda: self._producer.abort_transaction(30))
        except (KafkaException, _TransactionCallStuck):
            self._replace_producer(reason)

    def _replace_producer(self, reason: str) -> None:
        if self._log is not None:
            self._log.warning("transactional_producer_replaced", reason=reason)
        self._producer = self._new_producer()  # same transactional.id: fences the old one
        self.replaced += 1
        self._unacked = 0  # the old producer's reports are never served

    def commit_stored(self) -> None:
        """Nothing to do: offsets are committed by the transactions."""


class _TransactionCallStuck(Exception):
    pass
