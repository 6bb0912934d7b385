"""TLS over a real broker: the launcher's SASL_SSL listener with its self-signed certificate.

* ``worker topics``, ``worker run`` and ``worker monitor`` authenticate with SCRAM over TLS,
  trusting the broker's certificate through ``WORKER_KAFKA_SSL_CA_LOCATION``, and the worker
  answers every event (read back over TLS).
* A process that does not trust the certificate (no CA configured, or another self-signed one)
  ends within seconds with exit code 2 and ONE clear error line, not a flood of handshake
  failures.
* No password (the SCRAM user's, the inter-broker admin's, the keystore's) appears in any
  process's output nor in the broker's logs.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from confluent_kafka import Producer

from devtools import localkafka
from devtools.localkafka import LocalKafkaConfig, LocalKafkaError
from tests.helpers import (
    cli_args,
    json_lines,
    one_fatal_error,
    read_n,
    simulated_events,
    spawn,
    stop,
    wait_metric,
)
from tests.kafka_fixtures import free_ports
from worker.wire.codec import codec_for

pytestmark = pytest.mark.kafka

USER = "tls-alice"
PASSWORD = "tls-s3cr3t-Pa55w0rd-q7"
MECHANISM = "SCRAM-SHA-512"
N_EVENTS = 40
FAIL_FAST_S = 30.0


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory) -> Iterator[LocalKafkaConfig]:
    """A SASL_SSL (SCRAM-SHA-512 over TLS) broker on free ports in a temp home, for this module."""
    home = tmp_path_factory.mktemp("kafka-tls")
    port, controller_port = free_ports(2)
    cfg = LocalKafkaConfig(
        home=home,
        port=port,
        controller_port=controller_port,
        heap_mb=384,
        sasl_users=((USER, PASSWORD),),
        tls=True,
    )
    try:
        localkafka.start(cfg)
        yield cfg
    finally:
        localkafka.stop(cfg)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> Path:
    """Another self-signed certificate for localhost/127.0.0.1: not the broker's."""
    home = tmp_path_factory.mktemp("other-ca")
    return localkafka.ensure_certificate(
        LocalKafkaConfig(home=home, port=1, controller_port=2, tls=True)
    )


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory) -> Path:
    """Every process's combined stdout/stderr of this module goes here."""
    return tmp_path_factory.mktemp("tls-logs")


def secrets_of(cfg: LocalKafkaConfig) -> list[str]:
    """The user's password, and the admin and keystore passwords the launcher made."""
    stored = [cfg.config_dir / "admin.secret", cfg.tls_dir / "broker.p12.secret"]
    return [PASSWORD, *(path.read_text().strip() for path in stored)]


def assert_no_secret(cfg: LocalKafkaConfig, text: str, where: str) -> None:
    for secret in secrets_of(cfg):
        assert secret not in text, f"a password appears in {where}"


