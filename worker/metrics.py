"""Prometheus metrics and the health endpoints, served on one small HTTP port.

``GET /metrics`` Prometheus text format; ``GET /healthz`` liveness (200 while the poll loop has
turned within ``stall_after_s`` and no assigned partition has gone unfetched for
``FETCH_STALL_S``); ``GET /readyz`` readiness (200 when the model is loaded, the
consumer holds an assignment and the loop is live). Port 0 disables the server.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST


def rss_mib() -> float:
    """This process's resident set in MiB (-1 where /proc is not available)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return -1.0
    import os

    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


#: An assigned partition that librdkafka has not been fetching for this long fails liveness.
FETCH_STALL_S = 60.0


class FetchWatch:
    """Assigned partitions that the client is not fetching, from librdkafka's statistics.

    A partition the application holds (``desired``) normally sits in fetch state ``active``;
    it leaves it only briefly (an offset lookup, a seek, a leader change). One that stays out of
    it for ``stall_after_s`` is stalled: the loop turns and looks healthy but that partition's
    events are never read. Restarting the process is the known cure, so it fails liveness.
    """

    def __init__(self, stall_after_s: float = FETCH_STALL_S) -> None:
        self.stall_after_s = stall_after_s
        self._since: dict[tuple[str, int], float] = {}
        self.states: dict[tuple[str, int], str] = {}

    def observe(self, stats: dict[str, Any], now: float) -> list[tuple[str, int]]:
        """Feed one statistics object; return the stalled partitions, sorted."""
        states = {}
        for name, topic in stats.get("topics", {}).items():
            for p in topic.get("partitions", {}).values():
                number = p.get("partition", -1)
                if number < 0 or not p.get("desired", False):
                    continue
                state = p.get("fetch_state", "")
                if state != "active":
                    states[(name, number)] = state
        self.states = states
        self._since = {tp: self._since.get(tp, now) for tp in states}
        return sorted(tp for tp, t in self._since.items() if now - t >= self.stall_after_s)

    def update(self, stats: dict[str, Any], health: Health, gauge: Any, log: Any) -> None:
        """Feed one statistics object and report: ``health`` (liveness), ``gauge`` and, when a
        stall starts, one ``fetch_stalled`` error line."""
        stalled = self.observe(stats, time.monotonic())
        if stalled and not health.fetch_stalled:
            log.error(
                "fetch_stalled",
                partitions=[f"{t}/{p}" for t, p in stalled],
                fetch_states=sorted({self.states[tp] for tp in stalled}),
                stalled_for_s=self.stall_after_s,
            )
        health.fetch_stalled = len(stalled)
        gauge.set(len(stalled))


LATENCY_BUCKETS_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
STAGE_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class Health:
    """What the probes report; updated by the loop, read by the HTTP thread."""

    def __init__(self, stall_after_s: float = 30.0) -> None:
        self.stall_after_s = stall_after_s
        self.model_loaded = False
        self.assigned_partitions = 0
        self.last_loop_monotonic = time.monotonic()
        self.stopping = False
        self.backpressure = False  # a batch is waiting for the broker to acknowledge its outputs
        self.fetch_stalled = 0  # assigned partitions not fetched for FETCH_STALL_S (FetchWatch)
        self.outputs_stuck = False  # at-least-once outputs unacknowledged though the broker answers

    def beat(self) -> None:
        self.last_loop_monotonic = time.monotonic()

    def live(self) -> tuple[bool, dict[str, Any]]:
        age = time.monotonic() - self.last_loop_monotonic
        detail = {
            "loop_age_s": round(age, 3),
            "fetch_stalled_partitions": self.fetch_stalled,
            "outputs_stuck": self.outputs_stuck,
        }
        return (
            age < self.stall_after_s and not self.fetch_stalled and not self.outputs_stuck,
            detail,
        )

    def ready(self) -> tuple[bool, dict[str, Any]]:
        live, detail = self.live()
        detail.update(
            model_loaded=self.model_loaded,
            assigned_partitions=self.assigned_partitions,
            stopping=self.stopping,
            backpressure=self.backpressure,
        )
        ok = (
            live
            and self.model_loaded
            and self.assigned_partitions > 0
            and not self.stopping
            and not self.backpressure
        )
        return ok, detail


