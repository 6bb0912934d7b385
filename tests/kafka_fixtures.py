"""Where the tests' Kafka broker comes from (imported by tests/conftest.py; not a conftest itself).

Order of choice:

1. ``KAFKA_BOOTSTRAP_SERVERS`` set: an existing cluster, nothing to start or stop.
2. A Docker engine answers ``docker info``: testcontainers' ``KafkaContainer`` in KRaft mode.
3. Otherwise the project's own launcher (``devtools.localkafka``): a real Apache Kafka on free
   ports, with its own state dir under a temp dir, so tests never touch a developer's demo broker.

A broker that cannot be had is an error, never a skip: tests that need Kafka must fail in CI
when the broker is missing.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devtools.localkafka import free_ports

Cleanup = Callable[[], None]

_session: tuple[str, Cleanup] | None = None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def docker_available(timeout_s: float = 5.0) -> bool:
    """True if a Docker engine answers ``docker info`` quickly."""
    if shutil.which("docker") is None:
        return False
    try:
        proc = subprocess.run(
            ["docker", "info"], capture_output=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _start_testcontainer() -> tuple[str, Cleanup]:
    try:
        from testcontainers.community.kafka import KafkaContainer  # testcontainers >= 4.15
    except ImportError:
        from testcontainers.kafka import KafkaContainer

    container = KafkaContainer().with_kraft()
    container.start()
    return container.get_bootstrap_server(), container.stop


def _start_local() -> tuple[str, Cleanup]:
    from devtools.localkafka import LocalKafkaConfig, start, stop

    home = Path(tempfile.mkdtemp(prefix="worker-test-kafka-"))
    port, controller_port = free_ports(2)
    cfg = LocalKafkaConfig(home=home, port=port, controller_port=controller_port, heap_mb=384)

    def cleanup() -> None:
        try:
            stop(cfg)
        finally:
            shutil.rmtree(home, ignore_errors=True)

    try:
        bootstrap = start(cfg)
    except BaseException:
        cleanup()
        raise
    return bootstrap, cleanup


def acquire_broker() -> tuple[str, Cleanup]:
    """A fresh broker handle: ``(bootstrap, cleanup)``. Raises if no broker can be had."""
    existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if existing:
        return existing, lambda: None
    if docker_available():
        return _start_testcontainer()
    return _start_local()


def broker_bootstrap() -> str:
    """The test session's broker bootstrap, started on first call and shared afterwards.

    ``stop_broker`` (also registered with atexit) releases it.
    """
    global _session
    if _session is None:
        _session = acquire_broker()
        atexit.register(stop_broker)
    return _session[0]


def stop_broker() -> None:
    """Release the session broker started by ``broker_bootstrap`` (idempotent)."""
    global _session
    if _session is None:
        return
    _, cleanup = _session
    _session = None
    cleanup()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Session fixture: the bootstrap servers of a real broker (see module docstring)."""
    yield broker_bootstrap()
    stop_broker()
