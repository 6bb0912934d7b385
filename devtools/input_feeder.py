"""The chaos harness's input producer: every event acknowledged exactly once, in key order,
even when librdkafka stops serving a partition.

After a KRaft controller fences a broker (for example when it wakes from a pause longer than
``broker.session.timeout.ms``) every partition it leads is briefly leaderless. A produce
response naming leader -1 in that window can leave a librdkafka producer's partition without a
leader for good (librdkafka #5430): its messages then wait in the queue until
``message.timeout.ms`` although the broker answers and every other partition is served.

:class:`InputFeeder` watches for that with the worker's own :class:`~worker.kafka.watches.AckWatch`,
fed with the oldest unacknowledged message: it is "stuck" once the broker has answered metadata
requests for ``stuck_s`` while that message stayed unacknowledged. A frozen or stopped broker
does not answer, so it is waited out. When stuck, the feeder

1. purges the messages still queued in the producer (never sent, so re-sending them cannot
   duplicate them),
2. lets the old producer finish what it has in flight (bounded),
3. re-sends the purged messages in their original order through a fresh producer.

A partition's queued messages come after its in-flight ones, so per-key order is kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from worker.kafka.watches import AckWatch

log = logging.getLogger(__name__)

#: Bound of one "does the broker answer?" metadata request.
PROBE_TIMEOUT_S = 5.0
#: How long a replaced producer may take to settle what it has in flight.
IN_FLIGHT_SETTLE_S = 60.0


class InputFeederError(RuntimeError):
    """An input message failed for good, or could not be re-sent safely."""


class InputFeeder:
    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        watch: Callable[[], AckWatch] = AckWatch,
        clock: Callable[[], float] = time.monotonic,
        producer: Callable[[dict[str, Any]], Any] = Producer,
    ) -> None:
        self.topic = topic
        self.replaced = 0  # how many times the producer was replaced
        self.resent = 0  # messages purged from a replaced producer and sent again
        self._config = {**config, "enable.idempotence": True}
        self._new_watch, self._clock, self._new_producer = watch, clock, producer
        self._watch = watch()
        self._pending: dict[int, tuple[bytes | None, bytes]] = {}  # index -> (key, value)
        self._purged: list[int] = []
        self._errors: list[str] = []
        self._next = 0
        self._producer = self._new_producer(self._config)

    # -- public -------------------------------------------------------------------------
    def send(self, key: bytes | None, value: bytes) -> None:
        """Queue one message (waits while the local queue is full)."""
        i = self._next
        self._next += 1
        self._pending[i] = (key, value)
        self._produce(i)
        self.check()

    def check(self) -> None:
        """Serve delivery reports and act on the watch; raise on a failed message."""
        self._producer.poll(0)
        if self._errors:
            raise InputFeederError(f"input message failed: {self._errors[0]}")
        now = self._clock()
        self._watch.observe(now, self._outstanding())
        if self._watch.wants_probe(now):
            self._watch.probed(self._clock(), self._broker_answers())
        if self._watch.stuck(self._clock()):
            self._replace()

    def close(self, timeout_s: float = 600.0) -> None:
        """Wait until every message is acknowledged (replacing a stuck producer as needed)."""
        deadline = self._clock() + timeout_s
        while self._pending:
            if self._clock() >= deadline:
                raise InputFeederError(
                    f"{len(self._pending)} input messages not acknowledged in {timeout_s:g} s"
                )
            self._producer.flush(0.5)
            self.check()

    @property
    def unacknowledged(self) -> int:
        return len(self._pending)

    # -- internals ----------------------------------------------------------------------
    def _outstanding(self) -> int:
        # Decreases exactly when the oldest unacknowledged message is acknowledged: traffic on
        # healthy partitions does not hide a partition that is never served.
        return self._next - min(self._pending) if self._pending else 0

    def _produce(self, i: int) -> None:
        key, value = self._pending[i]
        while True:
            try:
                self._producer.produce(
                    self.topic, key=key, value=value, on_delivery=self._report(i)
                )
                return
            except BufferError:
                self._producer.poll(0.1)

    def _report(self, i: int) -> Callable[[KafkaError | None, Any], None]:
        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            if err is None:
                self._pending.pop(i, None)
            elif err.code() == KafkaError._PURGE_QUEUE:
                self._purged.append(i)
            else:
                self._errors.append(f"{err.name()}: {err.str()}")

        return on_delivery

    def _broker_answers(self) -> bool:
        try:
            self._producer.list_topics(topic=self.topic, timeout=PROBE_TIMEOUT_S)
            return True
        except KafkaException:
            return False

    def _replace(self) -> None:
        old = self._producer
        stuck_for = self._watch.quiet_for(self._clock())
        old.purge(in_queue=True, in_flight=False, blocking=True)
        old.poll(0)  # serves the purge reports
        if old.flush(IN_FLIGHT_SETTLE_S) != 0 or self._errors:
            raise InputFeederError(
                "input producer stuck with messages in flight; re-sending could duplicate them"
                + (f" ({self._errors[0]})" if self._errors else "")
            )
        purged = sorted(self._purged)
        self._purged.clear()
        self._producer = self._new_producer(self._config)
        self._watch = self._new_watch()
        self.replaced += 1
        self.resent += len(purged)
        log.warning(
            "input producer replaced: %d queued messages unacknowledged for %.0f s while the "
            "broker answered; re-sending them (librdkafka #5430)",
            len(purged),
            stuck_for,
        )
        for i in purged:
            self._produce(i)
