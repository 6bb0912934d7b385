"""The latency phase's measuring parts: a pre-encoded, scheduled load, its figures, CPU pinning.

Used by :mod:`devtools.bench.runner` (``worker-dev bench``, phase ``latency``); the pure parts
(schedule, histogram, summaries) are unit-tested without a broker.

* **Schedule**: event ``i`` of a point is *intended* to be sent at ``t0 + i / rate``. Its payload
  ``event_time`` is that intended time, and its latency is measured from it, so a generator or a
  worker that stalls cannot hide the delay (no coordinated omission): events due during a stall
  are sent late, and their latency includes the wait.
* **Pre-encoded**: every event's key and Avro value are built before the clock starts (``t0`` is
  chosen a little after the encoding ends); the paced loop only sleeps until events are due and
  hands their bytes to the producer, so it does no Avro work while sending.
* **Generator lag**: each event's actual hand-over time minus its intended time, reported beside
  the latency, so a late generator is told apart from a slow worker.
* **Pinning** (Linux): :func:`set_affinity` sets the CPU mask of every thread of a process
  (``sched_setaffinity`` on one pid changes only that thread; threads created later inherit the
  mask of the thread that creates them).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from devtools.bench.peers.workload import latency_summary

#: Histogram bucket edges in ms: 0, then 1 ms to 100 s with 10 buckets per decade; the last
#: bucket (from 100 s) is open.
BUCKET_EDGES_MS: tuple[float, ...] = (0.0, *(round(float(x), 3) for x in np.logspace(0, 5, 51)))

#: The paced loop sleeps at least this long between two batches of due events.
MIN_SLEEP_S = 0.001

#: Producer settings of the latency load generator, over ``make_load_producer``'s: 5 ms of
#: linger, the Java client's default since Kafka 4.0 (KIP-1030), as a web shop's event pipeline
#: would send. It adds at most 5 ms to an event (counted in the latency: the clock is the
#: scheduled send time). 1 ms allows up to five times as many produce requests, which cost
#: the broker, on the generator's core, more than those 4 ms (see docs/benchmark.md, latency).
LOAD_PRODUCER_OVERRIDES: dict[str, Any] = {"linger.ms": 5}


# -- schedule ---------------------------------------------------------------------------------


def build_schedule(n: int, rate: float, t0_ns: int) -> np.ndarray:
    """Intended send times (int64 wall-clock ns) of ``n`` events at ``rate`` per second from
    ``t0_ns``: ``t0 + i / rate``."""
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    return t0_ns + np.round(np.arange(n, dtype=np.float64) * (1e9 / rate)).astype(np.int64)


def encode_scheduled(
    events: Sequence[dict[str, Any]],
    schedule_ns: np.ndarray,
    id_prefix: str,
    encode: Callable[[dict[str, Any]], bytes],
) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` of each scheduled event: ``event_id`` = ``<id_prefix>-<i>`` (unique, for
    matching the answers) and ``event_time`` = its intended send time in ms."""
    out: list[tuple[bytes, bytes]] = []
    for i, t_ns in enumerate(schedule_ns.tolist()):
        record = {**events[i], "event_id": f"{id_prefix}-{i}", "event_time": t_ns // 1_000_000}
        out.append((record["user_id"].encode("utf-8"), encode(record)))
    return out


def send_scheduled(
    produce: Callable[[bytes, bytes, int], None],
    poll: Callable[[], None],
    messages: Sequence[tuple[bytes, bytes]],
    schedule_ns: np.ndarray,
    *,
    clock_ns: Callable[[], int] = time.time_ns,
    sleep: Callable[[float], None] = time.sleep,
    min_sleep_s: float = MIN_SLEEP_S,
) -> list[int]:
    """Send each message at (or as soon as possible after) its intended time.

    Every event whose time has come is handed over (``produce(key, value, timestamp_ms)`` with
    its intended time as the Kafka timestamp), then ``poll()`` once, then the loop sleeps until
    the next event is due, at least ``min_sleep_s``. Returns each message's actual hand-over time
    (wall-clock ns, read just before its ``produce``).
    """
    due = schedule_ns.tolist()
    n = len(due)
    sent = [0] * n
    i = 0
    while i < n:
        now = clock_ns()
        while i < n and due[i] <= now:
            key, value = messages[i]
            sent[i] = now
            produce(key, value, due[i] // 1_000_000)
            i += 1
            now = clock_ns()
        poll()
        if i < n:
            sleep(max((due[i] - clock_ns()) / 1e9, min_sleep_s))
    return sent


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """The generator's heap frozen out of the cyclic collector's walk while it sends: its
    pre-encoded load is hundreds of thousands of objects, and a full collection over them
    stopped the paced loop for up to 150 ms (the schedule's lateness counts in the latency)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def choose_t0_ns(n: int, encode_s_per_event: float, *, lead_s: float = 2.0) -> int:
    """A start time after the encoding of ``n`` events (estimated, with 50 % margin) plus
    ``lead_s``."""
    return time.time_ns() + int((n * encode_s_per_event * 1.5 + lead_s) * 1e9)


# -- figures ----------------------------------------------------------------------------------


def histogram(values_ms: Iterable[float]) -> dict[str, Any]:
    """Counts of latencies per bucket of :data:`BUCKET_EDGES_MS` (a value below 0 counts in the
    first bucket, one of 100 s or more in the last, open one)."""
    values = np.asarray(list(values_ms), dtype=np.float64)
    edges = np.asarray(BUCKET_EDGES_MS, dtype=np.float64)
    index = np.searchsorted(edges, values, side="right") - 1
    counts = np.bincount(np.clip(index, 0, len(edges) - 1), minlength=len(edges))
    return {"edges_ms": list(BUCKET_EDGES_MS), "counts": [int(c) for c in counts]}


def histogram_percentile(hist: dict[str, Any], q: float) -> float | None:
    """The upper edge of the bucket holding the ``q``-th percentile (an upper bound of it)."""
    counts = np.asarray(hist["counts"], dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return None
    rank = q / 100.0 * total
    index = int(np.searchsorted(np.cumsum(counts), rank, side="left"))
    edges = hist["edges_ms"]
    return float(edges[index + 1]) if index + 1 < len(edges) else float("inf")


#: Count, p50/p95/p99/max and mean of latencies in ms: the peers' drivers' summary, reused.
summary = latency_summary


def lag_summary(sent_ns: Sequence[int], intended_ns: Sequence[int]) -> dict[str, Any]:
    """How far the generator fell behind its schedule: p50/p99/max of (actual - intended) in ms
    (never negative: nothing is sent early)."""
    if len(sent_ns) == 0:
        return {"count": 0}
    lag = (np.asarray(sent_ns, dtype=np.int64) - np.asarray(intended_ns, dtype=np.int64)) / 1e6
    p50, p99 = np.percentile(lag, [50, 99])
    return {
        "count": int(lag.size),
        "p50_ms": round(float(p50), 2),
        "p99_ms": round(float(p99), 2),
        "max_ms": round(float(lag.max()), 2),
    }


def achieved_rate(append_ms: Sequence[int]) -> float | None:
    """Answers per second between the first and the last answer's append time."""
    if len(append_ms) < 2:
        return None
    span_s = max(max(append_ms) - min(append_ms), 1) / 1000.0
    return round((len(append_ms) - 1) / span_s, 1)


def load_points(
    max_rate: float | None,
    fractions: Sequence[float],
    absolute: Sequence[tuple[float, str]],
) -> list[tuple[str, float, float | None]]:
    """``(label, rate, fraction of max or None)`` of each point: the fractions of ``max_rate``
    (none without one), then the absolute rates ``(rate, label)``; a rate equal (to 1 event/s) to
    one already listed is measured once, under both labels."""
    points: list[tuple[str, float, float | None]] = []
    if max_rate:
        for frac in fractions:
            points.append((f"{100 * frac:g} % of max", round(max_rate * frac, 1), frac))
    for rate, label in absolute:
        same = next((k for k, p in enumerate(points) if abs(p[1] - rate) < 1.0), None)
        if same is None:
            points.append((label, round(rate, 1), None))
        else:
            old = points[same]
            points[same] = (f"{old[0]}; {label}", old[1], old[2])
    return points


# -- pinning ----------------------------------------------------------------------------------


def threads_of(pid: int) -> list[int]:
    """Thread ids of a process (just ``pid`` when ``/proc`` cannot tell)."""
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return [pid]


def set_affinity(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` onto ``cpus`` (threads that exit meanwhile are skipped).

    Raises:
        OSError: the process is gone or the mask is refused.
    """
    os.sched_setaffinity(pid, cpus)  # the main thread: raises if the process is gone
    for tid in threads_of(pid):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, cpus)


def affinity_of(pid: int) -> list[int] | None:
    """The sorted CPU mask of ``pid``'s main thread, None if it cannot be read."""
    try:
        return sorted(os.sched_getaffinity(pid))
    except OSError:
        return None


@dataclass
class Pinning:
    """Broker and load generator on one CPU, the worker on another, and back.

    ``plan()`` picks the first two CPUs this process may use; ``apply()`` moves the generator (this
    process, every thread) and the broker (``broker_pid``, when the bench started it) there,
    remembering their masks; ``pin_worker()`` moves a worker; ``restore()`` gives the generator
    and the broker their masks back.
    """

    broker_pid: int | None
    generator_cpu: int = -1
    worker_cpu: int = -1
    possible: bool = False
    reason: str = ""
    _saved: dict[int, set[int]] = field(default_factory=dict)

    def plan(self) -> Pinning:
        if not hasattr(os, "sched_setaffinity"):
            self.reason = "no sched_setaffinity on this platform"
            return self
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            self.reason = f"this process may use {len(cpus)} CPU"
            return self
        self.generator_cpu, self.worker_cpu = cpus[0], cpus[1]
        self.possible = True
        return self

    def apply(self) -> None:
        targets = [os.getpid()] + ([self.broker_pid] if self.broker_pid else [])
        for pid in targets:
            self._saved[pid] = set(os.sched_getaffinity(pid))
            set_affinity(pid, {self.generator_cpu})

    def pin_worker(self, pid: int) -> None:
        set_affinity(pid, {self.worker_cpu})

    def restore(self) -> None:
        for pid, cpus in self._saved.items():
            with contextlib.suppress(OSError):
                set_affinity(pid, cpus)
        self._saved.clear()

    def describe(self) -> str:
        if not self.possible:
            return f"pinned: not possible ({self.reason})"
        broker = "broker, " if self.broker_pid else ""
        note = "" if self.broker_pid else " (the broker is not the bench's own: not pinned)"
        return (
            f"pinned: {broker}load generator and collector on CPU {self.generator_cpu}, "
            f"the worker on CPU {self.worker_cpu}{note}"
        )


def broker_pid_of(pid_file: Path) -> int | None:
    """The pid in the pid file of a broker ``devtools.localkafka`` started (JSON ``pid``)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return int(json.loads(pid_file.read_text())["pid"])
    return None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of every thread of ``pid`` so far, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_ticks() -> dict[str, tuple[int, int]]:
    """``{"cpu0": (busy, total), ...}`` jiffies of every CPU so far (``/proc/stat``; busy = total
    - idle - iowait); empty without ``/proc``."""
    out: dict[str, tuple[int, int]] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            name, *values = line.split()
            if name.startswith("cpu") and name != "cpu":
                ticks = [int(v) for v in values]
                total = sum(ticks[:8])  # user nice system idle iowait irq softirq steal
                out[name] = (total - ticks[3] - ticks[4], total)
    return out


class CpuWindow:
    """CPU seconds of named processes between two wall-clock instants, read on a thread (which
    sleeps in between, so it takes nothing from the load generator)."""

    def __init__(self, pids: dict[str, int], start_ns: int, end_ns: int) -> None:
        self.pids = pids
        self.start_ns, self.end_ns = start_ns, end_ns
        self.readings: list[dict[str, float | None]] = []
        self.ticks: list[dict[str, tuple[int, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-window", daemon=True)

    def start(self) -> CpuWindow:
        self._thread.start()
        return self

    def _run(self) -> None:
        for at in (self.start_ns, self.end_ns):
            if self._stop.wait(max(at - time.time_ns(), 0) / 1e9):
                return
            self.readings.append({name: cpu_seconds(pid) for name, pid in self.pids.items()})
            self.ticks.append(cpu_ticks())

    def shares(self) -> dict[str, float | None]:
        """CPU seconds per wall second over the window (1.0 = one core busy), per process; None
        when the window was not read to its end."""
        self._stop.set()
        self._thread.join(5)
        if len(self.readings) < 2:
            return {name: None for name in self.pids}
        wall = (self.end_ns - self.start_ns) / 1e9
        a, b = self.readings
        out: dict[str, float | None] = {}
        for name in self.pids:
            ca, cb = a[name], b[name]
            out[name] = None if ca is None or cb is None else round((cb - ca) / wall, 2)
        return out

    def cpu_busy(self) -> dict[str, float]:
        """Busy share of each CPU over the window (all processes, the bench's and others')."""
        if len(self.ticks) < 2:
            return {}
        a, b = self.ticks
        return {
            cpu: round((b[cpu][0] - a[cpu][0]) / max(b[cpu][1] - a[cpu][1], 1), 2)
            for cpu in b
            if cpu in a
        }


def others_cpu(shares: dict[str, float | None], busy: dict[str, float]) -> float | None:
    """Cores used by processes other than the measured ones over the window: all CPUs' busy time
    minus the measured processes' shares (other tenants of a shared machine, the kernel)."""
    if not busy or any(v is None for v in shares.values()):
        return None
    return round(max(sum(busy.values()) - sum(v or 0.0 for v in shares.values()), 0.0), 2)
