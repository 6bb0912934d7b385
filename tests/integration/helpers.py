"""Helpers of the integration tests: run the CLI as a subprocess, produce and read topics."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from worker.config import TopicSettings


def cli_args(bootstrap: str, topics: TopicSettings) -> list[str]:
    return [
        "--bootstrap-servers",
        bootstrap,
        "--events-topic",
        topics.events,
        "--suggestions-topic",
        topics.suggestions,
        "--purchases-topic",
        topics.purchases,
        "--accuracy-topic",
        topics.accuracy,
        "--partitions",
        str(topics.partitions),
    ]


def spawn(args: list[str], log_path: Path) -> subprocess.Popen:
    """Start ``worker <args>`` (the real console entry) with JSON logs into ``log_path``."""
    env = {**os.environ, "WORKER_LOG_FORMAT": "json"}
    return subprocess.Popen(
        [sys.executable, "-m", "worker.cli", *args],
        env=env,
        stdout=open(log_path, "wb"),
        stderr=subprocess.STDOUT,
    )


def produce(bootstrap: str, records: Iterable[tuple[str, bytes | None, bytes | None]]) -> int:
    """Produce ``(topic, key, value)`` records and wait until all are acknowledged."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 5,
            "partitioner": "murmur2_random",
        }
    )
    n = 0
    for topic, key, value in records:
        producer.produce(topic, key=key, value=value)
        n += 1
        if n % 5000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0, "test input not acknowledged"
    return n


def read_all(
    bootstrap: str,
    topic: str,
    partitions: int,
    *,
    expect: int | None = None,
    timeout_s: float = 60.0,
) -> list[Any]:
    """Every message of ``topic`` (all partitions, from the start). With ``expect``, keep reading
    until that many arrived or the timeout passes; without it, read to the current end."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[Any] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error() is not None:
                    at_end.add(msg.partition())
                    continue
                at_end.discard(msg.partition())
                out.append(msg)
            if expect is None and len(at_end) == partitions:
                break
            if expect is not None and len(out) >= expect and len(at_end) == partitions:
                break
    finally:
        consumer.close()
    return out


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        return [
            tp.offset
            for tp in consumer.committed(
                [TopicPartition(topic, p) for p in range(partitions)], timeout=10
            )
        ]
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str, partitions: int) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"end-{uuid.uuid4().hex}"})
    try:
        return [
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        ]
    finally:
        consumer.close()


def stop(proc: subprocess.Popen, timeout_s: float = 30.0) -> int:
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"process did not stop within {timeout_s} s of SIGTERM") from None
