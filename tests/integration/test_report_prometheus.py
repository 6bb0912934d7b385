"""The runtime panels of ``worker report`` from a real Prometheus server (Debian's
``prometheus`` package, the same one that ships promtool for tests/deploy/test_alert_rules.py;
required, never skipped) scraping the worker's and the monitor's own metric registries every
second through the product's /metrics server: every query of every panel is accepted by
Prometheus, and the gauges come back as they were set; then ``worker report --prometheus-url``
end to end (an empty accuracy topic on the real broker) draws them and prints the drift line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import NewTopic

from tests.kafka_fixtures import free_port
from worker import cli
from worker.apps import report
from worker.config import KafkaSettings
from worker.core import report as series
from worker.core.report import AccuracyWindows, Panel
from worker.kafka.admin import admin_client
from worker.ops.health import Health, serve_http
from worker.ops.metrics import MonitorMetrics, WorkerMetrics
from worker.ops.prometheus import PrometheusClient

pytestmark = pytest.mark.kafka  # the command end to end reads an accuracy topic

SCRAPE_S = 1


def _prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.fail(
            "prometheus not found on PATH: install Debian's prometheus package "
            "(apt-get install --no-install-recommends prometheus; .ci/run does) or put a "
            "Prometheus release's binary on PATH"
        )
    return path


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def exporters() -> Iterator[tuple[WorkerMetrics, MonitorMetrics, int, int]]:
    worker, monitor = WorkerMetrics(), MonitorMetrics()
    worker_port, monitor_port = free_port(), free_port()
    servers = [
        serve_http(worker_port, worker.registry, Health()),
        serve_http(monitor_port, monitor.registry, Health()),
    ]
    yield worker, monitor, worker_port, monitor_port
    for server in servers:
        assert server is not None
        server.shutdown()
        server.server_close()


@pytest.fixture
def prometheus(tmp_path: Path, exporters) -> Iterator[str]:
    _, _, worker_port, monitor_port = exporters
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"""
global:
  scrape_interval: {SCRAPE_S}s
  evaluation_interval: {SCRAPE_S}s
scrape_configs:
  - job_name: worker
    static_configs: [{{targets: ["127.0.0.1:{worker_port}"], labels: {{pod: worker-0}}}}]
  - job_name: monitor
    static_configs: [{{targets: ["127.0.0.1:{monitor_port}"], labels: {{pod: monitor-0}}}}]
