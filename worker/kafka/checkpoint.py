"""The commit protocol: the one place that decides when an input offset may be committed.

For every micro-batch, in this order:

1. **Produce** every output of the batch (suggestions and dead letters) to the producer's queue.
2. **Flush**: wait until the broker has acknowledged every one of them (``acks=all``,
   idempotent producer) or the flush timeout passes.
3. **Verify**: if any record failed or is still queued, raise :class:`DeliveryError`. No offset
   of the batch is stored, so the whole batch is redelivered after a restart (at-least-once).
4. **Store** the next offset of every input partition of the batch (dead-lettered records
   included). The consumer's background auto-commit sends stored offsets; rebalance (revoke) and
   ``close()`` commit them synchronously.

Only offsets of fully acknowledged batches are ever stored, so a crash at any point loses
nothing: at worst the outputs of the last unstored batch are produced again.
"""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from worker.errors import BrokerError


class DeliveryError(BrokerError):
    """Outputs of a batch were not acknowledged; its offsets were not stored."""


class Checkpoint:
    """Produce, flush, verify, then store offsets (see the module docstring)."""

    def __init__(self, producer: Producer, consumer: Consumer, *, flush_timeout_s: float = 60.0):
        self._producer = producer
        self._consumer = consumer
        self._flush_timeout_s = flush_timeout_s
        self._failures: list[str] = []
        self.produced = 0

    def on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        """Producer delivery callback (the producer reports failures only)."""
        if err is not None:
            self._failures.append(f"{msg.topic()}: {err.name()}: {err.str()}")

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp_ms: int = 0,
    ) -> None:
        """Step 1: queue one output record, waiting for room if the local queue is full."""
        while True:
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=headers,
                    timestamp=timestamp_ms,
                    on_delivery=self.on_delivery,
                )
                self.produced += 1
                return
            except BufferError:
                self._producer.poll(0.05)

    def complete(self, next_offsets: dict[tuple[str, int], int]) -> None:
        """Steps 2-4 for one batch.

        Raises:
            DeliveryError: an output failed or was not acknowledged in time; nothing stored.
        """
        deadline = time.monotonic() + self._flush_timeout_s
        remaining = self._producer.flush(self._flush_timeout_s)
        while remaining and time.monotonic() < deadline:
            remaining = self._producer.flush(max(0.0, deadline - time.monotonic()))
        if self._failures or remaining:
            failures, self._failures = self._failures, []
            raise DeliveryError(
                f"{len(failures)} outputs failed and {remaining} unacknowledged after "
                f"{self._flush_timeout_s:.0f} s; offsets not stored"
                + (f"; first failure: {failures[0]}" if failures else "")
            )
        if next_offsets:
            self._consumer.store_offsets(
                offsets=[TopicPartition(t, p, o) for (t, p), o in next_offsets.items()]
            )

    def commit_stored(self) -> None:
        """Synchronously commit what is stored (on revoke and before close)."""
        try:
            self._consumer.commit(asynchronous=False)
        except Exception as exc:  # KafkaException(_NO_OFFSET) when nothing new was stored
            if "NO_OFFSET" not in str(exc):
                raise
