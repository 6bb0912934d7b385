"""What both peer drivers share: the workload, topics, the output collector and the process meter.

Runs in the project's env (confluent_kafka, numpy, the ``worker`` package); never inside a peer.

* The workload is the simulator's live stream (the catalogue the models are trained on), so the
  peers see the events and feature matrices the worker sees.
* Output topics are created with ``message.timestamp.type=LogAppendTime``: a response's Kafka
  timestamp is the moment the broker appended it, whatever the peer's producer stamps. Latency is
  that minus the request's produce time (both clocks are this machine's).
* :class:`ProcessMeter` reads ``/proc`` (no psutil in the project's env): CPU seconds and RSS of a
  process and all its descendants.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from worker.apps.simulate import LIVE_START_MS, SimulatorSettings, build
from worker.core.candidates import generate_candidates
from worker.core.features import N_FEATURES, build_features
from worker.core.pipeline import advance_sessions
from worker.core.records import to_browsing_event
from worker.core.session import SessionStore
from worker.model.artifact import load_tables
from worker.wire.codec import codec_for

LOG_APPEND_TIME = {"message.timestamp.type": "LogAppendTime"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def unique_name(prefix: str) -> str:
    """A topic or group name no earlier run used (``bench-<prefix>-<8 hex>``)."""
    return f"bench-{prefix}-{uuid.uuid4().hex[:8]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- workload ---------------------------------------------------------------------------------


def simulated_events(
    n_events: int,
    settings: SimulatorSettings | None = None,
    *,
    start_ms: int = LIVE_START_MS,
) -> list[dict[str, Any]]:
    """The first ``n_events`` browsing events (BrowsingEvent record dicts) of the live stream."""
    _, simulator = build(settings or SimulatorSettings())
    events: list[dict[str, Any]] = []
    # One stream over a long range: records() yields in time order and stops when asked.
    for kind, record in simulator.records(start_ms, start_ms + 400 * 86_400_000):
        if kind == "event":
            events.append(record)
            if len(events) == n_events:
                return events
    raise RuntimeError(f"the simulator produced only {len(events)} events")


def build_feature_matrices(
    models_dir: Path,
    events: Sequence[dict[str, Any]],
    candidates: int,
    *,
    history: int = 20,
    chunk: int = 1000,
) -> np.ndarray:
    """float32 ``(len(events), candidates, N_FEATURES)``: what the worker's pipeline scores for
    each event (sessions advanced in stream order, the worker's candidates and features)."""
    tables = load_tables(models_dir)
    sessions = SessionStore(history=history)
    out = np.empty((len(events), candidates, N_FEATURES), dtype=np.float32)
    clock = now_ms()
    for start in range(0, len(events), chunk):
        records = events[start : start + chunk]
        parsed = [to_browsing_event(r, r["user_id"].encode("utf-8"), clock) for r in records]
        items = np.fromiter(
            (tables.index_of(e.product_id) for e in parsed), dtype=np.int32, count=len(parsed)
        )
        batch = advance_sessions(sessions, parsed, items)
        cands = generate_candidates(tables, batch.items, batch.current_item, candidates)
        if cands.shape[1] != candidates:
            raise ValueError(f"the catalogue has fewer than {candidates} products")
        out[start : start + len(records)] = build_features(tables, batch, cands).reshape(
            len(records), candidates, N_FEATURES
        )
    return out


# -- Kafka ------------------------------------------------------------------------------------


def create_topics(
    bootstrap: str, topics: dict[str, tuple[int, dict[str, str]]], timeout_s: float = 30.0
) -> None:
    """Create topics ``{name: (partitions, config)}``; existing ones are left as they are."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    futures = admin.create_topics(
        [
            NewTopic(name, partitions, 1, config=config)
            for name, (partitions, config) in topics.items()
        ],
        request_timeout=timeout_s,
    )
    for name, future in futures.items():
        try:
            future.result(timeout_s)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise RuntimeError(f"cannot create topic {name}: {exc}") from exc
    # A busy broker answers metadata for a new topic a moment after creating it.
    deadline = time.monotonic() + timeout_s
    missing = set(topics)
    while missing and time.monotonic() < deadline:
        known = admin.list_topics(timeout=5).topics
        missing = {n for n in missing if n not in known or known[n].error is not None}
        if missing:
            time.sleep(0.2)
    if missing:
        raise RuntimeError(f"topics {sorted(missing)} not visible after {timeout_s:.0f} s")


def delete_topics(bootstrap: str, names: Iterable[str], timeout_s: float = 30.0) -> None:
    names = list(names)
    if not names:
        return
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    for future in admin.delete_topics(names, request_timeout=timeout_s).values():
        # Best effort: a leftover topic of a benchmark run is harmless.
        with contextlib.suppress(KafkaException):
            future.result(timeout_s)


def partition_count(bootstrap: str, topic: str, timeout_s: float = 10.0) -> int:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    meta = admin.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if meta is None or meta.error is not None:
        raise RuntimeError(f"topic {topic} does not exist on {bootstrap}")
    return len(meta.partitions)


def make_load_producer(bootstrap: str, **overrides: Any) -> Producer:
    """The load generator's producer: the worker's producer settings (acks=all, linger 5 ms)."""
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "acks": "all",
            "enable.idempotence": True,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "partitioner": "murmur2_random",
            **overrides,
        }
    )


def produce_paced(
    producer: Producer,
    messages: Iterable[tuple[str, bytes | None, bytes, list[tuple[str, bytes]] | None]],
    *,
    rate: float | None,
    on_send: Callable[[int, int], None] | None = None,
    make_value: Callable[[int, int], tuple[bytes | None, bytes]] | None = None,
) -> float:
    """Produce ``(topic, key, value, headers)`` messages, at ``rate`` per second when given.

    Each message's Kafka timestamp is the wall clock when it is handed to the producer;
    ``on_send(index, sent_ms)`` is called with it. With ``make_value(index, sent_ms)`` the key and
    value are built at send time instead (events whose ``event_time`` is now). Returns the
    seconds spent producing (flush included).
    """
    started = time.monotonic()
    for index, (topic, key, value, headers) in enumerate(messages):
        if rate:
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        sent_ms = now_ms()
        if make_value is not None:
            key, value = make_value(index, sent_ms)
        while True:
            try:
                producer.produce(topic, value=value, key=key, headers=headers, timestamp=sent_ms)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        if on_send is not None:
            on_send(index, sent_ms)
    remaining = producer.flush(60)
    if remaining:
        raise RuntimeError(f"{remaining} load messages were not acknowledged")
    return time.monotonic() - started


class OutputCollector:
    """Reads a topic from its beginning on a thread and hands ``(key, value, timestamp_ms)`` of
    every record to ``on_record``; no consumer group (explicit assignment)."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        on_record: Callable[[bytes | None, bytes | None, int], None],
    ) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": unique_name("collector"),  # required by librdkafka; never committed
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
                "fetch.min.bytes": 1,
            }
        )
        partitions = partition_count(bootstrap, topic)
        self._consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)]
        )
        self._on_record = on_record
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"collect-{topic}", daemon=True)
        self.errors: list[str] = []

    def start(self) -> OutputCollector:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self._consumer.consume(10_000, 0.1):
                if msg.error() is not None:
                    self.errors.append(str(msg.error()))
                    continue
                self._on_record(msg.key(), msg.value(), msg.timestamp()[1])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


