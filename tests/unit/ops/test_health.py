"""Liveness and readiness as the probes see them (over real HTTP on loopback)."""

from __future__ import annotations

import http.client
import json
import socket
import struct
import time
import urllib.error
import urllib.request

import pytest
from structlog.testing import capture_logs

from worker.ops.health import Health, serve_http
from worker.ops.metrics import WorkerMetrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def served():
    health = Health(stall_after_s=0.5)
    metrics = WorkerMetrics()
    port = _free_port()
    server = serve_http(port, metrics.registry, health)
    yield health, metrics, port
    server.shutdown()


def test_ready_only_with_model_assignment_and_a_turning_loop(served):
    health, _, port = served
    assert _get(port, "/readyz")[0] == 503  # no model, no partitions yet
    health.model_loaded = True
    assert _get(port, "/readyz")[0] == 503  # still no partitions
    health.assigned_partitions = 3
    health.beat()
    status, detail = _get(port, "/readyz")
    assert status == 200 and detail["assigned_partitions"] == 3


def test_lost_assignment_makes_the_worker_not_ready_but_still_live(served):
    health, _, port = served
    health.model_loaded, health.assigned_partitions = True, 2
    health.beat()
    assert _get(port, "/readyz")[0] == 200
    health.assigned_partitions = 0  # partitions revoked or lost
    assert _get(port, "/readyz")[0] == 503
    assert _get(port, "/healthz")[0] == 200


def test_a_stalled_poll_loop_fails_liveness(served):
    health, _, port = served
    health.model_loaded, health.assigned_partitions = True, 1
    health.beat()
    assert _get(port, "/healthz")[0] == 200
    time.sleep(0.7)  # longer than stall_after_s without a beat
    status, detail = _get(port, "/healthz")
    assert status == 503 and detail["loop_age_s"] >= 0.5
    assert _get(port, "/readyz")[0] == 503


def test_a_partition_not_fetched_fails_liveness_while_the_loop_turns(served):
    health, _, port = served
    health.model_loaded, health.assigned_partitions = True, 3
    health.beat()
    health.fetch_stalled = 1  # set from librdkafka statistics by FetchWatch
    status, detail = _get(port, "/healthz")
    assert status == 503 and detail["fetch_stalled_partitions"] == 1 and detail["loop_age_s"] < 0.5
    health.fetch_stalled = 0
    assert _get(port, "/healthz")[0] == 200


def test_stuck_outputs_fail_liveness_while_the_loop_turns(served):
    health, _, port = served
    health.model_loaded, health.assigned_partitions = True, 3
    health.beat()  # the flush keeps beating while it waits
    health.outputs_stuck = True  # set by the checkpoint's AckWatch (at-least-once)
    status, detail = _get(port, "/healthz")
    assert status == 503 and detail["outputs_stuck"] is True and detail["loop_age_s"] < 0.5
    health.outputs_stuck = False
    assert _get(port, "/healthz")[0] == 200


def test_backpressure_and_shutdown_make_the_worker_not_ready(served):
    health, _, port = served
    health.model_loaded, health.assigned_partitions = True, 1
    health.beat()
    health.backpressure = True
    status, detail = _get(port, "/readyz")
    assert status == 503 and detail["backpressure"] is True
    health.backpressure, health.stopping = False, True
    assert _get(port, "/readyz")[0] == 503


def test_metrics_endpoint_serves_prometheus_text(served):
    _, metrics, port = served
    metrics.events_in.inc(7)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert "worker_events_consumed_total 7.0" in text


def _abort(port: int, path: str) -> None:
    """A probe that sends its request and resets the connection before the answer."""
    client = socket.create_connection(("127.0.0.1", port))
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.sendall(f"GET {path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())
    client.close()


def test_probes_that_give_up_early_print_nothing(served, capfd):
    """A probe that times out on a busy worker must not put a traceback on stderr (the log is
    JSON lines); the server goes on answering."""
    health, _, port = served
    health.stall_after_s = 60.0  # what is checked is that the server answers, not how fast
    for path in ("/metrics", "/healthz", "/readyz") * 5:
        _abort(port, path)
    health.beat()
    assert _get(port, "/healthz")[0] == 200
    time.sleep(0.2)  # the aborted requests' threads finish
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err
    assert captured.err == ""


def test_a_failing_request_is_one_structured_line(served, capfd):
    health, _, port = served

    def broken() -> tuple[bool, dict]:
        raise RuntimeError("probe state unreadable")

    health.live = broken  # type: ignore[method-assign]  (the failure under test)
    with capture_logs() as logs:
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            _get(port, "/healthz")
        time.sleep(0.2)
    assert "Traceback" not in capfd.readouterr().err
    assert [e["event"] for e in logs] == ["http_request_failed"]
    assert logs[0]["error_class"] == "RuntimeError"
