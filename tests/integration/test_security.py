"""Security over a real broker that requires SASL/SCRAM (started by the project's launcher).

* ``worker topics``, ``worker run`` and ``worker monitor`` authenticate with credentials from the
  environment (``WORKER_KAFKA_*``), the password read from a file (``@/path``) or given with
  ``-X sasl.password=...``, and the pipeline works end to end.
* Wrong credentials end ``worker run`` / ``worker monitor`` quickly with exit code 2 and ONE
  clear error line, not a flood of reconnect failures.
* The password appears nowhere: not in any process's output, not in ``/metrics``, ``/healthz``
  or ``/readyz``, not in the error message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer

from devtools import localkafka
from devtools.localkafka import LocalKafkaConfig
from tests.helpers import (
    cli_args,
    http_get,
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

USER = "alice"
PASSWORD = "s3cr3t-Pa55w0rd-xyz"
WRONG_PASSWORD = "wr0ng-Pa55w0rd-abc"
MECHANISM = "SCRAM-SHA-512"
SECRETS = (PASSWORD, WRONG_PASSWORD)
N_EVENTS = 60
FAIL_FAST_S = 30.0


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory) -> Iterator[str]:
    """A SASL_PLAINTEXT SCRAM-SHA-512 broker on free ports in a temp home, for this module."""
    home = tmp_path_factory.mktemp("kafka-sasl")
    port, controller_port = free_ports(2)
    cfg = LocalKafkaConfig(
        home=home,
        port=port,
        controller_port=controller_port,
        heap_mb=384,
        sasl_users=((USER, PASSWORD),),
    )
    try:
        yield localkafka.start(cfg)
    finally:
        localkafka.stop(cfg)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory) -> Path:
    """Every process's combined stdout/stderr of this module goes here."""
    return tmp_path_factory.mktemp("security-logs")


def client_conf(bootstrap: str, password: str = PASSWORD) -> dict[str, str]:
    return {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": MECHANISM,
        "sasl.username": USER,
        "sasl.password": password,
    }


