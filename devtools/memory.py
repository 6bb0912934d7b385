"""``worker-dev memory``: a real worker's resident memory with N users in session state, and
again while a fresh worker restores them from the changelog after a kill -9.

1. One broker (a local one of its own, on free ports and in a temp dir, unless
   ``--bootstrap-servers`` names a cluster), topics and the changelog created beforehand.
2. ``--users`` events, one per distinct user (each with a session of its own), on products of
   the model's catalogue, produced before any worker starts. A session's cost does not depend on
   its length (its history sits in a fixed-width slot), so one event per user measures the same
   bytes per user as more would, in a third of the time.
3. ``worker run`` (the model of ``--models-dir``, default settings otherwise) answers them all;
   its ``VmRSS``/``VmHWM`` (``/proc/<pid>/status``) and ``worker_active_sessions`` are read once
   the group has committed every event. Then it is killed with SIGKILL.
4. A second ``worker run`` of the same group gains every partition and restores every session
   from the changelog before it answers anything: its peak (``VmHWM``) over the restore and the
   seconds until ``worker_active_sessions`` holds them all and no partition is restoring.

Prints a Markdown table; the figures (JSON) and the workers' logs stay in ``--work-dir``. The
figure the Kubernetes limit and ``WORKER_MAX_SESSIONS`` are sized from (deploy/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from devtools.ready import proc_memory_mib, warm_up_group
from devtools.worker_env import add_argument as add_worker_env_argument
from devtools.worker_env import resolve_worker_env

POLL_S = 0.5


@dataclass
class Phase:
    """One worker's part: seconds, sessions held at the end, its memory then and its peak."""

    name: str
    seconds: float = 0.0
    sessions: int = 0
    rss_mib: float | None = None
    peak_rss_mib: float | None = None
    error: str = ""


@dataclass
class MemoryResult:
    users: int
    model: str
    phases: list[Phase] = field(default_factory=list)


def add_arguments(p: Any) -> None:
    p.add_argument("--users", type=int, default=1_000_000, help="distinct users, one event each")
    p.add_argument(
        "--models-dir",
        type=Path,
        default=Path("models"),
        help="models directory (uses its LATEST) or one artifact directory",
    )
    p.add_argument("--work-dir", type=Path, default=Path("var/memory"))
    add_worker_env_argument(p)
    p.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", ""),
        help="an existing cluster; default: a local broker of its own",
    )
    p.add_argument(
        "--timeout-s", type=float, default=1800.0, help="most seconds each worker may take"
    )


