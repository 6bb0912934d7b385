"""Liveness and readiness as the probes see them (over real HTTP on loopback)."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import pytest

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
