"""Launcher for a real local Confluent-compatible schema registry (Apicurio), without Docker.

Apicurio Registry publishes its ready-built Quarkus application on Maven Central as the ``all``
tarball of ``io.apicurio:apicurio-registry-app`` (``quarkus-app/`` with ``quarkus-run.jar``), so
nothing is compiled or augmented here: ``maven-dependency-plugin:copy`` fetches that one file once
per version into a cache directory, and it is unpacked there. (Building the application from its
module jars does not work from Maven Central: most of the 3.3.3 modules it depends on, e.g.
``apicurio-registry-schema-util-provider``, are not published there.) ``start`` runs
``java -jar quarkus-run.jar`` (Java 21 or newer, which Apicurio 3 is built for) with its default
storage, an in-memory H2 database, on 127.0.0.1, and waits until the Confluent-compatible API
(``/apis/ccompat/v7``) answers. Its state lives as long as the process: every start is empty.

Layout of the state directory (``home``)::

    home/registry.pid      JSON: pid, port, version of the registry this launcher started
    home/logs/registry.out the JVM's stdout and stderr (the registry logs to the console)

Everything public raises :class:`LocalRegistryError` on failure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.localkafka import (
    _file_lock,
    _java_major,
    _pid_alive,
    _port_free,
    _tail_file,
    _tail_text,
    free_ports,
)
from worker.core.errors import InfrastructureError

log = logging.getLogger(__name__)

APICURIO_VERSION = "3.3.3"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1"
MIN_JAVA = 21
#: Path of Apicurio's Confluent-compatible API (Confluent Schema Registry's v7 REST API).
CCOMPAT_PATH = "/apis/ccompat/v7"
# Start-up flags: C1 only and the serial collector start the JVM about twice as fast on a small
# machine (measured 16 s against 33 s on 2 busy cores); the heap bound keeps it near 250 MB RSS.
JVM_FLAGS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xmx256m", "-Djava.awt.headless=true")
INSTALL_HINT = (
    "install a Java 21+ runtime and Maven (Debian 12 has only Java 17: use a Temurin 21+ JDK, and "
    "point WORKER_LOCAL_REGISTRY_JAVA at its bin/java if it is not on PATH)"
)

_MARKER = ".complete"
_PID_FILE = "registry.pid"
# Popen handles of registries started by this process, so that stop() can reap them (no zombies).
_children: dict[int, subprocess.Popen[bytes]] = {}


class LocalRegistryError(InfrastructureError):
    """The local schema registry could not be fetched, started or stopped."""


def _default_home() -> Path:
    env = os.environ.get("WORKER_LOCAL_REGISTRY_HOME")
    return Path(env) if env else Path(tempfile.gettempdir()) / "worker-registry"


def _default_port() -> int:
    return int(os.environ.get("WORKER_LOCAL_REGISTRY_PORT", "18081"))


@dataclass(frozen=True)
class LocalRegistryConfig:
    """Where the registry keeps its pid file and log, its port and its version."""

    home: Path = field(default_factory=_default_home)
    port: int = field(default_factory=_default_port)
    version: str = APICURIO_VERSION

    @property
    def url(self) -> str:
        """Base URL of the Confluent-compatible API (what ``SchemaRegistryClient`` takes)."""
        return f"http://127.0.0.1:{self.port}{CCOMPAT_PATH}"

    @property
    def pid_file(self) -> Path:
        return self.home / _PID_FILE

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "registry.out"


# -- the application --------------------------------------------------------------------------


def cache_root() -> Path:
    """Root of the application cache: $WORKER_LOCAL_REGISTRY_CACHE or ~/.cache/worker-registry."""
    env = os.environ.get("WORKER_LOCAL_REGISTRY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "worker-registry"


def app_dir(version: str = APICURIO_VERSION) -> Path:
    """Where the unpacked application of ``version`` lives (complete when the marker exists)."""
    return cache_root() / version / "quarkus-app"


def resolve_app(version: str = APICURIO_VERSION, timeout_s: float = 900) -> Path:
    """Fetch and unpack the application into the cache once; return its directory.

    Idempotent and safe to call concurrently: a lock serialises fetchers and a marker file
    records a complete copy, so later calls only check that file.

    Raises:
        LocalRegistryError: mvn is missing, fails or times out, or the tarball has no
            ``quarkus-run.jar``.
    """
    target = app_dir(version)
    if (target / _MARKER).is_file():
        return target
    workdir = target.parent
    with _file_lock(workdir / ".lock"):
        if (target / _MARKER).is_file():
            return target
        _fetch(version, workdir, target, timeout_s)
    return target


def _fetch(version: str, workdir: Path, target: Path, timeout_s: float) -> None:
    mvn = shutil.which("mvn")
    if not mvn:
        raise LocalRegistryError(
            f"`mvn` not found on PATH (needed once to fetch Apicurio Registry): {INSTALL_HINT}"
        )
    artifact = f"io.apicurio:apicurio-registry-app:{version}:tar.gz:all"
    download = workdir / "download"
    shutil.rmtree(download, ignore_errors=True)
    cmd = [
        mvn, "-B", "-q", "-ntp", f"{DEPENDENCY_PLUGIN}:copy",
        f"-Dartifact={artifact}", f"-DoutputDirectory={download}",
    ]  # fmt: skip
    log.info("fetching %s from Maven Central into %s", artifact, workdir)
    started = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LocalRegistryError(f"mvn did not fetch {artifact} within {timeout_s:.0f}s") from exc
    tarballs = list(download.glob("*.tar.gz")) if download.is_dir() else []
    if proc.returncode != 0 or len(tarballs) != 1:
        output = (proc.stdout or "") + (proc.stderr or "")
        raise LocalRegistryError(
            f"mvn failed to fetch {artifact} (exit {proc.returncode}); command: {' '.join(cmd)}\n"
            f"--- mvn output (tail) ---\n{_tail_text(output, 40)}"
        )
    staging = workdir / "quarkus-app.partial"
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(tarballs[0]) as tar:
        tar.extractall(staging, filter="data")
    if not (staging / "quarkus-run.jar").is_file():
        raise LocalRegistryError(f"{tarballs[0].name} has no quarkus-run.jar at its top level")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    shutil.rmtree(download, ignore_errors=True)
    seconds = time.monotonic() - started
    (target / _MARKER).write_text(json.dumps({"artifact": artifact, "seconds": seconds}))
    log.info("fetched and unpacked %s in %.1fs", artifact, seconds)


def find_java() -> str:
    """A Java 21+ ``java``: $WORKER_LOCAL_REGISTRY_JAVA, $JAVA_HOME/bin/java, ``java`` on PATH,
    then the JDKs under /usr/lib/jvm (newest first).

    Raises:
        LocalRegistryError: none of them is Java 21 or newer.
    """
    candidates = [os.environ.get("WORKER_LOCAL_REGISTRY_JAVA")]
    if os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    candidates.append(shutil.which("java"))
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        candidates += [str(p / "bin" / "java") for p in sorted(jvm.iterdir(), reverse=True)]
    seen: list[str] = []
    for java in candidates:
        if not java or java in seen or not Path(java).is_file():
            continue
        seen.append(java)
        with contextlib.suppress(InfrastructureError):
            if _java_major(java) >= MIN_JAVA:
                return java
    raise LocalRegistryError(
        f"no Java {MIN_JAVA}+ found (tried: {', '.join(seen) or 'none'}): {INSTALL_HINT}"
    )


# -- the process --------------------------------------------------------------------------------


def _answers(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _is_ours(pid: int, cfg: LocalRegistryConfig) -> bool:
    """True if ``pid`` is alive and is the registry this launcher started on ``cfg.port``."""
    if not _pid_alive(pid):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.exists():
        return True  # no procfs (macOS): trust the pid file
    try:
        args = cmdline.read_bytes().split(b"\0")
    except OSError:
        return False
    return f"-Dquarkus.http.port={cfg.port}".encode() in args


def _running_record(cfg: LocalRegistryConfig) -> dict[str, Any] | None:
    """The pid-file record if its registry still runs; a stale pid file is removed."""
    try:
        record: dict[str, Any] = json.loads(cfg.pid_file.read_text())
    except (OSError, ValueError):
        return None
    if _is_ours(int(record.get("pid", 0)), cfg):
        return record
    cfg.pid_file.unlink(missing_ok=True)
    return None


def start(cfg: LocalRegistryConfig | None = None, timeout_s: float = 180) -> str:
    """Start the registry (or find it running) and return the URL of its Confluent-compatible API.

    Raises:
        LocalRegistryError: no Java 21+, the fetch failed, the port is taken, or the registry
            exited or did not answer within ``timeout_s`` (the log's tail is in the message).
    """
    cfg = cfg or LocalRegistryConfig()
    cfg.home.mkdir(parents=True, exist_ok=True)
    with _file_lock(cfg.home / ".start.lock"):
        record = _running_record(cfg)
        if record is not None and record.get("version") == cfg.version:
            if _answers(cfg.url):
                return cfg.url
        elif record is not None:
            raise LocalRegistryError(
                f"a local registry of version {record.get('version')} (pid {record['pid']}) runs "
                f"in {cfg.home}; stop it first to start {cfg.version}"
            )
        if record is None:
            if not _port_free(cfg.port):
                raise LocalRegistryError(
                    f"port 127.0.0.1:{cfg.port} is taken by another process (not a registry this "
                    f"launcher started in {cfg.home}); stop it or choose another port "
                    "(WORKER_LOCAL_REGISTRY_PORT)"
                )
            java = find_java()
            app = resolve_app(cfg.version)
            proc = _launch(cfg, java, app)
        else:
            proc = _children.get(int(record["pid"]))
    _wait_ready(cfg, proc, timeout_s)
    log.info("local schema registry ready at %s", cfg.url)
    return cfg.url


def _launch(cfg: LocalRegistryConfig, java: str, app: Path) -> subprocess.Popen[bytes]:
    # Quarkus's management interface (health, metrics) listens on 0.0.0.0:9000 by default: keep
    # it on loopback and on a free port, so that two registries (or anything on 9000) coexist.
    management_port = free_ports(1)[0]
    cmd = [
        java, *JVM_FLAGS,
        "-Dquarkus.http.host=127.0.0.1", f"-Dquarkus.http.port={cfg.port}",
        "-Dquarkus.management.host=127.0.0.1", f"-Dquarkus.management.port={management_port}",
        "-jar", str(app / "quarkus-run.jar"),
    ]  # fmt: skip
    cfg.log_file.parent.mkdir(parents=True, exist_ok=True)
    with cfg.log_file.open("ab") as out:
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
        "management_port": management_port,
        "version": cfg.version,
        "started_at": time.time(),
    }
    cfg.pid_file.write_text(json.dumps(record))
    return proc


def _wait_ready(
    cfg: LocalRegistryConfig, proc: subprocess.Popen[bytes] | None, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            cfg.pid_file.unlink(missing_ok=True)
            _children.pop(proc.pid, None)
            raise LocalRegistryError(
                f"the schema registry exited with code {proc.returncode} while starting\n"
                f"--- {cfg.log_file} (tail) ---\n{_tail_file(cfg.log_file, 30)}"
            )
        if _answers(cfg.url):
            return
        time.sleep(0.3)
    stop(cfg)
    raise LocalRegistryError(
        f"the schema registry did not answer on {cfg.url} within {timeout_s:.0f}s (stopped it)\n"
        f"--- {cfg.log_file} (tail) ---\n{_tail_file(cfg.log_file, 30)}"
    )


def stop(cfg: LocalRegistryConfig | None = None, timeout_s: float = 30) -> bool:
    """Stop the registry of ``cfg.home``: SIGTERM, then SIGKILL after ``timeout_s``.

    Returns True if a running registry was stopped.

    Raises:
        LocalRegistryError: it survived SIGKILL.
    """
    cfg = cfg or LocalRegistryConfig()
    record = _running_record(cfg)
    if record is None:
        return False
    pid = int(record["pid"])
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if _wait_dead(pid, wait_s):
            break
    else:
        raise LocalRegistryError(f"the schema registry pid {pid} survived SIGKILL")
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


def status(cfg: LocalRegistryConfig | None = None) -> dict[str, Any]:
    """``{"running", "pid", "url", "home", "version"}`` of the registry of ``cfg.home``."""
    cfg = cfg or LocalRegistryConfig()
    record = _running_record(cfg)
    return {
        "running": record is not None,
        "pid": record["pid"] if record else None,
        "url": cfg.url,
        "home": str(cfg.home),
        "version": record.get("version") if record else cfg.version,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m devtools.localregistry {start,stop,status,fetch} [--port N] [--home DIR]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m devtools.localregistry",
        description="A local Confluent-compatible schema registry (Apicurio Registry), no Docker",
    )
    parser.add_argument("action", choices=("start", "stop", "status", "fetch"))
    parser.add_argument("--port", type=int, default=None, help="HTTP port (default 18081)")
    parser.add_argument("--home", type=Path, default=None, help="pid file and log directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = LocalRegistryConfig(
        **{k: v for k, v in (("port", args.port), ("home", args.home)) if v is not None}
    )
    try:
        if args.action == "start":
            print(start(cfg))
        elif args.action == "stop":
            print("stopped" if stop(cfg) else "not running")
        elif args.action == "fetch":
            print(resolve_app(cfg.version))
        else:
            print(json.dumps(status(cfg)))
    except LocalRegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
