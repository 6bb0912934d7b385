"""Helpers of the integration tests: run the CLI as a subprocess, produce and read topics."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from worker.apps.simulate import LIVE_START_MS, build
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


def spawn(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``worker <args>`` (the real console entry) with stdout and stderr into ``log_path``:
    JSON logs, in this environment or in ``env`` (which then replaces it)."""
    env = {**os.environ, "WORKER_LOG_FORMAT": "json"} if env is None else env
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


def http_get(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.read().decode()
    except urllib.error.HTTPError as exc:  # /readyz answers 503 while not ready
        return exc.read().decode()


def metric(text: str, name: str) -> float:
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def wait_metric(port: int, name: str, at_least: float, timeout_s: float = 90.0) -> str:
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        try:
            text = http_get(port, "/metrics")
            if metric(text, name) >= at_least:
                return text
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{name} did not reach {at_least} in {timeout_s} s:\n{text[-2000:]}")


def simulated_events(settings, n: int) -> list[dict]:
    """The first ``n`` simulated events, re-timed to now (in order, 1 ms apart)."""
    _, simulator = build(settings)
    events = [
        r
        for kind, r in itertools.islice(
            simulator.records(LIVE_START_MS, LIVE_START_MS + 7 * 86_400_000), n * 3
        )
        if kind == "event"
    ][:n]
    assert len(events) == n
    base = time.time_ns() // 1_000_000 - n
    return [{**e, "event_time": base + i} for i, e in enumerate(events)]


def read_n(conf: dict[str, Any], topic: str, partitions: int, n: int, timeout_s: float) -> list:
    """Up to ``n`` messages of ``topic`` from the start, with the client settings ``conf``."""
    consumer = Consumer(
        {**conf, "group.id": f"reader-{uuid.uuid4().hex}", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < n and time.monotonic() < deadline:
            out += [m for m in consumer.consume(500, timeout=0.5) if m.error() is None]
    finally:
        consumer.close()
    return out


def json_lines(text: str) -> list[dict]:
    """The JSON log records of a process's output; a line that is not JSON as ``{"raw": line}``."""
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"raw": line})
    return out


def one_fatal_error(
    proc: subprocess.Popen, log_path: Path, started: float, timeout_s: float, what: str
) -> tuple[str, str]:
    """Wait for a process that must fail fast: exit code 2 within ``timeout_s`` of ``started``
    and exactly one error record, a fatal BrokerError. Return its message and the whole log."""
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(
            f"still running {timeout_s} s after {what}:\n{log_path.read_text()[-3000:]}"
        ) from None
    elapsed = time.monotonic() - started
    text = log_path.read_text()
    assert rc == 2, text
    assert elapsed < timeout_s

    lines = json_lines(text)
    errors = [r for r in lines if r.get("level") in ("error", "critical") or "raw" in r]
    assert len(errors) == 1, text
    error = errors[0]
    assert error.get("event") == "fatal" and error.get("error_class") == "BrokerError", text
    return error["error"], text
