"""Launcher for a real local Apache Kafka 4.x broker (KRaft, single node), without Docker.

The broker jars come from Maven Central: a generated one-file ``pom.xml`` lists
``org.apache.kafka:kafka_2.13`` plus the log4j2 backend that no Kafka POM brings, and
``maven-dependency-plugin:copy-dependencies`` copies the runtime closure into a cache directory,
once per Kafka version. ``start`` then writes ``server.properties`` and a log4j2 configuration into
the state directory, formats the KRaft storage with ``kafka.tools.StorageTool`` (static
``controller.quorum.voters``; SCRAM users created with ``--add-scram``), launches
``java -cp 'libs/*' kafka.Kafka server.properties`` in its own session and waits until a
metadata request answers. In TLS mode the JDK's ``keytool`` first makes a self-signed certificate
for ``localhost``/``127.0.0.1``, once per home; clients trust it through ``ssl.ca.location``.

Layout of the state directory (``home``)::

    home/config/server.properties   generated on every start (mode 0600: it holds secrets)
    home/config/log4j2.xml          INFO to logs/server.log, WARN to the console (logs/server.out)
    home/data/                      KRaft metadata and topic partitions (``wipe`` deletes it)
    home/logs/server.log            broker log; logs/server.out: JVM stdout/stderr
    home/kafka.pid                  JSON: pid, ports, version of the broker this launcher started
    home/format.json                cluster id and SCRAM fingerprint of the formatted data dir
    home/tls/                       TLS mode: broker.p12 (key and certificate), broker.p12.secret
                                    (its password, mode 0600), ca.pem (the certificate, for clients)

Everything public raises :class:`worker.core.errors.LocalKafkaError` on failure.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.core.errors import InfrastructureError

__all__ = [
    "LocalKafkaConfig",
    "LocalKafkaError",
    "admin_client_config",
    "ensure_certificate",
    "kill",
    "main",
    "render_log4j2_config",
    "render_pom",
    "render_server_properties",
    "resolve_classpath",
    "start",
    "status",
    "stop",
    "wipe",
]

log = logging.getLogger(__name__)


class LocalKafkaError(InfrastructureError):
    """The local (embedded) Apache Kafka could not be resolved, formatted, started or stopped."""


REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_KAFKA_VERSION = "4.1.1"
SLF4J_VERSION = "1.7.36"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1"
MIN_JAVA = 17
SASL_MECHANISM = "SCRAM-SHA-512"
INTER_BROKER_USER = "admin"
INSTALL_HINT = (
    "install a Java 17+ runtime and Maven, e.g. `apt-get install openjdk-17-jre-headless maven` "
    "(Debian/Ubuntu) or `brew install openjdk maven`"
)

# log4j2 version that each Kafka minor line was built and tested with (Kafka's gradle/dependencies).
_LOG4J_BY_MINOR = {"4.0": "2.24.3", "4.1": "2.24.3", "4.2": "2.25.3", "4.3": "2.25.4"}
_LOG4J_FALLBACK = "2.25.4"

_MARKER = ".complete"
_PID_FILE = "kafka.pid"
_FORMAT_FILE = "format.json"
_ADMIN_SECRET_FILE = "admin.secret"
_TLS_DIR = "tls"
_KEYSTORE_FILE = "broker.p12"
_KEYSTORE_SECRET_FILE = "broker.p12.secret"
_CA_FILE = "ca.pem"
_CERT_ALIAS = "broker"
_CERT_SAN = "dns:localhost,ip:127.0.0.1"
_CERT_VALIDITY_DAYS = 3650
_USERNAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# SCRAM passwords travel through StorageTool's `[name=..,password=..]` syntax and a JAAS string:
# keep them to printable ASCII without the characters those syntaxes give a meaning to.
_PASSWORD_RE = re.compile(r"^[!#-+\--<>-Z^-~]{1,128}$")

# Popen handles of brokers started by this process, so that stop() can reap them (no zombies).
_children: dict[int, subprocess.Popen[bytes]] = {}


def _default_home() -> Path:
    return Path(os.environ.get("WORKER_LOCAL_KAFKA_HOME", str(REPO_ROOT / "var" / "kafka")))


def _default_port() -> int:
    return int(os.environ.get("WORKER_LOCAL_KAFKA_PORT", "9092"))


@dataclass(frozen=True)
class LocalKafkaConfig:
    """Where and how the local broker runs.

    ``home`` holds configuration, data and logs; ``port`` is the client listener on 127.0.0.1 and
    ``controller_port`` the KRaft controller listener. With ``sasl_users`` the client listener is
    SASL_PLAINTEXT with SCRAM-SHA-512 and those ``(name, password)`` pairs are created when the
    storage is formatted (an ``admin`` user for inter-broker traffic is added automatically).
    With ``tls`` the client listener speaks TLS (SSL, or SASL_SSL with ``sasl_users``) with a
    self-signed certificate that clients trust through ``ca_file``; the controller listener stays
    PLAINTEXT on loopback.
    """

    home: Path = field(default_factory=_default_home)
    port: int = field(default_factory=_default_port)
    controller_port: int = 9093
    kafka_version: str = DEFAULT_KAFKA_VERSION
    heap_mb: int = 512
    sasl_users: tuple[tuple[str, str], ...] = ()
    tls: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home).expanduser().resolve())
        object.__setattr__(self, "sasl_users", tuple((n, p) for n, p in self.sasl_users))
        if self.port == self.controller_port:
            raise LocalKafkaError(f"port and controller_port must differ (both {self.port})")
        for name, password in self.sasl_users:
            if not _USERNAME_RE.match(name):
                raise LocalKafkaError(
                    f"invalid SASL user name {name!r}: use [A-Za-z0-9._-]{{1,64}}"
                )
            if not _PASSWORD_RE.match(password):
                raise LocalKafkaError(
                    f"invalid password for SASL user {name!r}: use 1-128 printable ASCII "
                    "characters without space, quote, comma, equals sign, brackets or backslash"
                )

    @property
    def sasl(self) -> bool:
        """True when the client listener requires SASL/SCRAM."""
        return bool(self.sasl_users)

    @property
    def security_protocol(self) -> str:
        """The client listener's protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."""
        transport = "SSL" if self.tls else "PLAINTEXT"
        return f"SASL_{transport}" if self.sasl else transport

    @property
    def bootstrap(self) -> str:
        """The client bootstrap address, ``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    @property
    def config_dir(self) -> Path:
        return self.home / "config"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def pid_file(self) -> Path:
        return self.home / _PID_FILE

    @property
    def tls_dir(self) -> Path:
        return self.home / _TLS_DIR

    @property
    def ca_file(self) -> Path:
        """The broker's certificate in PEM, for clients' ``ssl.ca.location`` (TLS mode)."""
        return self.tls_dir / _CA_FILE


# -- pure rendering ------------------------------------------------------------------------------


def log4j_version(kafka_version: str) -> str:
    """The log4j2 version of a Kafka release line (4.0-4.3 known; newer ones get the latest)."""
    minor = ".".join(kafka_version.split(".")[:2])
    return _LOG4J_BY_MINOR.get(minor, _LOG4J_FALLBACK)


def render_pom(kafka_version: str) -> str:
    """A packaging-``pom`` project whose runtime closure is the broker plus its log4j2 backend."""
    log4j = log4j_version(kafka_version)
    deps = [
        ("org.apache.kafka", "kafka_2.13", kafka_version),
        ("org.apache.logging.log4j", "log4j-api", log4j),
        ("org.apache.logging.log4j", "log4j-core", log4j),
        ("org.apache.logging.log4j", "log4j-slf4j-impl", log4j),
        ("org.slf4j", "slf4j-api", SLF4J_VERSION),
    ]
    dep_xml = "\n".join(
        "    <dependency>\n"
        f"      <groupId>{g}</groupId>\n"
        f"      <artifactId>{a}</artifactId>\n"
        f"      <version>{v}</version>\n"
        "    </dependency>"
        for g, a, v in deps
    )
    # slf4j-api is pinned in dependencyManagement too, so no transitive 2.x wins mediation.
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 http://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.worker</groupId>
  <artifactId>worker-local-kafka</artifactId>
  <version>{kafka_version}</version>
  <packaging>pom</packaging>
  <dependencyManagement>
    <dependencies>
      <dependency>
        <groupId>org.slf4j</groupId>
        <artifactId>slf4j-api</artifactId>
        <version>{SLF4J_VERSION}</version>
      </dependency>
    </dependencies>
  </dependencyManagement>
  <dependencies>
{dep_xml}
  </dependencies>
</project>
"""


