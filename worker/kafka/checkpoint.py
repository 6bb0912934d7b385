"""The commit protocol: the one place that decides when an input offset may be committed.

For every micro-batch, in this order:

1. **Produce** every output of the batch (suggestions and dead letters) to the producer's queue.
2. **Flush**: wait until the broker has acknowledged every one of them (``acks=all``,
   idempotent producer). While the broker is unreachable this waits (the loop fetches nothing
   meanwhile: backpressure instead of memory growth), calling ``on_wait`` every second so the
   process can report itself live but not ready; it resumes by itself when the broker returns.
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

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from worker.errors import BrokerError

FLUSH_SLICE_S = 1.0
TXN_STUCK_S = 120.0


class DeliveryError(BrokerError):
    """Outputs of a batch were not acknowledged; its offsets were not stored."""


def _no_wait_hook(waited_s: float) -> None:
    return None


class Checkpoint:
    """Produce, flush, verify, then store offsets (see the module docstring)."""

    def __init__(
        self,
        producer: Producer,
        consumer: Consumer,
        *,
        on_wait: Callable[[float], None] = _no_wait_hook,
        log: Any = None,
    ) -> None:
        self._producer = producer
        self._consumer = consumer
        self._on_wait = on_wait
        self._log = log
        self._failures: list[str] = []
        self.produced = 0

    def on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        """Producer delivery callback (failures are kept; successes only counted by flush)."""
        if err is not None:
            self._failures.append(f"{msg.topic()}: {err.name()}: {err.str()}")

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
        extra = {"partition": partition} if partition >= 0 else {}
        while True:
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=headers,
                    timestamp=timestamp_ms,
                    on_delivery=self.on_delivery,
                    **extra,
                )
                self.produced += 1
                return
            except BufferError:
                self._producer.poll(0.05)

    def _flush(self) -> None:
        """Step 2: wait until the producer's queue is empty, however long the broker is away."""
        started = time.monotonic()
        while self._producer.flush(FLUSH_SLICE_S) > 0:
            self._on_wait(time.monotonic() - started)

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

    def commit_stored(self) -> None:
        """Synchronously commit what is stored (on revoke and before close)."""
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                raise


class TransactionalCheckpoint(Checkpoint):
    """Exactly-once: each batch is one transaction that also carries the input offsets.

    Any transaction error raises :class:`DeliveryError` after aborting: the worker exits, and its
    restarted self (or the partitions' new owner) resumes from the last committed transaction,
    with the session state of that same transaction (see ``worker.kafka.state``).
    """

    def __init__(self, producer: Producer, consumer: Consumer, **kwargs: Any) -> None:
        super().__init__(producer, consumer, **kwargs)
        self._open = False
        try:
            producer.init_transactions(60)
        except KafkaException as exc:
            raise DeliveryError(f"cannot initialise transactions: {exc}") from exc

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
        except (KafkaException, DeliveryError) as exc:
            self._abort_quietly()
            raise DeliveryError(f"transaction not committed: {exc}") from exc
        finally:
            self._open = False

    def _guarded(self, name: str, call: Callable[[], None]) -> None:
        """Run a blocking transaction call, nudging the client while it hangs.

        librdkafka's send_offsets_to_transaction can block past its timeout when the group
        coordinator went away (confluentinc/librdkafka#5456, #5511) until some broker changes
        state. While the call is blocked, a metadata request every second gives the client that
        nudge; a call still blocked after ``TXN_STUCK_S`` ends the process (exit code 4): the
        restarted worker fences this one and resumes from the last committed transaction.
        """
        done = threading.Event()

        def nudge() -> None:
            started = time.monotonic()
            while not done.wait(1.0):
                waited = time.monotonic() - started
                self._on_wait(waited)
                with contextlib.suppress(Exception):
                    self._producer.list_topics(timeout=1.0)
                if waited > TXN_STUCK_S:
                    if self._log is not None:
                        self._log.error("transaction_call_stuck", call=name, waited_s=round(waited))
                    os._exit(4)

        watcher = threading.Thread(target=nudge, name=f"txn-{name}", daemon=True)
        watcher.start()
        try:
            call()
        finally:
            done.set()
            watcher.join()

    def _abort_quietly(self) -> None:
        # A fenced or fatal producer cannot abort; the coordinator then times the transaction out.
        with contextlib.suppress(KafkaException):
            self._producer.abort_transaction(10)

    def commit_stored(self) -> None:
        """Nothing to do: offsets are committed by the transactions."""