def wait_until(
    predicate: Callable[[], bool],
    timeout_s: float,
    what: str,
    poll_s: float = 0.05,
    check: Callable[[], None] | None = None,
) -> None:
    """Poll until ``predicate()``; ``check()`` may raise (e.g. the peer process died).

    Raises:
        TimeoutError: not true within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


# -- figures ----------------------------------------------------------------------------------


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float | int]:
    """Count, p50/p95/p99/max and mean of latencies in milliseconds (a list or an array)."""
    if len(latencies_ms) == 0:
        return {"count": 0}
    values = np.asarray(latencies_ms, dtype=np.float64)
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "count": int(values.size),
        "p50_ms": round(float(p50), 1),
        "p95_ms": round(float(p95), 1),
        "p99_ms": round(float(p99), 1),
        "max_ms": round(float(values.max()), 1),
        "mean_ms": round(float(values.mean()), 1),
    }


def throughput(timestamps_ms: Sequence[int]) -> dict[str, float | int]:
    """Sustained rate between the first and the last response (their append times)."""
    if len(timestamps_ms) < 2:
        return {"responses": len(timestamps_ms)}
    first, last = min(timestamps_ms), max(timestamps_ms)
    span_s = max(last - first, 1) / 1000.0
    return {
        "responses": len(timestamps_ms),
        "span_s": round(span_s, 3),
        "per_s": round((len(timestamps_ms) - 1) / span_s, 1),
    }


_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _read_stat(pid: int) -> tuple[int, float, int] | None:
    """(ppid, cpu seconds, rss bytes) of a process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
    ppid = int(fields[1])
    cpu_s = (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime + stime
    rss = int(fields[21]) * _PAGE
    return ppid, cpu_s, rss


def _hwm_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class ProcessMeter:
    """Samples a process tree every ``interval_s`` on a thread.

    ``cpu_s()`` sums user+system seconds over every process of the tree seen so far (a process
    that exits keeps its last reading). ``peak_rss_bytes`` is the largest summed RSS of one sample;
    ``peak_hwm_bytes`` the summed kernel high-water marks (VmHWM) of the tree's processes.
    """

    root_pid: int
    interval_s: float = 0.1
    peak_rss_bytes: int = 0
    history: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, cpu_s)
    _cpu: dict[int, float] = field(default_factory=dict)
    _hwm: dict[int, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.RLock = field(default_factory=threading.RLock)  # type: ignore[valid-type]
    _thread: threading.Thread | None = None

    def start(self) -> ProcessMeter:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="process-meter", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                stat = _read_stat(int(entry))
                if stat is not None:
                    children.setdefault(stat[0], []).append(int(entry))
        pids, todo = [], [self.root_pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            todo.extend(children.get(pid, []))
        return pids

    def sample(self) -> None:
        with self._lock:
            self._sample()

    def _sample(self) -> None:
        rss = 0
        for pid in self.tree():
            stat = _read_stat(pid)
            if stat is None:
                continue
            self._cpu[pid] = stat[1]
            rss += stat[2]
            self._hwm[pid] = max(self._hwm.get(pid, 0), _hwm_bytes(pid))
        self.peak_rss_bytes = max(self.peak_rss_bytes, rss)
        self.history.append((time.monotonic(), self.cpu_s()))

    def cpu_s_at(self, when: float) -> float:
        """CPU seconds of the tree at monotonic time ``when`` (the nearest earlier sample)."""
        best = 0.0
        for t, cpu in self.history:
            if t > when:
                break
            best = cpu
        return best

    def cpu_s(self) -> float:
        with self._lock:
            return sum(self._cpu.values())

    @property
    def peak_hwm_bytes(self) -> int:
        return sum(self._hwm.values())

    @property
    def processes(self) -> int:
        return len(self._cpu)

    def stop(self) -> None:
        self.sample()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def encode_events_for_kafka(
    events: Sequence[dict[str, Any]], *, event_time_ms: int | None = None
) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` of each event: UTF-8 user id, Avro single-object encoding."""
    codec = codec_for("BrowsingEvent")
    out = []
    for record in events:
        if event_time_ms is not None:
            record = {**record, "event_time": event_time_ms}
        out.append((record["user_id"].encode("utf-8"), codec.encode(record)))
    return out