def _escape_property(value: str) -> str:
    """Escape a value for java.util.Properties (ISO-8859-1 file, backslash escapes)."""
    out = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) > 0x7E or ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def _scram_jaas(username: str, password: str) -> str:
    return (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{username}" password="{password}";'
    )


def render_server_properties(
    cfg: LocalKafkaConfig, admin_password: str | None = None, keystore_password: str | None = None
) -> str:
    """The broker's ``server.properties`` for ``cfg``.

    In SASL mode ``admin_password`` is the inter-broker user's password, in TLS mode
    ``keystore_password`` the password of ``tls/broker.p12`` (each required in its mode).
    """
    ctl = f"127.0.0.1:{cfg.controller_port}"
    client = cfg.security_protocol
    props: dict[str, str] = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{ctl}",
        "controller.listener.names": "CONTROLLER",
        "listeners": f"{client}://{cfg.bootstrap},CONTROLLER://{ctl}",
        "advertised.listeners": f"{client}://{cfg.bootstrap}",
        "listener.security.protocol.map": f"CONTROLLER:PLAINTEXT,{client}:{client}",
        "inter.broker.listener.name": client,
        "log.dirs": str(cfg.data_dir),
        "num.partitions": "12",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "share.coordinator.state.topic.num.partitions": "1",
        "group.initial.rebalance.delay.ms": "0",
        # Small, laptop-friendly storage and threads (2-core machines, 512 MB heap).
        "log.segment.bytes": str(16 * 1024 * 1024),
        "log.retention.hours": "24",
        "log.retention.check.interval.ms": "60000",
        "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
        "num.network.threads": "2",
        "num.io.threads": "4",
        "background.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
    }
    if cfg.sasl:
        if not admin_password:
            raise LocalKafkaError("SASL mode needs the inter-broker admin password")
        props.update(
            {
                "sasl.enabled.mechanisms": SASL_MECHANISM,
                "sasl.mechanism.inter.broker.protocol": SASL_MECHANISM,
                f"listener.name.{client.lower()}.scram-sha-512.sasl.jaas.config": _scram_jaas(
                    INTER_BROKER_USER, admin_password
                ),
            }
        )
    if cfg.tls:
        if not keystore_password:
            raise LocalKafkaError("TLS mode needs the keystore password")
        props.update(
            {
                "ssl.keystore.type": "PKCS12",
                "ssl.keystore.location": str(cfg.tls_dir / _KEYSTORE_FILE),
                "ssl.keystore.password": keystore_password,
                "ssl.key.password": keystore_password,
                # Inter-broker traffic uses the client listener: the broker trusts itself.
                "ssl.truststore.type": "PEM",
                "ssl.truststore.location": str(cfg.ca_file),
                "ssl.client.auth": "none",
            }
        )
    lines = ["# Generated by devtools.localkafka on every start: edits are overwritten."]
    lines += [f"{key}={_escape_property(value)}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def render_log4j2_config(cfg: LocalKafkaConfig) -> str:
    """log4j2 XML: INFO and up to ``logs/server.log`` (rolled), WARN and up to the console."""
    log_file = cfg.logs_dir / "server.log"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="console" target="SYSTEM_OUT">
      <ThresholdFilter level="WARN" onMatch="ACCEPT" onMismatch="DENY"/>
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
    <RollingFile name="server" fileName="{log_file}" filePattern="{log_file}.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <Policies><SizeBasedTriggeringPolicy size="20 MB"/></Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Root level="INFO">
      <AppenderRef ref="server"/>
      <AppenderRef ref="console"/>
    </Root>
  </Loggers>
</Configuration>
"""


def scram_args(users: Sequence[tuple[str, str]]) -> list[str]:
    """StorageTool ``--add-scram`` arguments creating ``users`` at format time."""
    args: list[str] = []
    for name, password in users:
        args += ["--add-scram", f"{SASL_MECHANISM}=[name={name},password={password}]"]
    return args


def admin_client_config(cfg: LocalKafkaConfig, user: str | None = None) -> dict[str, Any]:
    """librdkafka settings reaching this broker; in SASL mode as ``user`` (default: admin), in
    TLS mode trusting ``cfg.ca_file``."""
    conf: dict[str, Any] = {"bootstrap.servers": cfg.bootstrap}
    if cfg.tls:
        conf.update(
            {"security.protocol": cfg.security_protocol, "ssl.ca.location": str(cfg.ca_file)}
        )
    if not cfg.sasl:
        return conf
    users = dict(_all_scram_users(cfg))
    name = user or INTER_BROKER_USER
    if name not in users:
        raise LocalKafkaError(f"unknown SASL user {name!r}")
    conf.update(
        {
            "security.protocol": cfg.security_protocol,
            "sasl.mechanism": SASL_MECHANISM,
            "sasl.username": name,
            "sasl.password": users[name],
        }
    )
    return conf


# -- environment checks --------------------------------------------------------------------------


def find_java() -> str:
    """Path of a Java 17+ ``java`` ($JAVA_HOME/bin/java first, then PATH)."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    java = str(candidate) if candidate and candidate.is_file() else shutil.which("java")
    if not java:
        raise LocalKafkaError(
            f"`java` not found on PATH (Kafka needs Java {MIN_JAVA}+): {INSTALL_HINT}"
        )
    major = _java_major(java)
    if major < MIN_JAVA:
        raise LocalKafkaError(
            f"{java} is Java {major}; Kafka 4.x needs Java {MIN_JAVA} or newer: {INSTALL_HINT}"
        )
    return java


def _java_major(java: str) -> int:
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalKafkaError(f"cannot run `{java} -version`: {exc}") from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        raise LocalKafkaError(f"cannot tell the Java version of {java}: {out.stderr.strip()[:300]}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_392" style
        major = int(match.group(2))
    return major


def find_keytool(java: str) -> str:
    """The JDK's ``keytool`` next to ``java`` (symlinks resolved), else the one on PATH."""
    beside = Path(java).resolve().parent / "keytool"
    keytool = str(beside) if beside.is_file() else shutil.which("keytool")
    if not keytool:
        raise LocalKafkaError(
            f"`keytool` (part of the Java runtime) not found next to {java} or on PATH; "
            f"TLS mode needs it: {INSTALL_HINT}"
        )
    return keytool


def find_mvn() -> str:
    """Path of ``mvn`` on PATH."""
    mvn = shutil.which("mvn")
    if not mvn:
        raise LocalKafkaError(
            f"`mvn` not found on PATH (needed once to fetch Kafka): {INSTALL_HINT}"
        )
    return mvn


# -- classpath -----------------------------------------------------------------------------------


def cache_root() -> Path:
    """Root of the jar cache: $WORKER_LOCAL_KAFKA_LIBS_CACHE or ~/.cache/worker-kafka."""
    env = os.environ.get("WORKER_LOCAL_KAFKA_LIBS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "worker-kafka"


def libs_dir(cfg: LocalKafkaConfig) -> Path:
    """Where the jars of ``cfg.kafka_version`` live (complete when the marker file exists)."""
    return cache_root() / cfg.kafka_version / "libs"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def resolve_classpath(cfg: LocalKafkaConfig, timeout_s: float = 1800) -> Path:
    """Fetch the broker's runtime jars into the cache once; return the ``libs`` directory.

    Idempotent and safe to call concurrently: a lock serialises resolvers and a marker file
    records a complete copy, so later calls only check that file.
    """
    libs = libs_dir(cfg)
    if (libs / _MARKER).is_file():
        return libs
    workdir = libs.parent
    with _file_lock(workdir / ".lock"):
        if (libs / _MARKER).is_file():
            return libs
        _run_maven(cfg.kafka_version, workdir, libs, timeout_s)
    return libs


def _run_maven(version: str, workdir: Path, libs: Path, timeout_s: float) -> None:
    mvn = find_mvn()
    (workdir / "pom.xml").write_text(render_pom(version))
    staging = workdir / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [
        mvn, "-B", "-q", "-ntp", "-f", str(workdir / "pom.xml"),
        f"{DEPENDENCY_PLUGIN}:copy-dependencies",
        f"-DoutputDirectory={staging}", "-DincludeScope=runtime",
    ]  # fmt: skip
    log.info("resolving Kafka %s from Maven Central into %s", version, libs)
    started = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LocalKafkaError(
            f"mvn did not finish within {timeout_s:.0f}s resolving Kafka {version}"
        ) from exc
    output = (proc.stdout or "") + (proc.stderr or "")
    jars = list(staging.glob("*.jar")) if staging.is_dir() else []
    if proc.returncode != 0 or not jars:
        raise LocalKafkaError(
            f"mvn failed to resolve org.apache.kafka:kafka_2.13:{version} "
            f"(exit {proc.returncode}); command: {' '.join(cmd)}\n"
            f"--- mvn output (tail) ---\n{_tail_text(output, 40)}"
        )
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    (libs / _MARKER).write_text(
        json.dumps(
            {"kafka_version": version, "jars": len(jars), "seconds": time.monotonic() - started}
        )
    )
    log.info(
        "resolved %d jars for Kafka %s in %.1fs", len(jars), version, time.monotonic() - started
    )


# -- process helpers -----------------------------------------------------------------------------


def _tail_text(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _tail_file(path: Path, lines: int = 40) -> str:
    try:
        return _tail_text(path.read_text(errors="replace"), lines)
    except OSError:
        return "(no log)"


def _server_log_tail(cfg: LocalKafkaConfig) -> str:
    out, server_log = cfg.logs_dir / "server.out", cfg.logs_dir / "server.log"
    return (
        f"--- {out} (tail) ---\n{_tail_file(out, 20)}\n"
        f"--- {server_log} (tail) ---\n{_tail_file(server_log, 30)}"
    )


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None:
        if child.poll() is not None:
            _children.pop(pid, None)
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (zombies count as dead)."""
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError, IndexError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _is_our_broker(pid: int, cfg: LocalKafkaConfig) -> bool:
    """True if ``pid`` is alive and is the ``kafka.Kafka`` of this home (not a recycled pid)."""
    if not _pid_alive(pid):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.exists():
        return True  # no procfs (macOS): trust the pid file
    try:
        args = cmdline.read_bytes().split(b"\0")
    except OSError:
        return False
    return b"kafka.Kafka" in args and str(cfg.config_dir / "server.properties").encode() in args


def _read_pid_file(cfg: LocalKafkaConfig) -> dict[str, Any] | None:
    try:
        return json.loads(cfg.pid_file.read_text())
    except (OSError, ValueError):
        return None


def _running_record(cfg: LocalKafkaConfig) -> dict[str, Any] | None:
    """The pid-file record if its broker still runs; a stale pid file is removed."""
    record = _read_pid_file(cfg)
    if record is None:
        return None
    if _is_our_broker(int(record.get("pid", 0)), cfg):
        return record
    cfg.pid_file.unlink(missing_ok=True)
    return None


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that nothing listens on right now."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _metadata_answers(cfg: LocalKafkaConfig, timeout_s: float = 3.0) -> bool:
    """True if a metadata request to the client listener succeeds."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    if not _port_open(cfg.port):
        return False
    conf = admin_client_config(cfg)
    conf["logger"] = logging.getLogger(__name__ + ".librdkafka")  # not stderr
    admin = AdminClient(conf)
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException:
        return False
    return True


# -- secrets -------------------------------------------------------------------------------------


def _write_private(path: Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``path`` readable by its owner only (mode 0600, also if it existed with another)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding=encoding) as handle:
        handle.write(text)


def _stored_secret(path: Path) -> str:
    """The random password kept in ``path``, made (mode 0600) on first use."""
    if path.is_file():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)
    _write_private(path, password)
    return password


# -- TLS material --------------------------------------------------------------------------------


def ensure_certificate(cfg: LocalKafkaConfig, java: str | None = None) -> Path:
    """Make the broker's self-signed certificate once per home; return ``cfg.ca_file``.

    RSA 2048, valid ten years for ``localhost`` and ``127.0.0.1``, in the PKCS12 keystore
    ``tls/broker.p12`` whose random password is kept in ``tls/broker.p12.secret`` (both mode
    0600; ``keytool`` reads the password from that file, never from its command line). The
    certificate is exported as PEM to ``tls/ca.pem`` for clients. Reused once all three exist.
    """
    keystore = cfg.tls_dir / _KEYSTORE_FILE
    secret = cfg.tls_dir / _KEYSTORE_SECRET_FILE
    if keystore.is_file() and secret.is_file() and cfg.ca_file.is_file():
        return cfg.ca_file
    for path in (keystore, secret, cfg.ca_file):  # leftovers of an interrupted run
        path.unlink(missing_ok=True)
    keytool = find_keytool(java or find_java())
    _stored_secret(secret)
    store = ["-keystore", str(keystore), "-storetype", "PKCS12", "-storepass:file", str(secret)]
    _run_keytool(
        keytool, "-genkeypair", "-alias", _CERT_ALIAS, "-keyalg", "RSA", "-keysize", "2048",
        "-validity", str(_CERT_VALIDITY_DAYS), "-dname", "CN=localhost, O=worker local Kafka",
        "-ext", f"SAN={_CERT_SAN}", "-keypass:file", str(secret), *store,
    )  # fmt: skip
    keystore.chmod(0o600)
    partial = cfg.ca_file.with_suffix(".partial")
    _run_keytool(
        keytool, "-exportcert", "-rfc", "-alias", _CERT_ALIAS, "-file", str(partial), *store
    )
    partial.rename(cfg.ca_file)
    log.info("made a self-signed TLS certificate for the local broker: %s", cfg.ca_file)
    return cfg.ca_file


def _run_keytool(keytool: str, *args: str) -> None:
    try:
        proc = subprocess.run(
            [keytool, *args], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalKafkaError(f"cannot run `keytool {args[0]}`: {exc}") from exc
    if proc.returncode != 0:
        raise LocalKafkaError(
            f"`keytool {args[0]}` failed (exit {proc.returncode}):\n"
            f"{_tail_text(proc.stdout + proc.stderr, 20)}"
        )


# -- SCRAM state ---------------------------------------------------------------------------------


def _admin_password(cfg: LocalKafkaConfig) -> str:
    """The inter-broker user's password: a configured ``admin`` user's, else one kept in home."""
    for name, password in cfg.sasl_users:
        if name == INTER_BROKER_USER:
            return password
    return _stored_secret(cfg.config_dir / _ADMIN_SECRET_FILE)


def _all_scram_users(cfg: LocalKafkaConfig) -> list[tuple[str, str]]:
    users = list(cfg.sasl_users)
    if cfg.sasl and INTER_BROKER_USER not in dict(users):
        users.append((INTER_BROKER_USER, _admin_password(cfg)))
    return users


def _scram_fingerprint(users: Sequence[tuple[str, str]]) -> str:
    payload = json.dumps(sorted(users)).encode()
    return hashlib.sha256(payload).hexdigest() if users else ""


# -- lifecycle -----------------------------------------------------------------------------------


def _java_cmd(java: str, cfg: LocalKafkaConfig, libs: Path, main_class: str) -> list[str]:
    return [
        java,
        f"-Xmx{cfg.heap_mb}m",
        f"-Xms{min(cfg.heap_mb, 256)}m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={cfg.config_dir / 'log4j2.xml'}",
        f"-Dkafka.logs.dir={cfg.logs_dir}",
        "-cp",
        f"{libs}/*",
        main_class,
    ]


def new_cluster_id() -> str:
    """A random KRaft cluster id: base64url UUID, never starting with ``-``.

    Like Kafka's ``Uuid.randomUuid``: StorageTool's argument parser would read a leading ``-``
    as an option (about 1 id in 64).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _format_storage(cfg: LocalKafkaConfig, java: str, libs: Path) -> None:
    """Format the KRaft data dir once; refuse a data dir formatted with other SCRAM users."""
    users = _all_scram_users(cfg)
    fingerprint = _scram_fingerprint(users)
    record_path = cfg.home / _FORMAT_FILE
    meta = cfg.data_dir / "meta.properties"
    if meta.is_file() and record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("scram") != fingerprint:
            raise LocalKafkaError(
                f"{cfg.data_dir} was formatted with other SASL users; "
                "run `worker-dev kafka wipe` (deletes the data) to change them"
            )
        return
    cluster_id = new_cluster_id()
    cmd = _java_cmd(java, cfg, libs, "kafka.tools.StorageTool")
    cmd += ["format", "-t", cluster_id, "-c", str(cfg.config_dir / "server.properties")]
    cmd += ["--ignore-formatted", *scram_args(users)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise LocalKafkaError(
            f"formatting KRaft storage in {cfg.data_dir} failed (exit {proc.returncode}):\n"
            f"{_tail_text(proc.stdout + proc.stderr, 30)}"
        )
    record_path.write_text(json.dumps({"cluster_id": cluster_id, "scram": fingerprint}))


def _write_configs(cfg: LocalKafkaConfig, java: str) -> None:
    for directory in (cfg.config_dir, cfg.data_dir, cfg.logs_dir):
        directory.mkdir(parents=True, exist_ok=True)
    admin_password = _admin_password(cfg) if cfg.sasl else None
    keystore_password = None
    if cfg.tls:
        ensure_certificate(cfg, java)
        keystore_password = _stored_secret(cfg.tls_dir / _KEYSTORE_SECRET_FILE)
    _write_private(
        cfg.config_dir / "server.properties",
        render_server_properties(cfg, admin_password, keystore_password),
        encoding="latin-1",
    )
    (cfg.config_dir / "log4j2.xml").write_text(render_log4j2_config(cfg))


def start(cfg: LocalKafkaConfig | None = None, timeout_s: float = 90) -> str:
    """Start the broker (or find it running) and return its bootstrap ``127.0.0.1:<port>``."""
    cfg = cfg or LocalKafkaConfig()
    cfg.home.mkdir(parents=True, exist_ok=True)
    with _file_lock(cfg.home / ".start.lock"):
        record = _running_record(cfg)
        if record is not None:
            return _adopt_running(cfg, record, timeout_s)
        for port, what in ((cfg.port, "client"), (cfg.controller_port, "controller")):
            if not _port_free(port):
                raise LocalKafkaError(
                    f"{what} port 127.0.0.1:{port} is taken by another process (not a broker this "
                    f"launcher started in {cfg.home}); stop it or choose another port "
                    "(--port/--controller-port, WORKER_LOCAL_KAFKA_PORT)"
                )
        java = find_java()
        libs = resolve_classpath(cfg)
        _write_configs(cfg, java)
        _format_storage(cfg, java, libs)
        proc = _launch(cfg, java, libs)
    _wait_ready(cfg, proc, timeout_s)
    log.info("local Kafka %s ready at %s (pid %d)", cfg.kafka_version, cfg.bootstrap, proc.pid)
    return cfg.bootstrap


def _adopt_running(cfg: LocalKafkaConfig, record: dict[str, Any], timeout_s: float) -> str:
    if record.get("port") != cfg.port or record.get("controller_port") != cfg.controller_port:
        raise LocalKafkaError(
            f"a local broker (pid {record['pid']}) already runs in {cfg.home} on port "
            f"{record.get('port')}; stop it first to use port {cfg.port}"
        )
    if (record.get("sasl"), record.get("tls", False)) != (cfg.sasl, cfg.tls):
        raise LocalKafkaError(
            f"the local broker (pid {record['pid']}) in {cfg.home} runs with "
            f"sasl={record.get('sasl')}, tls={record.get('tls', False)}; "
            "stop it first to change the security mode"
        )
    if record.get("scram", "") != _scram_fingerprint(_all_scram_users(cfg)):
        raise LocalKafkaError(
            f"the local broker (pid {record['pid']}) in {cfg.home} runs with other SASL users; "
            "stop and wipe it to change them"
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _metadata_answers(cfg):
            return cfg.bootstrap
        if not _is_our_broker(int(record["pid"]), cfg):
            break
        time.sleep(0.5)
    raise LocalKafkaError(
        f"the local broker (pid {record['pid']}) in {cfg.home} does not answer metadata requests "
        f"on {cfg.bootstrap}\n{_server_log_tail(cfg)}"
    )


def _launch(cfg: LocalKafkaConfig, java: str, libs: Path) -> subprocess.Popen[bytes]:
    cmd = _java_cmd(java, cfg, libs, "kafka.Kafka") + [str(cfg.config_dir / "server.properties")]
    with (cfg.logs_dir / "server.out").open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cfg.home,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    record = {
        "pid": proc.pid,
        "port": cfg.port,
        "controller_port": cfg.controller_port,
        "kafka_version": cfg.kafka_version,
        "sasl": cfg.sasl,
        "tls": cfg.tls,
        "scram": _scram_fingerprint(_all_scram_users(cfg)),
        "started_at": time.time(),
    }
    cfg.pid_file.write_text(json.dumps(record))
    return proc


def _wait_ready(cfg: LocalKafkaConfig, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            cfg.pid_file.unlink(missing_ok=True)
            _children.pop(proc.pid, None)
            raise LocalKafkaError(
                f"the Kafka broker exited with code {proc.returncode} while starting\n"
                f"{_server_log_tail(cfg)}"
            )
        if _metadata_answers(cfg, timeout_s=2.0):
            return
        time.sleep(0.3)
    stop(cfg)
    raise LocalKafkaError(
        f"the Kafka broker did not answer on {cfg.bootstrap} within {timeout_s:.0f}s (stopped it)\n"
        f"{_server_log_tail(cfg)}"
    )


def stop(cfg: LocalKafkaConfig | None = None, timeout_s: float = 30) -> bool:
    """Stop the broker of ``cfg.home``: SIGTERM, then SIGKILL after ``timeout_s``.

    Returns True if a running broker was stopped.
    """
    cfg = cfg or LocalKafkaConfig()
    record = _running_record(cfg)
    if record is None:
        return False
    pid = int(record["pid"])
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_dead(pid, timeout_s):
        log.warning("Kafka broker pid %d ignored SIGTERM for %.0fs; killing it", pid, timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not _wait_dead(pid, 10):
            raise LocalKafkaError(f"the Kafka broker pid {pid} survived SIGKILL")
    _children.pop(pid, None)
    cfg.pid_file.unlink(missing_ok=True)
    return True


def kill(cfg: LocalKafkaConfig | None = None) -> bool:
    """SIGKILL the broker of ``cfg.home`` (a crash: no controlled shutdown, no flush, an unclean
    log the next start recovers). Returns True if a running broker was killed."""
    cfg = cfg or LocalKafkaConfig()
    record = _running_record(cfg)
    if record is None:
        return False
    pid = int(record["pid"])
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not _wait_dead(pid, 10):
        raise LocalKafkaError(f"the Kafka broker pid {pid} survived SIGKILL")
    _children.pop(pid, None)
    cfg.pid_file.unlink(missing_ok=True)
    return True


def _wait_dead(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        child = _children.get(pid)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=0.2)
        if not _pid_alive(pid):
            return True
        time.sleep(0.1)
    return not _pid_alive(pid)


def status(cfg: LocalKafkaConfig | None = None) -> dict[str, Any]:
    """``{"running", "pid", "bootstrap", "home", ...}`` of the broker of ``cfg.home``.

    ``ca_file`` is the certificate clients trust (``ssl.ca.location``) when it runs with TLS.
    """
    cfg = cfg or LocalKafkaConfig()
    record = _running_record(cfg)
    running = record is not None
    tls = bool(record.get("tls")) if record else None
    return {
        "running": running,
        "pid": record["pid"] if record else None,
        "bootstrap": f"127.0.0.1:{record['port']}" if record else None,
        "home": str(cfg.home),
        "kafka_version": record.get("kafka_version") if record else None,
        "sasl": record.get("sasl") if record else None,
        "tls": tls,
        "ca_file": str(cfg.ca_file) if tls else None,
        "server_log": str(cfg.logs_dir / "server.log"),
    }


def wipe(cfg: LocalKafkaConfig | None = None) -> None:
    """Stop the broker and delete its data (the next start formats a fresh cluster).

    The TLS certificate is kept, so clients that trust it keep working.
    """
    cfg = cfg or LocalKafkaConfig()
    stop(cfg)
    shutil.rmtree(cfg.data_dir, ignore_errors=True)
    (cfg.home / _FORMAT_FILE).unlink(missing_ok=True)
    (cfg.config_dir / _ADMIN_SECRET_FILE).unlink(missing_ok=True)


# -- CLI -----------------------------------------------------------------------------------------


def _parse_user(text: str) -> tuple[str, str]:
    name, sep, password = text.partition(":")
    if not sep or not name or not password:
        raise argparse.ArgumentTypeError(f"expected NAME:PASSWORD, got {text!r}")
    return name, password


def _build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", type=Path, help="state dir ($WORKER_LOCAL_KAFKA_HOME, var/kafka)")
    common.add_argument(
        "--port", type=int, help="client port on 127.0.0.1 ($WORKER_LOCAL_KAFKA_PORT, 9092)"
    )
    common.add_argument(
        "--controller-port", type=int, help="KRaft controller port (default: port+1)"
    )
    common.add_argument(
        "--kafka-version", default=DEFAULT_KAFKA_VERSION, help="Apache Kafka 4.x version"
    )
    common.add_argument("--heap-mb", type=int, default=512, help="broker heap in MB")
    common.add_argument(
        "--sasl-user", action="append", type=_parse_user, default=[], metavar="NAME:PASSWORD",
        help="SCRAM-SHA-512 user (repeatable); turns the client listener into SASL_PLAINTEXT",
    )  # fmt: skip
    common.add_argument(
        "--tls", action="store_true",
        help="TLS on the client listener (SSL, or SASL_SSL with --sasl-user) with a self-signed "
        "certificate made once in HOME/tls; clients set ssl.ca.location to HOME/tls/ca.pem",
    )  # fmt: skip
    parser = argparse.ArgumentParser(
        prog="worker-dev kafka",
        description="Run a local single-node Apache Kafka (KRaft) without Docker.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    start_p = sub.add_parser(
        "start", parents=[common], help="start (or find) the broker; print bootstrap"
    )
    start_p.add_argument("--timeout", type=float, default=90, help="seconds to wait for readiness")
    stop_p = sub.add_parser("stop", parents=[common], help="stop the broker")
    stop_p.add_argument("--timeout", type=float, default=30, help="seconds before SIGKILL")
    sub.add_parser("status", parents=[common], help="print the broker status as JSON")
    sub.add_parser("wipe", parents=[common], help="stop the broker and delete its data")
    sub.add_parser("classpath", parents=[common], help="fetch the jars once; print the libs dir")
    return parser


def _config_from_args(args: argparse.Namespace) -> LocalKafkaConfig:
    kwargs: dict[str, Any] = {
        "kafka_version": args.kafka_version,
        "heap_mb": args.heap_mb,
        "sasl_users": tuple(args.sasl_user),
        "tls": args.tls,
    }
    if args.home is not None:
        kwargs["home"] = args.home
    port = args.port if args.port is not None else _default_port()
    kwargs["port"] = port
    if args.controller_port is not None:
        kwargs["controller_port"] = args.controller_port
    elif port != 9092:
        kwargs["controller_port"] = port + 1
    return LocalKafkaConfig(**kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    """``worker-dev kafka {start,stop,status,wipe,classpath}``; returns the process exit code."""
    args = _build_parser().parse_args(argv)
    try:
        cfg = _config_from_args(args)
        if args.command == "start":
            print(start(cfg, timeout_s=args.timeout))
            if cfg.tls:
                print(
                    f"{cfg.security_protocol}: clients set ssl.ca.location={cfg.ca_file}",
                    file=sys.stderr,
                )
        elif args.command == "stop":
            print("stopped" if stop(cfg, timeout_s=args.timeout) else "not running")
        elif args.command == "status":
            print(json.dumps(status(cfg), indent=2))
        elif args.command == "wipe":
            wipe(cfg)
            print(f"wiped {cfg.data_dir}")
        elif args.command == "classpath":
            print(resolve_classpath(cfg))
    except LocalKafkaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