"""
    )
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [
            _prometheus_binary(),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        "prometheus did not start: "
                        + (tmp_path / "prometheus.log").read_text()[-2000:]
                    ) from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def _line_values(panel: Panel) -> dict[str, list[float]]:
    return {line.label: [v for v in line.values if v is not None] for line in panel.lines}


def test_runtime_panels_from_a_real_prometheus(
    exporters, prometheus, tmp_path: Path, kafka_bootstrap, capsys
) -> None:
    worker, monitor, _, _ = exporters
    worker.sessions.set(42)
    worker.assigned.set(3)
    worker.lag.set(7)
    worker.input_drift.labels(quantity="event_type").set(0.3)
    worker.input_drift.labels(quantity="session_length").set(0.02)
    for partition, lag in ((0, 1), (1, 2), (2, 4)):
        monitor.group_lag.labels(partition=str(partition)).set(lag)
    monitor.group_lag_total.set(7)
    stop = threading.Event()

    def traffic() -> None:  # about 100 events/s, a dead letter every 0.1 s
        while not stop.is_set():
            worker.events_in.inc(10)
            worker.suggestions_out.inc(10)
            worker.dead_letters.labels(error_class="CorruptPayloadError").inc()
            worker.batch_size.observe(10)
            worker.latency.observe(0.04)
            for stage in ("decode", "score"):
                worker.stage_seconds.labels(stage=stage).observe(0.002)
            stop.wait(0.1)

    thread = threading.Thread(target=traffic, daemon=True)
    since_ms = int(time.time() * 1000)
    thread.start()
    client = PrometheusClient(prometheus)
    try:
        # Until both targets have been scraped a few times (the first scrape waits a while).
        deadline = time.monotonic() + 60
        while True:
            time.sleep(SCRAPE_S)
            now = time.time()
            scraped = client.query_range("count_over_time(up[1m]) >= 6", now - 1, now, SCRAPE_S)
            if len(scraped) == 2:
                break
            assert time.monotonic() < deadline, f"not scraped enough: {scraped}"
        until_ms = int(time.time() * 1000)
    finally:
        stop.set()
        thread.join()

    panels = {
        p.title: p
        for p in report.runtime_panels(client, since_ms, until_ms, scrape_interval_s=SCRAPE_S)
    }
    assert list(panels) == [spec.title for spec in series.RUNTIME_PANELS]

    sessions = _line_values(panels["Active sessions per pod"])
    assert list(sessions) == ["worker-0"] and set(sessions["worker-0"]) == {42.0}
    lag = _line_values(panels["Consumer lag: workers vs broker"])
    assert set(lag["workers (self-reported)"]) == {7.0} == set(lag["broker (monitor probe)"])
    per_partition = _line_values(panels["Group lag per partition (broker)"])
    assert {k: set(v) for k, v in per_partition.items()} == {
        "partition 0": {1.0},
        "partition 1": {2.0},
        "partition 2": {4.0},
    }
    replicas = _line_values(panels["Replicas against partitions"])
    assert set(replicas["worker replicas"]) == {1.0}
    assert set(replicas["partitions assigned"]) == {3.0} == set(replicas["partitions (broker)"])
    drift = _line_values(panels["Input drift (PSI) by quantity"])
    assert {k: set(v) for k, v in drift.items()} == {
        "event_type": {0.3},
        "session_length": {0.02},
    }
    # Rates and quantiles: present and plausible (their exact values depend on scrape timing).
    events = _line_values(panels["Throughput: events in, suggestions out"])["events consumed"]
    assert events and all(5 < v < 400 for v in events)
    dead = _line_values(panels["Dead letters by error class"])
    assert list(dead) == ["worker CorruptPayloadError"] and max(dead.popitem()[1]) > 1
    latency = _line_values(panels["Event-to-suggestion latency"])
    assert set(latency) == {"p50", "p95", "p99"} and all(0.02 <= v <= 0.05 for v in latency["p50"])
    assert set(_line_values(panels["Stage time p95 by stage"])) == {"decode", "score"}
    memory = _line_values(panels["Resident memory per pod"])
    assert set(memory) == {"worker worker-0", "monitor monitor-0"}
    assert all(v > 10e6 for values in memory.values() for v in values)

    # And into the image, with the drift line.
    read = report.AccuracyRead("acc", AccuracyWindows(since_ms, until_ms))
    built = report.build_report(read, tuple(panels.values()), source=client.shown_url)
    assert built.summary[-1] == (
        "input drift: highest PSI 0.300 (event_type) over 2 quantities; at or above 0.25: "
        "event_type"
    )
    out = tmp_path / "runtime.png"
    width, height = report.write_png(built, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and width == 1600

    # The command end to end: the same period, Prometheus and an empty accuracy topic.
    topic = f"accuracy-prom-{uuid.uuid4().hex[:8]}"
    admin = admin_client(KafkaSettings(kafka_bootstrap))
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result(30)
    cli_out = tmp_path / "cli.png"
    code = cli.main(
        [
            "report",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--accuracy-topic",
            topic,
            "--since",
            str(since_ms),
            "--until",
            str(until_ms),
            "--output",
            str(cli_out),
            "--prometheus-url",
            prometheus,
            "--prometheus-selector",
            'job=~"worker|monitor"',
            "--scrape-interval-s",
            str(SCRAPE_S),
        ]
    )
    printed = capsys.readouterr().out.splitlines()
    assert code == 0, printed
    assert printed[1:] == [
        "accuracy reports: 0 read, 0 windows in the period, 0 duplicate, 0 outside the period, "
        "0 undecodable",
        f"runtime: 11 panels from {prometheus}",
        built.summary[-1],
    ]
    assert printed[0] == f"wrote {cli_out} ({width}x{height} px)"
    assert cli_out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