def _metrics(port: int) -> dict[str, float]:
    """The unlabelled samples of ``/metrics`` ({} if it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2.0) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or "{" in line:
            continue
        name, _, value = line.partition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def _produce(bootstrap: str, topic: str, users: int, product_ids: list[str], say: Any) -> None:
    from confluent_kafka import Producer

    from worker.wire.codec import codec_for

    codec = codec_for("BrowsingEvent")
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 50,
            "batch.num.messages": 10_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 500_000,
        }
    )
    now_ms = time.time_ns() // 1_000_000
    started = time.monotonic()
    for i in range(users):
        user = f"user-{i:09d}"
        value = codec.encode(
            {
                "event_id": f"e{i}",
                "user_id": user,
                "session_id": f"s{i}",
                "event_type": "VIEW",
                "product_id": product_ids[i % len(product_ids)],
                "category_id": None,
                "price": None,
                "event_time": now_ms + i // 1000,
            }
        )
        while True:
            try:
                producer.produce(topic, value, user.encode())
                break
            except BufferError:
                producer.poll(0.1)
        if i % 100_000 == 0:
            producer.poll(0)
    producer.flush(120)
    say(f"  {users:,} events produced in {time.monotonic() - started:.0f} s")


def _committed(bootstrap: str, topic: str, group: str, partitions: int) -> int:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return sum(max(tp.offset, 0) for tp in tps)
    except Exception:  # the coordinator is busy: ask again
        return -1
    finally:
        c.close()


def _watch(
    proc: subprocess.Popen[bytes],
    phase: Phase,
    port: int,
    done: Any,
    timeout_s: float,
    log_path: Path,
) -> None:
    """Sample the process until ``done(metrics)``; its memory and sessions then."""
    started = time.monotonic()
    while True:
        metrics = _metrics(port)
        if metrics and done(metrics):
            break
        if proc.poll() is not None:
            phase.error = f"exited {proc.returncode} (see {log_path})"
            return
        if time.monotonic() - started > timeout_s:
            phase.error = f"not done after {timeout_s:g} s (see {log_path})"
            break
        time.sleep(POLL_S)
    phase.seconds = round(time.monotonic() - started, 1)
    phase.sessions = int(_metrics(port).get("worker_active_sessions", 0))
    try:
        status = Path(f"/proc/{proc.pid}/status").read_text()
    except OSError:
        status = ""
    phase.rss_mib, phase.peak_rss_mib = proc_memory_mib(status)


def format_table(result: MemoryResult) -> str:
    rows = [
        "| worker | seconds | sessions held | RSS MiB | peak RSS MiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for p in result.phases:
        rows.append(
            f"| {p.name} | {p.seconds:.1f} | {p.sessions:,} | {p.rss_mib} | {p.peak_rss_mib} |"
            + (f" {p.error}" if p.error else "")
        )
    return "\n".join(rows)


def run(args: argparse.Namespace, log: Any) -> int:
    """``worker-dev memory``: print the table; 1 if a worker failed or held fewer users."""
    from devtools import localkafka
    from worker.config import KafkaSettings, TopicSettings
    from worker.kafka.admin import ensure_topics, wait_for_cluster
    from worker.kafka.changelog import changelog_topic, ensure_changelog
    from worker.model.artifact import load_artifact

    def say(line: str) -> None:
        print(line, flush=True)

    work_dir: Path = args.work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    worker = resolve_worker_env(
        args.worker_env, args.env_root.resolve(), say=say, checkout=args.worker_checkout
    )
    artifact = load_artifact(args.models_dir)
    product_ids = [str(p) for p in artifact.tables.product_ids.tolist()]
    result = MemoryResult(args.users, artifact.version)
    broker_cfg = None
    bootstrap = args.bootstrap_servers
    if not bootstrap:
        port, controller_port = localkafka.free_ports(2)
        broker_cfg = localkafka.LocalKafkaConfig(
            home=Path(tempfile.mkdtemp(prefix="worker-memory-kafka-")),
            port=port,
            controller_port=controller_port,
        )
        say(f"starting a local broker in {broker_cfg.home} ...")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if broker_cfg is not None:
            bootstrap = localkafka.start(broker_cfg)
        run_id = uuid.uuid4().hex[:6]
        kafka = KafkaSettings(bootstrap)
        wait_for_cluster(kafka)
        topics = TopicSettings(
            events=f"memory-events-{run_id}",
            suggestions=f"memory-suggestions-{run_id}",
            purchases=f"memory-purchases-{run_id}",
            accuracy=f"memory-accuracy-{run_id}",
        )
        group = f"memory-{run_id}"
        ensure_topics(kafka, topics, log)
        ensure_changelog(
            kafka, changelog_topic(group), topics.partitions, topics.replication_factor, log
        )
        warm_up_group(kafka, topics.events, f"{group}-warm-up", log)
        _produce(bootstrap, topics.events, args.users, product_ids, say)
        common = [
            "run",
            "--bootstrap-servers",
            bootstrap,
            "--models-dir",
            str(args.models_dir),
            "--events-topic",
            topics.events,
            "--suggestions-topic",
            topics.suggestions,
            "--purchases-topic",
            topics.purchases,
            "--accuracy-topic",
            topics.accuracy,
            "--group-id",
            group,
            "--log-format",
            "json",
        ]
        users = args.users

        def start(name: str) -> tuple[subprocess.Popen[bytes], int, Path]:
            port = localkafka.free_ports(1)[0]
            log_path = work_dir / f"{name}-{run_id}.log"
            proc = subprocess.Popen(
                worker.command(*common, "--metrics-port", str(port)),
                stdout=open(log_path, "wb"),  # noqa: SIM115 - the child holds it
                stderr=subprocess.STDOUT,
                env=worker.environ(),
                start_new_session=True,
            )
            procs.append(proc)
            return proc, port, log_path

        say(f"worker 1 answers {users:,} users ...")
        proc, port, log_path = start("serve")
        serve = Phase("answers every user, then SIGKILL")
        _watch(
            proc,
            serve,
            port,
            lambda m: (
                m.get("worker_active_sessions", 0) >= users
                and _committed(bootstrap, topics.events, group, topics.partitions) >= users
            ),
            args.timeout_s,
            log_path,
        )
        result.phases.append(serve)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        say(f"worker 2 restores {users:,} sessions from the changelog ...")
        proc, port, log_path = start("restore")
        restore = Phase("restores every session (fresh process)")
        _watch(
            proc,
            restore,
            port,
            lambda m: (
                m.get("worker_active_sessions", 0) >= users
                and m.get("worker_restoring_partitions", 1) == 0
                and m.get("worker_assigned_partitions", 0) > 0
            ),
            args.timeout_s,
            log_path,
        )
        result.phases.append(restore)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if broker_cfg is not None:
            try:
                localkafka.stop(broker_cfg)
            finally:
                shutil.rmtree(broker_cfg.home, ignore_errors=True)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    command = "worker-dev " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    say("")
    say(
        f"{command}  ({stamp}, {os.cpu_count()} CPUs, model {result.model}, "
        f"worker env {worker.name})"
    )
    say(format_table(result))
    (work_dir / f"memory-{run_id}.json").write_text(
        json.dumps(
            {"date": stamp, "command": command, "worker_env": worker.name, **asdict(result)},
            indent=2,
        )
        + "\n"
    )
    failed = any(p.error or p.sessions < users for p in result.phases)
    return 1 if failed else 0
