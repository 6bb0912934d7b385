"""librdkafka configurations for each role, with pass-through properties applied."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, Producer

from worker.config import KafkaSettings
from worker.errors import BrokerError


def _error_cb(log: Any):
    fatal_seen = {"auth": False}

    def on_error(err: Any) -> None:
        # Authentication failures repeat on every reconnect: log the first one loudly only.
        name = err.name() if hasattr(err, "name") else str(err)
        if "AUTHENTICATION" in name.upper():
            if not fatal_seen["auth"]:
                fatal_seen["auth"] = True
                log.error("kafka_authentication_failed", error=name)
            return
        log.warning(
            "kafka_client_error", error=name, fatal=err.fatal() if hasattr(err, "fatal") else None
        )

    return on_error


def make_producer(settings: KafkaSettings, log: Any, **overrides: Any) -> Producer:
    """An idempotent producer (acks=all) tuned for small records in micro-batches."""
    config = settings.client_config(
        **{
            "linger.ms": 5,
            "compression.type": "lz4",
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 200000,
            "queue.buffering.max.kbytes": 262144,
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
            "error_cb": _error_cb(log),
        }
    )
    if "transactional.id" in config:
        config["message.timeout.ms"] = config.get("transaction.timeout.ms", 60000)
    try:
        return Producer(config)
    except Exception as exc:  # KafkaException for invalid configuration
        raise BrokerError(f"cannot create producer: {exc}") from exc


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
            "auto.commit.interval.ms": 1000,
            "statistics.interval.ms": 0,
            **overrides,
        }
    )
    config.update(
        {
            "group.id": group_id,
            "enable.auto.commit": auto_commit,
            "isolation.level": "read_committed",
            "enable.auto.offset.store": False,
            "error_cb": _error_cb(log),
        }
    )
    try:
        return Consumer(config)
    except Exception as exc:
        raise BrokerError(f"cannot create consumer: {exc}") from exc
