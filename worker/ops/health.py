"""The health endpoints and the small HTTP server that also serves ``/metrics``.

``GET /metrics`` Prometheus text format; ``GET /healthz`` liveness (200 while the poll loop has
turned within ``stall_after_s``, no assigned partition has gone unfetched for
:data:`worker.kafka.watches.FETCH_STALL_S` and no batch's outputs are stuck); ``GET /readyz``
readiness (200 when the model is loaded, the consumer holds an assignment and the loop is live).
Port 0 disables the server.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

#: A probe that gave up before its answer (a paused or busy process): not worth a line.
_CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class _ProbeServer(ThreadingHTTPServer):
    """The stdlib server, except that a failed request is one structured log line, never a
    traceback on stderr (which would break the JSON log), and a client that went away before
    its answer is not reported at all."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, _CLIENT_GONE):
            return
        structlog.get_logger().warning(
            "http_request_failed",
            client=str(client_address[0]) if client_address else None,
            error_class=type(error).__name__,
            error=str(error),
        )


def rss_mib() -> float:
    """This process's resident set in MiB (-1 where /proc is not available)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return -1.0
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


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

    server = _ProbeServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