def sasl_env(password_file: Path | None) -> dict[str, str]:
    """The process environment: SASL settings as WORKER_KAFKA_*, the password from a file."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("WORKER_KAFKA_") and k != "KAFKA_BOOTSTRAP_SERVERS"
    }
    env.update(
        {
            "WORKER_LOG_FORMAT": "json",
            "WORKER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "WORKER_KAFKA_SASL_MECHANISM": MECHANISM,
            "WORKER_KAFKA_SASL_USERNAME": USER,
        }
    )
    if password_file is not None:
        env["WORKER_KAFKA_SASL_PASSWORD"] = f"@{password_file}"
    return env


def password_file(directory: Path, password: str) -> Path:
    path = directory / f"password-{uuid.uuid4().hex[:6]}"
    path.write_text(password + "\n", encoding="utf-8")  # the trailing newline is stripped
    path.chmod(0o600)
    return path


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a password appears in {where}"


def test_topics_worker_and_monitor_authenticate_with_env_file_and_flag_credentials(
    sasl_broker, log_dir, topics, trained_models_dir, simulator_settings, tmp_path
):
    secret_file = password_file(tmp_path, PASSWORD)

    # `worker topics`: the password given on the command line (-X), the rest from the env.
    topics_run = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker.cli",
            "topics",
            *cli_args(sasl_broker, topics),
            "-X",
            f"sasl.password={PASSWORD}",
        ],
        env=sasl_env(None),
        capture_output=True,
        timeout=120,
        check=False,
    )
    topics_out = topics_run.stdout.decode() + topics_run.stderr.decode()
    (log_dir / "topics-ok.log").write_text(topics_out)
    assert topics_run.returncode == 0, topics_out
    assert "created:" in topics_out
    assert_no_secret(topics_out, "`worker topics` output")

    env = sasl_env(secret_file)
    worker_port, monitor_port = free_ports(2)
    worker = spawn(
        [
            "run",
            *cli_args(sasl_broker, topics),
            "--models-dir",
            str(trained_models_dir),
            "--group-id",
            f"sec-{uuid.uuid4().hex[:6]}",
            "--metrics-port",
            str(worker_port),
        ],
        log_dir / "worker-ok.log",
        env,
    )
    monitor = spawn(
        [
            "monitor",
            *cli_args(sasl_broker, topics),
            "--models-dir",
            str(trained_models_dir),
            "--group-id",
            f"sec-mon-{uuid.uuid4().hex[:6]}",
            "--metrics-port",
            str(monitor_port),
        ],
        log_dir / "monitor-ok.log",
        env,
    )
    try:
        codec = codec_for("BrowsingEvent")
        events = simulated_events(simulator_settings, N_EVENTS)
        producer = Producer({**client_conf(sasl_broker), "partitioner": "murmur2_random"})
        for e in events:
            producer.produce(topics.events, key=e["user_id"].encode(), value=codec.encode(e))
        assert producer.flush(30) == 0, "events not acknowledged by the SASL broker"
        del producer

        suggestions = read_n(
            client_conf(sasl_broker), topics.suggestions, topics.partitions, N_EVENTS, 90
        )
        assert len(suggestions) == N_EVENTS
        decoded = [codec_for("ProductSuggestion").decode(m.value()) for m in suggestions]
        assert {s["event_id"] for s in decoded} == {e["event_id"] for e in events}

        worker_metrics = wait_metric(worker_port, "worker_suggestions_produced_total", N_EVENTS)
        monitor_metrics = wait_metric(monitor_port, "monitor_suggestions_consumed_total", N_EVENTS)
        for port, name in ((worker_port, "worker"), (monitor_port, "monitor")):
            for path in ("/healthz", "/readyz"):
                assert_no_secret(http_get(port, path), f"{name} {path}")
        assert_no_secret(worker_metrics, "the worker's /metrics")
        assert_no_secret(monitor_metrics, "the monitor's /metrics")
    finally:
        worker_rc = stop(worker)
        monitor_rc = stop(monitor)
    assert worker_rc == 0
    assert monitor_rc == 0

    for name in ("worker-ok.log", "monitor-ok.log"):
        text = (log_dir / name).read_text()
        assert_no_secret(text, name)
        lines = json_lines(text)
        assert not [r for r in lines if "raw" in r], f"non-JSON lines in {name}"
        assert not [r for r in lines if r.get("level") in ("error", "critical")], text
        assert not [r for r in lines if "authentication" in str(r.get("event"))], text
    started = [
        r
        for r in json_lines((log_dir / "worker-ok.log").read_text())
        if r.get("event") == "worker_started"
    ]
    assert len(started) == 1
    assert "***" in started[0]["kafka"]  # the password is shown masked


@pytest.mark.parametrize("command", ["run", "monitor"])
def test_wrong_password_fails_fast_with_one_clear_error(
    command, sasl_broker, log_dir, topics, trained_models_dir, tmp_path
):
    secret_file = password_file(tmp_path, WRONG_PASSWORD)
    log_path = log_dir / f"{command}-wrong-password.log"
    started = time.monotonic()
    proc = spawn(
        [
            command,
            *cli_args(sasl_broker, topics),
            "--models-dir",
            str(trained_models_dir),
            "--metrics-port",
            "0",
        ],
        log_path,
        sasl_env(secret_file),
    )
    message, text = one_fatal_error(
        proc, log_path, started, FAIL_FAST_S, f"`worker {command}` met an authentication failure"
    )
    assert "authentication failed" in message.lower()
    assert sasl_broker in message and MECHANISM in message and f"user {USER}" in message
    mentions = [line for line in text.splitlines() if "authentic" in line.lower()]
    assert 1 <= len(mentions) < 5, text
    assert_no_secret(text, log_path.name)


def test_no_password_in_any_log_of_this_module(log_dir):
    """The combined output of every process started above (run last in this module)."""
    logs = sorted(log_dir.glob("*.log"))
    assert logs, "no process logs recorded"
    for path in logs:
        assert_no_secret(path.read_text(), path.name)
