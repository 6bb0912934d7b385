"""Every line `worker run` and `worker monitor` write is a JSON log record: with malformed
input, with health probes that give up before the answer (a paused or busy kubelet) or send
half a request, and after both were frozen past the worker's group session timeout (librdkafka
then reports the lost session and the rejoin). Both processes' whole output is read, stdout and
stderr together. (`worker-dev chaos` checks the workers' output under its faults too.)"""

from __future__ import annotations

import signal
import socket
import time
import uuid

import pytest

from tests.helpers import (
    cli_args,
    http_get,
    json_lines,
    produce,
    read_n,
    simulated_events,
    spawn,
    stop,
    wait_metric,
)
from tests.kafka_fixtures import free_ports
from worker.config import KafkaSettings
from worker.kafka.admin import ensure_topics
from worker.wire.codec import codec_for

pytestmark = pytest.mark.kafka

N_EVENTS = 40
FREEZE_S = 12.0  # past the worker's 10 s group session timeout


class _Quiet:
    def info(self, *_args, **_kwargs) -> None:
        return None


def rude_probes(port: int) -> None:
    """Probes that hang up: half a request, a request not waited for, a reset connection."""
    for payload in (b"GET /heal", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b""):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            if payload:
                s.sendall(payload)
            if not payload:  # RST instead of FIN
                s.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
    for path in ("/healthz", "/readyz", "/metrics"):  # and whole ones in between
        http_get(port, path)


def test_worker_and_monitor_output_is_only_json(
    kafka_bootstrap, topics, trained_models_dir, simulator_settings, tmp_path
):
    ensure_topics(KafkaSettings(kafka_bootstrap), topics, _Quiet())  # before either subscribes
    worker_port, monitor_port = free_ports(2)
    common = [*cli_args(kafka_bootstrap, topics), "--models-dir", str(trained_models_dir)]
    worker = spawn(
        ["run", *common, "--group-id", f"json-{uuid.uuid4().hex[:6]}"]
        + ["--metrics-port", str(worker_port)],
        tmp_path / "worker.log",
    )
    monitor = spawn(
        ["monitor", *common, "--group-id", f"json-mon-{uuid.uuid4().hex[:6]}"]
        + ["--metrics-port", str(monitor_port)],
        tmp_path / "monitor.log",
    )
    try:
        codec = codec_for("BrowsingEvent")
        events = simulated_events(simulator_settings, N_EVENTS)
        wait_metric(worker_port, "worker_assigned_partitions", 1)
        records = [(topics.events, e["user_id"].encode(), codec.encode(e)) for e in events]
        records += [(topics.events, b"u-bad", b"\x00not avro"), (topics.events, None, None)]
        produce(kafka_bootstrap, records)
        conf = {"bootstrap.servers": kafka_bootstrap}
        assert len(read_n(conf, topics.suggestions, topics.partitions, N_EVENTS, 90)) == N_EVENTS
        wait_metric(monitor_port, "monitor_suggestions_consumed_total", N_EVENTS)
        for _ in range(3):
            rude_probes(worker_port)
            rude_probes(monitor_port)
            time.sleep(0.2)
        for proc in (worker, monitor):
            proc.send_signal(signal.SIGSTOP)
        time.sleep(FREEZE_S)
        for proc in (worker, monitor):
            proc.send_signal(signal.SIGCONT)
        produce(kafka_bootstrap, records[:N_EVENTS])  # answered once the worker has rejoined
        assert (
            len(read_n(conf, topics.suggestions, topics.partitions, 2 * N_EVENTS, 120))
            == 2 * N_EVENTS
        )
        wait_metric(monitor_port, "monitor_suggestions_consumed_total", 2 * N_EVENTS)
    finally:
        worker_rc = stop(worker)
        monitor_rc = stop(monitor)
    assert (worker_rc, monitor_rc) == (0, 0)
    for name, started, stopped in (
        ("worker.log", "worker_started", "worker_stopped"),
        ("monitor.log", "monitor_started", "monitor_stopped"),
    ):
        text = (tmp_path / name).read_text()
        lines = json_lines(text)
        assert not [r["raw"] for r in lines if "raw" in r], f"non-JSON lines in {name}:\n{text}"
        assert {started, stopped} <= {r.get("event") for r in lines}, text
    worker_events = {r.get("event") for r in json_lines((tmp_path / "worker.log").read_text())}
    assert "partitions_lost" in worker_events  # the freeze cost the worker its group session
