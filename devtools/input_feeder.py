"""The chaos harness's input producer: every event acknowledged exactly once, in key order,
even when librdkafka stops serving a partition.

After a KRaft controller fences a broker (for example when it wakes from a pause longer than
``broker.session.timeout.ms``) every partition it leads is briefly leaderless. A produce
response naming leader -1 in that window can leave a librdkafka producer's partition without a
leader for good (librdkafka #5430): its messages then wait in the queue until
``message.timeout.ms`` although the broker answers and every other partition is served.

:class:`InputFeeder` uses the worker's own cure, :class:`worker.kafka.resend.Outbox`, with the
stuck check (:class:`~worker.kafka.watches.AckWatch`) fed with the oldest unacknowledged message:
it is "stuck" once the broker has answered metadata requests for ``stuck_s`` while that message
stayed unacknowledged. A frozen or stopped broker does not answer, so it is waited out. When
stuck, the feeder

1. purges the messages still queued in the producer (never sent, so re-sending them cannot
   duplicate them),
2. lets the old producer finish what it has in flight (at most ``IN_FLIGHT_SETTLE_S``; if they
   do not settle, or one of them fails, it raises instead of re-sending),
3. re-sends the purged messages in their original order through a fresh producer.

A partition's queued messages come after its in-flight ones, so per-key order is kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Producer

from worker.kafka.resend import (
    Outbox,
    Output,
    ResendError,
    SettlePolicy,
    Unsettled,
    behind_oldest,
)
from worker.kafka.watches import AckWatch

log = logging.getLogger(__name__)

#: How long a replaced producer may take to settle what it has in flight.
IN_FLIGHT_SETTLE_S = 60.0
#: One ``flush`` of the replaced producer while it settles (seconds).
SETTLE_SLICE_S = 0.5


class InputFeederError(RuntimeError):
    """An input message failed for good, or could not be re-sent safely."""


class InputFeeder:
    """Produces the harness's input through a :class:`~worker.kafka.resend.Outbox` fed to its
    stuck check by the oldest unacknowledged message (:func:`~worker.kafka.resend.behind_oldest`),
    giving up (:class:`InputFeederError`) rather than waiting without bound when a replaced
    producer's in-flight messages do not settle.

    Args:
        config: librdkafka producer properties (``enable.idempotence`` is forced on).
        topic: where every message goes.
        watch: makes the stuck check's :class:`AckWatch`.
        clock: monotonic seconds.
        producer: makes a producer from a config.
    """

    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        watch: Callable[[], AckWatch] = AckWatch,
        clock: Callable[[], float] = time.monotonic,
        producer: Callable[[dict[str, Any]], Any] = Producer,
    ) -> None:
        self.topic = topic
        self._config = {**config, "enable.idempotence": True}
        self._clock = clock

        def new_producer() -> Any:
            return producer(self._config)

        self._outbox = Outbox(
            new_producer(), new_producer, watch=watch, stuck_feed=behind_oldest, clock=clock
        )

    # -- public -------------------------------------------------------------------------
    @property
    def replaced(self) -> int:
        """How many times the producer was replaced."""
        return self._outbox.replaced

    @property
    def resent(self) -> int:
        """Messages purged from a replaced producer and sent again."""
        return self._outbox.resent

    def send(self, key: bytes | None, value: bytes) -> None:
        """Queue one message (waits while the local queue is full)."""
        self._outbox.send(Output(self.topic, key, value))
        self.check()

    def check(self) -> None:
        """Serve delivery reports and act on the stuck check; raise on a failed message.

        Raises:
            InputFeederError: a message failed, or a stuck producer could not be replaced
                safely.
        """
        self._outbox.producer.poll(0)
        self._raise_failures()
        if self._outbox.stuck():
            self._replace()

    def close(self, timeout_s: float = 600.0) -> None:
        """Wait until every message is acknowledged (replacing a stuck producer as needed).

        Raises:
            InputFeederError: not all acknowledged within ``timeout_s``, or see :meth:`check`.
        """
        deadline = self._clock() + timeout_s
        while self._outbox.pending:
            if self._clock() >= deadline:
                raise InputFeederError(
                    f"{self._outbox.pending} input messages not acknowledged in {timeout_s:g} s"
                )
            self._outbox.producer.flush(0.5)
            self.check()

    @property
    def unacknowledged(self) -> int:
        return self._outbox.pending

    # -- internals ----------------------------------------------------------------------
    def _raise_failures(self) -> None:
        failures = self._outbox.failures
        if failures:
            raise InputFeederError(f"input message failed: {failures[0]}")

    def _replace(self) -> None:
        stuck_for = self._outbox.watch.quiet_for(self._clock())
        try:
            resent = self._outbox.replace(
                SettlePolicy(
                    settle_s=IN_FLIGHT_SETTLE_S,
                    if_unsettled=Unsettled.RAISE,
                    slice_s=SETTLE_SLICE_S,
                )
            )
        except ResendError as exc:
            raise InputFeederError(
                f"input producer stuck with messages in flight; re-sending could duplicate or "
                f"reorder them ({exc})"
            ) from exc
        log.warning(
            "input producer replaced: %d queued messages unacknowledged for %.0f s while the "
            "broker answered; re-sending them (librdkafka #5430)",
            resent,
            stuck_for,
        )
