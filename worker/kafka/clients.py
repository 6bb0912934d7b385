"""librdkafka configurations for each role, with pass-through properties applied."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from worker.config import KafkaSettings
from worker.core.errors import BrokerError
from worker.ops.logging import RepeatFilter


def _error_cb(log: Any) -> Callable[[Any], None]:
    """librdkafka ``error_cb``: an authentication failure is logged once (it repeats on every
    reconnect), other errors as warnings. Only the error name is logged: librdkafka's messages
    never carry credentials, and the names certainly do not."""
    fatal_seen = {"auth": False}
    repeats = RepeatFilter()

    def on_error(err: Any) -> None:
        # Authentication failures repeat on every reconnect: log the first one loudly only.
        name = err.name() if hasattr(err, "name") else str(err)
        if "AUTHENTICATION" in name.upper():
            if not fatal_seen["auth"]:
                fatal_seen["auth"] = True
                log.error("kafka_authentication_failed", error=name)
            return
        fatal = err.fatal() if hasattr(err, "fatal") else None
        repeated = 0 if fatal else repeats.allow(name, time.monotonic())
        if repeated is None:
            return
        extra = {"repeated": repeated} if repeated else {}
        log.warning("kafka_client_error", error=name, fatal=fatal, **extra)

    return on_error


class _LibrdkafkaLog:
    """librdkafka's own log lines as structured log events instead of raw ``%3|...`` lines on
    stderr. Lines about refused authentication are dropped: they come on every reconnect and
    ``error_cb`` has already reported the failure once. Others that repeat (a refused connection
    on every reconnect attempt while a broker is down) go out once per 10 s with a count."""

    _LEVELS = {50: "critical", 40: "error", 30: "warning", 20: "info", 10: "debug"}

    def __init__(self, log: Any) -> None:
        self._log = log
        self._repeats = RepeatFilter()

    def log(self, level: int, _fmt: str, facility: str, name: str, message: str) -> None:
        if "authentication" in str(message).lower():
            return
        repeated = self._repeats.allow(f"{level}|{facility}|{message}", time.monotonic())
        if repeated is None:
            return
        extra = {"repeated": repeated} if repeated else {}
        method = getattr(self._log, self._LEVELS.get(level, "info"), self._log.info)
        method("librdkafka", facility=facility, client=name, message=message, **extra)


def client_hooks(settings: KafkaSettings, log: Any) -> dict[str, Any]:
    """``error_cb`` and, unless librdkafka ``debug`` output was asked for, ``logger``."""
    hooks: dict[str, Any] = {"error_cb": _error_cb(log)}
    if "debug" not in settings.properties:
        hooks["logger"] = _LibrdkafkaLog(log)
    return hooks


def make_producer(settings: KafkaSettings, log: Any, **overrides: Any) -> Producer:
    """An idempotent producer (acks=all) tuned for small records in micro-batches."""
    config = settings.client_config(
        **{
            "linger.ms": 5,
            "compression.type": "lz4",
            "batch.num.messages": 10000,
            # The worker flushes after every batch, so this only has to hold one batch's
            # outputs; when it is full, produce() waits (see Checkpoint.produce).
            "queue.buffering.max.messages": 200000,
            "queue.buffering.max.kbytes": 32 * 1024,
            # 0 = wait for the broker however long it is away (the worker fetches nothing
            # meanwhile); transactional producers are bounded by transaction.timeout.ms instead.
            "message.timeout.ms": 0,
            **overrides,
        }
    )
    # Correctness settings go last: pass-through may not weaken them. murmur2_random is the Java
    # client's default partitioner: producers in any language put a user on the same partition.
    config.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
            **client_hooks(settings, log),
        }
    )
    if "transactional.id" in config:
        config["message.timeout.ms"] = config.get("transaction.timeout.ms", 60000)
    try:
        return Producer(config)
    except Exception as exc:  # KafkaException for invalid configuration
        raise BrokerError(f"cannot create producer: {exc}") from exc


#: Consumer properties of the classic group protocol only: librdkafka refuses them with
#: ``group.protocol=consumer``.
CLASSIC_ONLY = ("session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy")


def make_consumer(
    settings: KafkaSettings,
    group_id: str,
    log: Any,
    *,
    auto_commit: bool = True,
    **overrides: Any,
) -> Consumer:
    """A consumer whose offsets are stored explicitly (only after outputs are acknowledged)
    and committed by the background auto-commit, on rebalance and on close."""
    config = settings.client_config(
        **{
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 1000,
            "max.poll.interval.ms": 120000,
            "fetch.min.bytes": 1,
            "fetch.wait.max.ms": 50,
            # Records fetched ahead of the application are bounded (librdkafka's default is
            # 64 MiB, and one fetch response, 50 MiB by default and decompressed next to itself,
            # comes on top): a backlog stays in Kafka, not in this process.
            "queued.max.messages.kbytes": 16 * 1024,
            "fetch.max.bytes": 4 * 1024 * 1024,
            "auto.commit.interval.ms": 1000,
            "statistics.interval.ms": 0,
            **overrides,
        }
    )
    if str(config.get("group.protocol", "classic")).lower() == "consumer":
        # KIP-848: the session and the assignor are the broker's (group.consumer.session.timeout.ms,
        # group.consumer.assignors); librdkafka refuses the classic protocol's properties.
        for key in CLASSIC_ONLY:
            config.pop(key, None)
    config.update(
        {
            "group.id": group_id,
            "enable.auto.commit": auto_commit,
            "isolation.level": "read_committed",
            "enable.auto.offset.store": False,
            **client_hooks(settings, log),
        }
    )
    try:
        return Consumer(config)
    except Exception as exc:
        raise BrokerError(f"cannot create consumer: {exc}") from exc


#: Per attempt of :func:`committed_offsets`; a stable read (pending transactional commits
#: resolved) can take a while after a broker restart.
COMMITTED_TIMEOUT_S = 20.0
COMMITTED_ATTEMPTS = 3


def committed_offsets(
    consumer: Consumer,
    partitions: list[TopicPartition],
    *,
    timeout_s: float = COMMITTED_TIMEOUT_S,
    attempts: int = COMMITTED_ATTEMPTS,
) -> dict[tuple[str, int], int]:
    """The group's committed offset of each partition (negative: nothing committed yet).

    Retried: right after a coordinator change the request can fail (``NOT_COORDINATOR``) or
    time out; librdkafka finds the new coordinator meanwhile.

    Raises:
        BrokerError: still failing after ``attempts`` tries.
    """
    asked = [TopicPartition(p.topic, p.partition) for p in partitions]
    if not asked:
        return {}
    last = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(0.5 * attempt)
        try:
            answer = consumer.committed(asked, timeout=timeout_s)
        except KafkaException as exc:
            last = str(exc)
            continue
        failed = [tp for tp in answer if tp.error is not None]
        if not failed:
            return {(tp.topic, tp.partition): tp.offset for tp in answer}
        last = f"{failed[0].topic}[{failed[0].partition}]: {failed[0].error}"
    raise BrokerError(f"cannot read committed offsets after {attempts} attempts: {last}")


def start_at(topic: str, partition: int, committed: int) -> TopicPartition:
    """Where a partition is read from: its committed offset, or the beginning if none."""
    return TopicPartition(topic, partition, committed if committed >= 0 else OFFSET_BEGINNING)


def assign_at(
    consumer: Consumer,
    partitions: list[TopicPartition],
    committed: dict[tuple[str, int], int],
    *,
    incremental: bool,
) -> None:
    """Take an assignment from inside ``on_assign``, each partition starting at its committed
    offset (from :func:`committed_offsets`; the beginning when nothing is committed).

    The application reads the committed offsets itself (retried) and assigns explicit
    positions, instead of leaving the lookup to librdkafka: when that lookup meets a stale
    group coordinator (``NOT_COORDINATOR`` for the whole request, as after a broker freeze),
    librdkafka never retries it and the partition is never fetched, while the consumer looks
    healthy (confluentinc/librdkafka#5586). ``incremental`` is True for the cooperative
    protocol.
    """
    start = [
        start_at(p.topic, p.partition, committed.get((p.topic, p.partition), -1))
        for p in partitions
    ]
    if incremental:
        consumer.incremental_assign(start)
    else:
        consumer.assign(start)