def tls_env(ca_file: Path | None, password_file: Path) -> dict[str, str]:
    """The process environment: SASL_SSL settings as WORKER_KAFKA_*, the password from a file."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("WORKER_KAFKA_") and k != "KAFKA_BOOTSTRAP_SERVERS"
    }
    env.update(
        {
            "WORKER_LOG_FORMAT": "json",
            "WORKER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "WORKER_KAFKA_SASL_MECHANISM": MECHANISM,
            "WORKER_KAFKA_SASL_USERNAME": USER,
            "WORKER_KAFKA_SASL_PASSWORD": f"@{password_file}",
        }
    )
    if ca_file is not None:
        env["WORKER_KAFKA_SSL_CA_LOCATION"] = str(ca_file)
    return env


def write_password(directory: Path) -> Path:
    path = directory / f"password-{uuid.uuid4().hex[:6]}"
    path.write_text(PASSWORD + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def test_certificate_is_made_once_and_kept_private(tls_broker):
    ca = tls_broker.ca_file
    keystore = tls_broker.tls_dir / "broker.p12"
    before = (ca.read_bytes(), keystore.read_bytes())
    assert localkafka.ensure_certificate(tls_broker) == ca
    assert (ca.read_bytes(), keystore.read_bytes()) == before  # reused, not remade
    assert ca.read_text().startswith("-----BEGIN CERTIFICATE-----")
    for path in (keystore, tls_broker.tls_dir / "broker.p12.secret"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((tls_broker.config_dir / "server.properties").stat().st_mode) == 0o600

    status = localkafka.status(tls_broker)
    assert (status["running"], status["tls"], status["ca_file"]) == (True, True, str(ca))
    assert localkafka.start(tls_broker) == tls_broker.bootstrap  # found running, over TLS
    with pytest.raises(LocalKafkaError, match="tls=True; stop it first"):
        localkafka.start(replace(tls_broker, tls=False), timeout_s=5)


def test_topics_worker_and_monitor_work_over_sasl_ssl(
    tls_broker, log_dir, topics, trained_models_dir, simulator_settings, tmp_path
):
    bootstrap = tls_broker.bootstrap
    env = tls_env(tls_broker.ca_file, write_password(tmp_path))

    topics_run = subprocess.run(
        [sys.executable, "-m", "worker.cli", "topics", *cli_args(bootstrap, topics)],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    topics_out = topics_run.stdout.decode() + topics_run.stderr.decode()
    (log_dir / "topics-ok.log").write_text(topics_out)
    assert topics_run.returncode == 0, topics_out
    assert "created:" in topics_out

    worker_port, monitor_port = free_ports(2)
    common = ["--models-dir", str(trained_models_dir)]
    worker = spawn(
        ["run", *cli_args(bootstrap, topics), *common, "--group-id", f"tls-{uuid.uuid4().hex[:6]}"]
        + ["--metrics-port", str(worker_port)],
        log_dir / "worker-ok.log",
        env,
    )
    monitor = spawn(
        ["monitor", *cli_args(bootstrap, topics), *common]
        + ["--group-id", f"tls-mon-{uuid.uuid4().hex[:6]}", "--metrics-port", str(monitor_port)],
        log_dir / "monitor-ok.log",
        env,
    )
    try:
        # The test's own clients go through the launcher's settings: SASL_SSL trusting ca.pem.
        conf = localkafka.admin_client_config(tls_broker, user=USER)
        assert conf["security.protocol"] == "SASL_SSL"
        assert conf["ssl.ca.location"] == str(tls_broker.ca_file)
        codec = codec_for("BrowsingEvent")
        events = simulated_events(simulator_settings, N_EVENTS)
        assert len(events) == N_EVENTS
        producer = Producer({**conf, "partitioner": "murmur2_random"})
        for e in events:
            producer.produce(topics.events, key=e["user_id"].encode(), value=codec.encode(e))
        assert producer.flush(30) == 0, "events not acknowledged by the TLS broker"
        del producer

        suggestions = read_n(conf, topics.suggestions, topics.partitions, N_EVENTS, 90)
        assert len(suggestions) == N_EVENTS
        decoded = [codec_for("ProductSuggestion").decode(m.value()) for m in suggestions]
        assert {s["event_id"] for s in decoded} == {e["event_id"] for e in events}

        wait_metric(worker_port, "worker_suggestions_produced_total", N_EVENTS)
        wait_metric(monitor_port, "monitor_suggestions_consumed_total", N_EVENTS)
    finally:
        worker_rc = stop(worker)
        monitor_rc = stop(monitor)
    assert worker_rc == 0
    assert monitor_rc == 0

    for name in ("worker-ok.log", "monitor-ok.log"):
        text = (log_dir / name).read_text()
        lines = json_lines(text)
        assert not [r for r in lines if "raw" in r], f"non-JSON lines in {name}"
        assert not [r for r in lines if r.get("level") in ("error", "critical")], text
    started = [
        r
        for r in json_lines((log_dir / "worker-ok.log").read_text())
        if r.get("event") == "worker_started"
    ]
    assert len(started) == 1
    assert "SASL_SSL" in started[0]["kafka"] and "***" in started[0]["kafka"]


@pytest.mark.parametrize(
    ("command", "trust"), [("run", "no-ca"), ("run", "other-ca"), ("monitor", "other-ca")]
)
def test_untrusted_certificate_fails_fast_with_one_clear_error(
    command, trust, tls_broker, other_ca, log_dir, topics, trained_models_dir, tmp_path
):
    log_path = log_dir / f"{command}-{trust}.log"
    ca_file = other_ca if trust == "other-ca" else None
    started = time.monotonic()
    proc = spawn(
        [command, *cli_args(tls_broker.bootstrap, topics)]
        + ["--models-dir", str(trained_models_dir), "--metrics-port", "0"],
        log_path,
        tls_env(ca_file, write_password(tmp_path)),
    )
    message, text = one_fatal_error(
        proc, log_path, started, FAIL_FAST_S, f"`worker {command}` met a failed TLS handshake"
    )
    assert f"TLS handshake with {tls_broker.bootstrap} failed" in message
    assert "certificate is not trusted" in message and "ssl.ca.location" in message
    mentions = [line for line in text.splitlines() if "certificate" in line.lower()]
    assert len(mentions) == 1, text
    assert len(json_lines(text)) < 10, text  # no flood of handshake failures


def test_no_password_in_any_log_of_this_module(tls_broker, log_dir):
    """Every process's output above and the broker's own logs (run last in this module)."""
    logs = sorted(log_dir.glob("*.log"))
    assert len(logs) >= 5, logs
    for path in [*logs, *sorted(tls_broker.logs_dir.iterdir())]:
        assert_no_secret(tls_broker, path.read_text(errors="replace"), path.name)
