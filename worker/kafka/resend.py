"""Outputs that survive a stuck producer: numbered, kept until settled, re-sent in order.

After a KRaft controller fences a broker (for example when it wakes from a pause longer than
``broker.session.timeout.ms``) the partitions it led are leaderless for a moment, and a
librdkafka producer that hears "leader -1" then can stop serving such a partition for good
(confluentinc/librdkafka#5430): its messages wait in the producer's queue although the broker
answers every request. The cure, shared by the worker's at-least-once checkpoint and the chaos
harness's input feeder, is :class:`Outbox`:

1. every output is numbered in the order it was produced and kept until the producer has
   settled it (acknowledged or failed);
2. an :class:`~worker.kafka.watches.AckWatch`, fed with one figure of the outbox (``stuck_feed``),
   tells a broker that does not answer (wait) from a producer that gets nothing acknowledged
   while the broker answers (stuck);
3. :meth:`Outbox.replace` then purges the outputs still *queued* in the stuck producer (never
   sent, so re-sending them cannot duplicate them), lets the ones *in flight* settle (they are
   never purged: they may already be written), and re-sends the purged ones, in their original
   order, through a fresh producer. A partition's queued outputs come after its in-flight ones,
   so per-key order is kept.

What differs between the users is policy, passed in: how long the in-flight outputs may take to
settle and what happens when they do not (:class:`SettlePolicy`), and what the stuck check is fed
(:func:`unacknowledged` or :func:`behind_oldest`).

Semantics of the producer this relies on (confluent-kafka / librdkafka): ``purge(in_queue=True,
in_flight=False)`` fails the queued messages with ``_PURGE_QUEUE``, whose delivery reports are
served by the next ``poll``/``flush``; ``flush`` serves delivery reports and returns how many
messages are still queued or in flight; ``produce`` raises ``BufferError`` while the local queue
is full.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from worker.core.errors import BrokerError
from worker.kafka.watches import AckWatch

#: Bound of the metadata request that asks whether the broker answers (see ``AckWatch``).
PROBE_TIMEOUT_S = 5.0
#: While ``produce`` finds the local queue full: serve delivery reports this long, then retry.
QUEUE_FULL_POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class Output:
    """One record to produce.

    ``timestamp_ms`` 0 lets the producer stamp it (its clock); ``partition`` -1 lets the
    partitioner choose (murmur2 of the key).
    """

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None
    timestamp_ms: int = 0
    partition: int = -1


class ResendError(BrokerError):
    """A stuck producer's queued outputs could not be re-sent safely (policy ``RAISE``): what it
    had in flight did not settle in time, or failed. Nothing was re-sent."""


class Unsettled(enum.Enum):
    """What :meth:`Outbox.replace` does while the stuck producer's in-flight outputs do not
    settle within ``SettlePolicy.settle_s``."""

    #: Give up: raise :class:`ResendError` (also when one of them failed). For a caller that
    #: would rather stop than wait without bound.
    RAISE = "raise"
    #: Call ``SettlePolicy.report`` with a reason once and keep waiting (outputs are never
    #: dropped: that would break per-key order); call it with None once they have settled.
    REPORT_AND_WAIT = "report_and_wait"


def _ignore(_: object) -> None:
    return None


@dataclass(frozen=True)
class SettlePolicy:
    """How :meth:`Outbox.replace` treats the outputs the stuck producer has in flight."""

    #: Seconds the in-flight outputs may take to settle before ``if_unsettled`` applies.
    settle_s: float
    if_unsettled: Unsettled
    #: ``REPORT_AND_WAIT``: the reason once when ``settle_s`` has passed, None once settled.
    report: Callable[[str | None], None] = _ignore
    #: Called after every ``flush`` slice while waiting, with the seconds waited so far.
    on_wait: Callable[[float], None] = _ignore
    #: Length of one ``flush`` of the stuck producer (seconds).
    slice_s: float = 1.0


def unacknowledged(outbox: Outbox) -> int:
    """Stuck-check feed: outputs handed to the current producer without a delivery report yet.
    Falls with every acknowledgement (right for one batch that is flushed as a whole)."""
    return outbox.in_producer


def behind_oldest(outbox: Outbox) -> int:
    """Stuck-check feed: how many outputs were produced since the oldest unsettled one. Falls
    exactly when the oldest is settled, so traffic on healthy partitions cannot hide a
    partition that is never served (right for a stream that keeps producing)."""
    return outbox.produced - outbox.oldest_pending if outbox.pending else 0


class Outbox:
    """Produces :class:`Output` records through a producer that can be replaced when stuck.

    Args:
        producer: the first producer.
        new_producer: makes a fresh producer (for :meth:`replace` and :meth:`abandon`); None if
            this outbox never replaces its producer.
        watch: makes the :class:`AckWatch` of the stuck check (a new one per producer, and per
            :meth:`restart_watch`).
        stuck_feed: what the watch is fed (:func:`unacknowledged` or :func:`behind_oldest`).
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        producer: Producer,
        new_producer: Callable[[], Producer] | None = None,
        *,
        watch: Callable[[], AckWatch] = AckWatch,
        stuck_feed: Callable[[Outbox], int] = unacknowledged,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._producer = producer
        self._new_producer = new_producer
        self._new_watch = watch
        self._feed = stuck_feed
        self._clock = clock
        self.watch = watch()
        self._pending: dict[int, Output] = {}  # insertion order is number order
        self._purged: list[int] = []
        self._failures: list[str] = []
        self._generation = 0  # reports of a producer given up on are not ours any more
        self._last_topic: str | None = None
        self.produced = 0  # outputs numbered so far (the next output's number)
        self.in_producer = 0  # handed to the current producer, no delivery report yet
        self.replaced = 0  # producers replaced (stuck) or abandoned
        self.resent = 0  # outputs purged from a stuck producer and sent again

    @property
    def producer(self) -> Producer:
        """The current producer (a fresh one after :meth:`replace` or :meth:`abandon`)."""
        return self._producer

    @property
    def pending(self) -> int:
        """Outputs not settled yet (queued, in flight, or purged and not yet re-sent)."""
        return len(self._pending)

    @property
    def oldest_pending(self) -> int:
        """Number of the oldest unsettled output (meaningful while :attr:`pending` > 0)."""
        return next(iter(self._pending))

    # -- producing -------------------------------------------------------------------------------

    def send(self, output: Output) -> None:
        """Number ``output`` and hand it to the producer, waiting while its queue is full."""
        number = self.produced
        self.produced += 1
        self._pending[number] = output
        self._produce(number)

    def _produce(self, number: int) -> None:
        output = self._pending[number]
        kwargs: dict[str, Any] = {"key": output.key, "value": output.value}
        if output.headers is not None:
            kwargs["headers"] = output.headers
        if output.timestamp_ms:
            kwargs["timestamp"] = output.timestamp_ms
        if output.partition >= 0:
            kwargs["partition"] = output.partition
        on_delivery = partial(self._on_delivery, self._generation, number)
        while True:
            try:
                self._producer.produce(output.topic, on_delivery=on_delivery, **kwargs)
                break
            except BufferError:
                self._producer.poll(QUEUE_FULL_POLL_S)
        self.in_producer += 1
        self._last_topic = output.topic

    def _on_delivery(self, generation: int, number: int, err: KafkaError | None, msg: Any) -> None:
        """Delivery report: settled (acknowledged or failed), or purged from the queue (kept to
        be re-sent). Reports of a producer given up on (:meth:`abandon`) are ignored."""
        if generation != self._generation:
            return
        self.in_producer -= 1
        if err is not None and err.code() == KafkaError._PURGE_QUEUE:
            self._purged.append(number)
            return
        output = self._pending.pop(number, None)
        if err is not None:
            topic = output.topic if output is not None else msg.topic()
            self._failures.append(f"{topic}: {err.name()}: {err.str()}")

    def take_failures(self) -> list[str]:
        """Failed outputs (``"topic: ERROR_NAME: text"``) since the last call, oldest first."""
        failures, self._failures = self._failures, []
        return failures

    @property
    def failures(self) -> list[str]:
        return list(self._failures)

    # -- the stuck check ---------------------------------------------------------------------------

    def restart_watch(self) -> None:
        """A new watch, observing from now (at the start of each batch's wait)."""
        self.watch = self._new_watch()
        self.watch.observe(self._clock(), self._feed(self))

    def stuck(self) -> bool:
        """Feed the watch, ask the broker whether it answers when the watch wants to know, and
        say whether the producer counts as stuck (see :class:`AckWatch`)."""
        now = self._clock()
        self.watch.observe(now, self._feed(self))
        if self.watch.wants_probe(now):
            self.watch.probed(self._clock(), self._broker_answers())
        return self.watch.stuck(self._clock())

    def _broker_answers(self) -> bool:
        """One metadata request through the producer, for one topic it writes to (not the
        whole cluster's): does the broker answer it?"""
        try:
            self._producer.list_topics(topic=self._last_topic, timeout=PROBE_TIMEOUT_S)
        except KafkaException:
            return False
        return True

    # -- replacing the producer --------------------------------------------------------------------

    def replace(self, policy: SettlePolicy) -> int:
        """Purge the stuck producer's queued outputs, let its in-flight ones settle (per
        ``policy``), and re-send the purged ones in their original order through a fresh
        producer; return how many were re-sent.

        Raises:
            ResendError: policy ``RAISE`` and the in-flight outputs did not settle within
                ``policy.settle_s``, or one of them failed; nothing was re-sent and the stuck
                producer is kept.
        """
        if self._new_producer is None:
            raise ValueError("this outbox has no producer factory to replace its producer")
        old = self._producer
        old.purge(in_queue=True, in_flight=False, blocking=True)
        self._settle(old, policy)
        purged = sorted(self._purged)
        self._purged = []
        self._producer = self._new_producer()
        self.replaced += 1
        self.resent += len(purged)
        self.in_producer = 0  # the old producer has settled everything it was given
        for number in purged:
            self._produce(number)
        self.restart_watch()
        return len(purged)

    def _settle(self, old: Producer, policy: SettlePolicy) -> None:
        """Wait until ``old`` has settled what it had in flight (and served the purge reports).

        Raises:
            ResendError: see :meth:`replace`.
        """
        failed_before = len(self._failures)
        started = self._clock()
        reported = False
        while True:
            unsettled = old.flush(policy.slice_s)  # in flight: acknowledged or failed, never lost
            if unsettled == 0:
                break
            waited = self._clock() - started
            policy.on_wait(waited)
            if waited < policy.settle_s or reported:
                continue
            reason = (
                f"{unsettled} in-flight outputs not settled {waited:.0f} s after purging the "
                f"{len(self._purged)} queued ones"
            )
            if policy.if_unsettled is Unsettled.RAISE:
                raise ResendError(reason)
            reported = True
            policy.report(reason)
        if reported:
            policy.report(None)
        if policy.if_unsettled is Unsettled.RAISE and len(self._failures) > failed_before:
            raise ResendError(
                "an in-flight output failed; re-sending the queued ones after it could "
                f"reorder its key: {self._failures[failed_before]}"
            )

    def abandon(self) -> None:
        """Give the producer up with everything it holds, unsettled (its outputs belong to an
        aborted transaction and will be produced again): use a fresh producer, forget the
        pending outputs and ignore any report the old producer still serves."""
        if self._new_producer is None:
            raise ValueError("this outbox has no producer factory to replace its producer")
        self.forget()
        self._producer = self._new_producer()
        self.replaced += 1
        self.restart_watch()

    def forget(self) -> None:
        """Forget the pending outputs and failures (their transaction was aborted); delivery
        reports still to come for them are ignored."""
        self._generation += 1
        self._pending.clear()
        self._purged = []
        self._failures = []
        self.in_producer = 0