class WorkerMetrics:
    """The worker's metrics, in their own registry (tests may build several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, CPU, fds
        r = self.registry
        self.events_in = Counter(
            "worker_events_consumed_total", "Browsing events consumed", registry=r
        )
        self.suggestions_out = Counter(
            "worker_suggestions_produced_total",
            "Suggestions acknowledged by the broker",
            registry=r,
        )
        self.dead_letters = Counter(
            "worker_dead_letters_total",
            "Records sent to the dead-letter topic",
            ["error_class"],
            registry=r,
        )
        self.batches = Counter("worker_batches_total", "Micro-batches processed", registry=r)
        self.batch_size = Histogram(
            "worker_batch_size_events",
            "Events per micro-batch",
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
            registry=r,
        )
        self.stage_seconds = Histogram(
            "worker_stage_seconds",
            "Seconds per micro-batch and stage",
            ["stage"],
            buckets=STAGE_BUCKETS_S,
            registry=r,
        )
        self.latency = Histogram(
            "worker_event_to_suggestion_seconds",
            "Event time to suggestion acknowledged by the broker",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.sessions = Gauge("worker_active_sessions", "Users held in session state", registry=r)
        self.lag = Gauge(
            "worker_consumer_lag_messages",
            "Consumer lag summed over assigned partitions",
            registry=r,
        )
        self.assigned = Gauge("worker_assigned_partitions", "Partitions assigned", registry=r)
        self.fetch_stalled = Gauge(
            "worker_fetch_stalled_partitions",
            "Assigned partitions the client has not fetched for FETCH_STALL_S (fails liveness)",
            registry=r,
        )
        self.outputs_stuck = Gauge(
            "worker_outputs_stuck",
            "1 while a batch's outputs stay unacknowledged though the broker answers"
            " (at-least-once; fails liveness)",
            registry=r,
        )
        self.producer_replacements = Counter(
            "worker_producer_replacements_total",
            "Output producers replaced because they were stuck or their transaction was abandoned",
            registry=r,
        )
        self.model_info = Gauge(
            "worker_model_info", "Loaded model version", ["version"], registry=r
        )


class MonitorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, CPU, fds
        r = self.registry
        self.suggestions_in = Counter(
            "monitor_suggestions_consumed_total", "Suggestions consumed", registry=r
        )
        self.purchases_in = Counter(
            "monitor_purchases_consumed_total", "Purchase lines consumed", registry=r
        )
        self.duplicates = Counter(
            "monitor_duplicate_suggestions_total", "Suggestions seen twice", registry=r
        )
        self.dead_letters = Counter(
            "monitor_dead_letters_total", "Records dead-lettered", ["error_class"], registry=r
        )
        self.late = Counter(
            "monitor_late_purchases_total", "Purchases after their window closed", registry=r
        )
        self.reports = Counter("monitor_reports_total", "Window reports emitted", registry=r)
        self.hit_rate = Gauge(
            "monitor_hit_rate_at_k", "Hit rate@K of the last closed window", registry=r
        )
        self.baseline_hit_rate = Gauge(
            "monitor_baseline_hit_rate_at_k",
            "Popularity baseline hit rate@K of the last closed window",
            registry=r,
        )
        self.precision = Gauge(
            "monitor_precision_at_k", "Precision@K of the last closed window", registry=r
        )
        self.cumulative_hit_rate = Gauge(
            "monitor_cumulative_hit_rate_at_k", "Hit rate@K since start", registry=r
        )
        self.fetch_stalled = Gauge(
            "monitor_fetch_stalled_partitions",
            "Assigned partitions the client has not fetched for FETCH_STALL_S (fails liveness)",
            registry=r,
        )
        self.outputs_stuck = Gauge(
            "monitor_outputs_stuck",
            "1 while accuracy records stay unacknowledged though the broker answers, after one"
            " fresh producer was tried too (fails liveness)",
            registry=r,
        )
        self.producer_replacements = Counter(
            "monitor_producer_replacements_total",
            "Output producers replaced because they were stuck",
            registry=r,
        )
        self.pending = Gauge(
            "monitor_pending_purchases", "Purchases waiting for their suggestions", registry=r
        )


def serve_http(
    port: int, registry: CollectorRegistry, health: Health
) -> ThreadingHTTPServer | None:
    """Start the metrics/health server in a daemon thread; None when ``port`` is 0."""
    if port == 0:
        return None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif self.path in ("/healthz", "/readyz"):
                ok, detail = health.live() if self.path == "/healthz" else health.ready()
                self._send(200 if ok else 503, json.dumps(detail).encode(), "application/json")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return  # probes are not worth a log line each

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
