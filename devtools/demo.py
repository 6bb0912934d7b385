"""``worker-dev demo``: the whole system on the embedded default, for about a minute.

1. Start the local Apache Kafka (unless ``KAFKA_BOOTSTRAP_SERVERS`` names a cluster).
2. Create this run's topics (suffixed with a run id, so every figure is this run's alone).
3. Train a model if ``--models-dir`` has none (simulated history -> ``worker train``).
4. Start the live simulator, ``--workers`` worker processes and the monitor as subprocesses.
5. Show live progress read from Kafka itself: events in, suggestions out, dead-lettered, lag,
   rolling hit rate from the accuracy topic.
6. Stop the simulator, let the workers drain, stop everything (SIGTERM), print the summary.
7. Stop the broker if this command started it.

Time runs ``speedup`` times faster in the simulated shop than on the wall clock (seconds between
views, minutes to a purchase); the monitor's attribution window is scaled the same way.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import Consumer, TopicPartition

from worker.config import KafkaSettings, TopicSettings
from worker.kafka.admin import ensure_topics, wait_for_cluster
from worker.wire.codec import codec_for

#: Mean events per simulated user per day (2 sessions of ~5 events; see worker.core.clickstream).
EVENTS_PER_USER_DAY = 10.0
SPEEDUP = 20.0
ATTRIBUTION_WINDOW_SIM_S = 1800.0
DRAIN_TIMEOUT_S = 60.0


@dataclass
class Progress:
    events_in: int = 0
    suggestions_out: int = 0
    dead_lettered: int = 0
    purchases: int = 0
    lag: int = 0
    reports: list[dict[str, Any]] = field(default_factory=list)

    @property
    def last_report(self) -> dict[str, Any] | None:
        return self.reports[-1] if self.reports else None


class KafkaObserver:
    """Reads the run's progress from the broker: high watermarks, committed offsets, reports."""

    def __init__(self, kafka: KafkaSettings, topics: TopicSettings, worker_group: str) -> None:
        self.topics = topics
        self._offsets = Consumer(
            kafka.client_config(**{"group.id": worker_group, "enable.auto.commit": False})
        )
        self._reports = Consumer(
            kafka.client_config(
                **{
                    "group.id": f"demo-observer-{uuid.uuid4().hex}",
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                }
            )
        )
        self._reports.assign([TopicPartition(topics.accuracy, 0, 0)])
        self._codec = codec_for("AccuracyReport")
        self.progress = Progress()

    def _high(self, topic: str, partitions: int) -> list[int]:
        return [
            self._offsets.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
            for p in range(partitions)
        ]

    def poll(self) -> Progress:
        t = self.topics
        events_high = self._high(t.events, t.partitions)
        committed = self._offsets.committed(
            [TopicPartition(t.events, p) for p in range(t.partitions)], timeout=5
        )
        lag = sum(h - max(c.offset, 0) for h, c in zip(events_high, committed, strict=True))
        p = self.progress
        p.events_in = sum(events_high)
        p.suggestions_out = sum(self._high(t.suggestions, t.partitions))
        p.dead_lettered = sum(self._high(t.dead_letter(t.events), t.partitions))
        p.purchases = sum(self._high(t.purchases, t.partitions))
        p.lag = lag
        for msg in self._reports.consume(1000, timeout=0.1):
            if msg.error() is None:
                p.reports.append(self._codec.decode(msg.value()))
        return p

    def close(self) -> None:
        self._offsets.close()
        self._reports.close()


def latency_summary(kafka: KafkaSettings, topics: TopicSettings) -> dict[str, Any]:
    """Read every suggestion of the run: count, distinct events, latency percentiles (ms)."""
    consumer = Consumer(
        kafka.client_config(
            **{
                "group.id": f"demo-reader-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
    )
    consumer.assign([TopicPartition(topics.suggestions, p, 0) for p in range(topics.partitions)])
    codec = codec_for("ProductSuggestion")
    latencies: list[int] = []
    event_ids: set[str] = set()
    at_end: set[int] = set()
    deadline = time.monotonic() + 120
    while len(at_end) < topics.partitions and time.monotonic() < deadline:
        for msg in consumer.consume(5000, timeout=1.0):
            if msg.error() is not None:
                at_end.add(msg.partition())
                continue
            record = codec.decode(msg.value())
            event_ids.add(record["event_id"])
            # To the moment the worker handed the ranked suggestion to its producer
            # (``produced_time``), not to the broker's acknowledgement, which comes a few ms later.
            latencies.append(record["produced_time"] - record["event_time"])
    consumer.close()
    arr = np.asarray(latencies or [0])
    return {
        "suggestions": len(latencies),
        "distinct_events": len(event_ids),
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
        "max_ms": float(arr.max()),
    }


def _spawn(args: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    log_file = open(log_path, "ab")  # noqa: SIM115 (closed when the process ends)
    return subprocess.Popen(
        [sys.executable, "-m", "worker.cli", *args],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def _ensure_model(models_dir: Path, work_dir: Path, log: Any) -> None:
    from worker.model.artifact import resolve_artifact_dir

    try:
        resolve_artifact_dir(models_dir)
        return
    except Exception:
        pass
    from worker.apps import simulate
    from worker.apps.train import TrainSettings, format_evaluation, train

    dataset_dir = work_dir / "history"
    print(
        f"no model in {models_dir}: simulating {simulate.DEFAULT_HISTORY_DAYS:g} days of history "
        f"into {dataset_dir} and training one: fit on the earlier 80 %, evaluated with five "
        "heuristics on the later 20 %, refit on all of it, compiled for this machine (about 4 "
        "minutes on 2 cores) ...",
        flush=True,
    )
    summary = simulate.write_history(dataset_dir, simulate.SimulatorSettings())
    print(
        f"  history: {summary['n_events']:,} events, {summary['n_purchases']:,} purchase lines",
        flush=True,
    )
    path, metadata = train(dataset_dir, models_dir, TrainSettings(), log=log)
    print(f"  model {metadata['version']} -> {path}")
    print("  " + format_evaluation(metadata).replace("\n", "\n  "), flush=True)


def _warm_scorer(models_dir: Path, log: Any) -> None:
    """Compile the model once (lleaves, when installed) so the workers load it from the cache."""
    from worker.model.artifact import load_artifact
    from worker.model.scoring import make_scorer

    artifact = load_artifact(models_dir)
    started = time.monotonic()
    scorer = make_scorer(artifact.path, artifact.booster, backend="auto", log=log)
    print(
        f"scoring backend: {scorer.name} ({time.monotonic() - started:.1f} s to prepare)",
        flush=True,
    )


def _state(proc: subprocess.Popen) -> str:
    """``up`` while running, ``done`` after a clean exit, else ``DOWN (exit N)``."""
    code = proc.poll()
    if code is None:
        return "up"
    return "done" if code == 0 else f"DOWN (exit {code})"


def _table(
    progress: Progress, elapsed_s: float, duration_s: float, states: dict[str, str], phase: str
) -> Any:
    from rich.table import Table

    table = Table(
        title=f"recommender demo  {elapsed_s:5.0f} s / {duration_s:.0f} s  {phase}", min_width=60
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("events in", f"{progress.events_in:,}")
    table.add_row("suggestions out", f"{progress.suggestions_out:,}")
    table.add_row("dead-lettered", f"{progress.dead_lettered:,}")
    table.add_row("purchase lines", f"{progress.purchases:,}")
    table.add_row("worker lag (events)", f"{progress.lag:,}")
    report = progress.last_report
    if report:
        table.add_row(
            f"hit rate@{report['k']} model (cumulative)", _pct(report["cumulative_hit_rate_at_k"])
        )
        table.add_row(
            f"hit rate@{report['k']} popularity", _pct(report["cumulative_baseline_hit_rate_at_k"])
        )
        table.add_row("attributed purchases", f"{report['cumulative_attributed']:,}")
    else:
        table.add_row("hit rate", "waiting for the first closed window")
    table.add_row("processes", "  ".join(f"{n}:{state}" for n, state in states.items()))
    return table


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def run_demo(args: argparse.Namespace, log: Any) -> int:
    from devtools import localkafka

    work_dir: Path = args.work_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    started_broker = False
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker_cfg = localkafka.LocalKafkaConfig()
    if not bootstrap:
        was_running = localkafka.status(broker_cfg).get("running", False)
        if not was_running:
            print("starting the local Apache Kafka (the first run fetches it from Maven Central)")
        bootstrap = localkafka.start(broker_cfg)
        started_broker = not was_running
    print(f"broker: {bootstrap}", flush=True)
    try:
        if getattr(args, "lifecycle", False):
            from devtools.lifecycle_demo import run_lifecycle

            return run_lifecycle(args, log, bootstrap, work_dir)
        return _run(args, log, bootstrap, work_dir)
    finally:
        if started_broker:
            localkafka.stop(broker_cfg)
            print("local broker stopped", flush=True)


def run_topics(kafka: KafkaSettings, log: Any) -> tuple[str, TopicSettings]:
    """A run id and this run's topics (suffixed with it, so every figure is this run's alone),
    created on the broker."""
    wait_for_cluster(kafka)
    run_id = time.strftime("%Y%m%d%H%M%S")
    topics = TopicSettings(
        events=f"browsing-events-{run_id}",
        suggestions=f"product-suggestions-{run_id}",
        purchases=f"purchases-{run_id}",
        accuracy=f"recommendation-accuracy-{run_id}",
    )
    ensure_topics(kafka, topics, log)
    return run_id, topics


def topic_args(bootstrap: str, topics: TopicSettings) -> list[str]:
    """The ``worker`` flags naming the broker and this run's topics."""
    return [
        "--bootstrap-servers",
        bootstrap,
        "--events-topic",
        topics.events,
        "--suggestions-topic",
        topics.suggestions,
        "--purchases-topic",
        topics.purchases,
        "--accuracy-topic",
        topics.accuracy,
    ]


def simulated_users(rate: float) -> int:
    """Simulated users that offer about ``rate`` events/s at the demo's speed-up."""
    return max(1000, int(rate * 86400 / (SPEEDUP * EVENTS_PER_USER_DAY)))


def _run(args: argparse.Namespace, log: Any, bootstrap: str, work_dir: Path) -> int:
    kafka = KafkaSettings(bootstrap)
    run_id, topics = run_topics(kafka, log)
    _ensure_model(args.models_dir, work_dir, log)
    _warm_scorer(args.models_dir, log)

    speedup = SPEEDUP
    users = simulated_users(args.rate)
    attribution_s = ATTRIBUTION_WINDOW_SIM_S / speedup
    group = f"recommender-workers-{run_id}"
    common = topic_args(bootstrap, topics)
    env = {**os.environ, "WORKER_LOG_FORMAT": "json"}
    logs = work_dir / f"logs-{run_id}"
    logs.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen] = {}
    for i in range(args.workers):
        procs[f"worker{i + 1}"] = _spawn(
            [
                "run",
                *common,
                "--models-dir",
                str(args.models_dir),
                "--group-id",
                group,
                "--metrics-port",
                "0",
            ],
            logs / f"worker{i + 1}.log",
            env,
        )
    procs["monitor"] = _spawn(
        [
            "monitor",
            *common,
            "--models-dir",
            str(args.models_dir),
            "--group-id",
            f"monitor-{run_id}",
            "--attribution-window-s",
            f"{attribution_s:g}",
            "--window-s",
            "10",
            "--metrics-port",
            "0",
        ],
        logs / "monitor.log",
        env,
    )
    time.sleep(2.0)  # let the group form before traffic starts
    procs["simulator"] = _spawn(
        [
            "simulate",
            "--produce",
            *common,
            "--users",
            str(users),
            "--speedup",
            f"{speedup:g}",
            "--max-rate",
            f"{args.rate:g}",
            "--duration-s",
            f"{args.duration_s:g}",
            "--corrupt-every",
            "2000",
        ],
        logs / "simulator.log",
        env,
    )
    print(
        f"run {run_id}: {args.workers} workers, monitor, simulator ({users:,} users, "
        f"{speedup:g}x time, <= {args.rate:g} events/s, attribution window {attribution_s:g} s); "
        f"logs in {logs}",
        flush=True,
    )

    observer = KafkaObserver(kafka, topics, group)
    t0 = time.monotonic()
    try:
        _watch(observer, procs, t0, args.duration_s)
    finally:
        _stop_all(procs)
    progress = observer.poll()
    observer.close()
    lat = latency_summary(kafka, topics)
    _print_summary(progress, lat, procs, args, topics)
    failed = [n for n, p in procs.items() if p.returncode not in (0, -signal.SIGTERM)]
    return 1 if failed or progress.suggestions_out == 0 else 0


def _watch(
    observer: KafkaObserver, procs: dict[str, subprocess.Popen], t0: float, duration_s: float
) -> None:
    from rich.console import Console
    from rich.live import Live

    console = Console()
    interactive = console.is_terminal
    last_print = 0.0
    sim = procs["simulator"]
    with (
        Live(console=console, auto_refresh=False, transient=False)
        if interactive
        else _Null() as live
    ):
        drain_started: float | None = None
        while True:
            progress = observer.poll()
            elapsed = time.monotonic() - t0
            alive = {n: p.poll() is None for n, p in procs.items()}
            states = {n: _state(p) for n, p in procs.items()}
            # Once the simulator is done, the workers and the monitor drain what is left.
            phase = "draining" if sim.poll() is not None else "running"
            if interactive:
                live.update(_table(progress, elapsed, duration_s, states, phase), refresh=True)
            elif elapsed - last_print >= 5:
                last_print = elapsed
                report = progress.last_report or {}
                model = _pct(report.get("cumulative_hit_rate_at_k"))
                popular = _pct(report.get("cumulative_baseline_hit_rate_at_k"))
                print(
                    f"[{elapsed:5.0f} s {phase}] events in {progress.events_in:,}  suggestions out "
                    f"{progress.suggestions_out:,}  dead-lettered {progress.dead_lettered:,}  "
                    f"lag {progress.lag:,}  hit rate@K model {model} popularity {popular}",
                    flush=True,
                )
            if not all(alive[n] for n in procs if n.startswith("worker")):
                print("a worker process exited early; see its log", flush=True)
                return
            if sim.poll() is not None:
                drain_started = drain_started or time.monotonic()
                caught_up = progress.suggestions_out + progress.dead_lettered >= progress.events_in
                # Give the monitor one report window past the end to close what it can.
                if (
                    caught_up and time.monotonic() - drain_started > 12
                ) or time.monotonic() - drain_started > DRAIN_TIMEOUT_S:
                    return
            time.sleep(1.0)


class _Null:
    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def _stop_all(procs: dict[str, subprocess.Popen]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 40
    for proc in procs.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _print_summary(
    progress: Progress,
    lat: dict[str, Any],
    procs: dict[str, subprocess.Popen],
    args: argparse.Namespace,
    topics: TopicSettings,
) -> None:
    report = progress.last_report or {}
    unanswered = max(0, progress.events_in - progress.suggestions_out - progress.dead_lettered)
    rows = [
        ("events in", f"{progress.events_in:,}"),
        ("suggestions out", f"{progress.suggestions_out:,} ({lat['distinct_events']:,} events)"),
        ("dead-lettered", f"{progress.dead_lettered:,} ({topics.dead_letter(topics.events)})"),
        ("unanswered", f"{unanswered:,}"),
        ("purchase lines", f"{progress.purchases:,}"),
        (
            "latency event->suggestion produced",
            f"p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms, max {lat['max_ms']:.0f} ms",
        ),
    ]
    if report:
        k = report["k"]
        rows += [
            (f"hit rate@{k} model", _pct(report["cumulative_hit_rate_at_k"])),
            (f"hit rate@{k} popularity", _pct(report["cumulative_baseline_hit_rate_at_k"])),
            (f"hit rate@{k} recency+category", _pct(report["cumulative_heuristic_hit_rate_at_k"])),
            (f"discovery hit rate@{k} model", _pct(report["cumulative_discovery_hit_rate_at_k"])),
            ("purchase coverage", _pct(report["cumulative_purchase_coverage"])),
            ("event coverage", _pct(report["cumulative_event_coverage"])),
            (
                "attributed purchase lines",
                f"{report['cumulative_attributed']:,} in {len(progress.reports)} windows",
            ),
        ]
    else:
        rows.append(("hit rate", "no accuracy window closed (run longer with --duration-s)"))
    rows.append(("exit codes", "  ".join(f"{n}={p.returncode}" for n, p in procs.items())))
    print("\n=== demo summary ===")
    width = max(len(name) for name, _ in rows) + 2
    for name, value in rows:
        print(f"{name:<{width}}{value}")
    sys.stdout.flush()
