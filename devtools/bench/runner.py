"""``worker-dev bench``: the reference benchmark of the worker, with its peers, in one run.

The reference workload (see ``docs/benchmark.md``):

* ``--events`` (default 1,000,000) browsing events of the simulator's live stream (the default
  catalogue and population: 5,000 products, 20,000 users, the catalogue the model is trained on),
  pre-produced once per run on a 12-partition topic of the local broker and reused by every
  configuration (each with its own consumer group, reading from the beginning). Payload
  ``event_time`` is the simulated time (sessions evolve as in the simulated shop); the Kafka
  timestamp is the wall clock at produce time.
* The model of ``worker train`` with its default settings (200 trees x 63 leaves, trained on
  ``worker simulate --days 2``); trained into the work dir when ``--models-dir`` has none.
* The worker with its defaults (``worker run``: 50 candidates, top-10, micro-batches of up to 500
  events or 20 ms, at-least-once with the session changelog), one process per configuration
  process, each its own ``python -m worker.cli run``.

What one run measures, in this order:

1. **Throughput**, 1 and 2 worker processes, over the backlog: steady state between 10 % and 90 %
   of the events consumed (``worker_events_consumed_total`` scraped from ``/metrics`` every
   0.5 s); CPU seconds per million events from ``/proc/<pid>/stat`` (utime + stime) over the same
   window; the stage breakdown from ``worker_stage_seconds_sum`` (fetch = wall time minus the
   stages: time in ``consume()`` plus loop overhead); peak RSS per process (``VmHWM``).
2. **Scoring ceiling**: the model call alone (``scorer.score``) on pre-built feature matrices of
   the worker's batch shape (500 events x 50 candidates x 20 features) built with the worker's
   own session, candidate and feature code from the same events; per scoring backend available.
3. **State size**: a fresh interpreter loads the model artifact as the worker does and fills a
   :class:`worker.core.session.SessionStore` with ``--rss-users`` (default 1,000,000) distinct users
   through :func:`worker.core.pipeline.advance_sessions` (3 events each, in batches); it reports its
   peak RSS, the state's share, and that idle sessions expire (``expire_idle``).
4. **Peers** (unless ``--skip-peers``), each in its own venv (:mod:`devtools.bench.peers.envs`):
   MLServer's Kafka mode (mlserver-lightgbm, the same ``model.txt``) measured by a rate sweep,
   plain and with adaptive batching; the Quix Streams app (the worker's feature code) over the
   same events topic, per message and with its batching sink; each peer's latency at half its own
   maximum.
5. **Latency** (:mod:`devtools.bench.latency`) at 25 %, 50 % and 75 % of the measured 1-process
   maximum and at each peer's latency rate, pinned (broker and load generator on one CPU, the
   worker on another) and unpinned: per point a fresh worker and topics; events pre-encoded with
   their intended send time as ``event_time`` and sent on that schedule by a paced loop that does
   no encoding; latency = broker append time of the suggestion (``LogAppendTime``) minus the
   intended send time, over the steady part (after a warm-up); the generator's own lag beside it.

It ends with one table of every figure, the targets met / not met and the ratios, and writes
``--json-out``; ``--plot-out`` draws throughput and latency per configuration and the latency
histograms at half load (matplotlib from a small venv of its own, never the project's env).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from devtools.bench.sweep import REFINE_STEPS, find_max
from devtools.worker_env import WorkerEnv, resolve_worker_env
from devtools.worker_env import add_argument as add_worker_env_argument

REPO_ROOT = Path(__file__).resolve().parents[2]

GIB = 2**30
MIB = 2**20
SAMPLE_INTERVAL_S = 0.5
#: The worker's ``worker_stage_seconds{stage}`` labels, in batch order (the step's
#: ``worker.apps.batch.STEP_STAGES``, then the loop's ``worker.apps.serve.LOOP_STAGES``).
STAGES = (
    "parse",
    "state",
    "candidates",
    "features",
    "scoring",
    "rank",
    "encode",
    "changelog",
    "produce",
    "checkpoint",
)
PLOT_REQUIREMENTS = ("matplotlib==3.10.7",)


def mode_scorer(spec: str) -> tuple[str, str]:
    """A peer mode ``MODE[:SCORER]`` of ``--quix-modes`` or ``--mlserver-modes`` as (mode,
    scorer); the scorer defaults to ``booster`` (``Booster.predict``).

    Raises:
        ValueError: an unknown scorer.
    """
    mode, _, scorer = spec.partition(":")
    scorer = scorer or "booster"
    if scorer not in ("booster", "lleaves"):
        raise ValueError(f"peer mode {spec!r}: the scorer is booster or lleaves")
    return mode, scorer


def peer_title(spec: str, entry: dict[str, Any]) -> str:
    """A peer's mode (Quix or MLServer) with its scorer, for tables and plots."""
    mode, _ = mode_scorer(spec)
    scorer = entry.get("scorer", "booster")
    return f"{mode} ({'lleaves' if scorer == 'lleaves' else 'Booster.predict'})"


#: A figure shown beside a target's: {target figure: (figure, label)}.
TARGET_ASIDES = {"latency_pinned_p99_ms": ("latency_unpinned_p99_ms", "unpinned")}
#: Targets of the issue: (figure key, comparison, bound, text).
#: ``(figure, op, bound, text)``. The maxima compared are each system's by the one rule
#: (devtools.bench.sweep); MLServer "as its docs configure it" is its LightGBM runtime.
TARGETS = (
    ("ratio_e2e_to_ceiling", ">=", 0.7, "e2e throughput >= 0.7 x scoring ceiling"),
    ("ratio_max_vs_mlserver", ">=", 20.0, "max >= 20 x MLServer (its LightGBM runtime)"),
    (
        "ratio_max_vs_mlserver_same_scorer",
        ">=",
        2.0,
        "max >= 2 x MLServer with the same compiled scorer",
    ),
    ("ratio_max_vs_quix_same_scorer", ">=", 2.0, "max >= 2 x Quix with the same compiled scorer"),
    ("latency_pinned_p99_ms", "<=", 50.0, "p99 at half load <= 50 ms (pinned)"),
    ("scaling_factor", ">=", 1.8, "two processes >= 1.8 x one"),
    ("cpu_ratio_2p_to_1p", "<=", 1.1, "CPU per event, 2 processes <= 1.1 x 1"),
    ("rss_1m_users_mib", "<=", 1024.0, "<= 1 GiB RSS with the active users"),
)


# -- arguments --------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``worker bench``."""
    p.add_argument(
        "--bootstrap-servers",
        default=None,
        help="an existing broker; default: a local Apache Kafka started in --work-dir",
    )
    p.add_argument("--work-dir", type=Path, default=Path("var/bench"))
    p.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="models dir (LATEST) or artifact dir; default <work-dir>/models, trained there "
        "with `worker simulate --days 2` + `worker train` defaults when absent",
    )
    p.add_argument("--events", type=int, default=None, help="pre-produced events (1,000,000)")
    p.add_argument("--partitions", type=int, default=12)
    p.add_argument(
        "--small",
        action="store_true",
        help="the CI smoke variant: 20,000 events, 50,000 users in state, short latency run, "
        "peers limited to a few hundred requests each",
    )
    p.add_argument("--rss-users", type=int, default=None, help="distinct users in state (1M)")
    p.add_argument(
        "--latency-s",
        type=float,
        default=None,
        help="measured seconds per latency point (30; --small 5)",
    )
    p.add_argument(
        "--warmup-s",
        type=float,
        default=None,
        help="warm-up seconds per latency point, not measured (5; --small 2)",
    )
    p.add_argument("--ceiling-events", type=int, default=None, help="events for the ceiling")
    p.add_argument("--max-batch-size", type=int, default=500)
    p.add_argument("--max-batch-wait-ms", type=int, default=20)
    p.add_argument("--candidates", type=int, default=50)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument(
        "--worker-arg",
        action="append",
        default=[],
        help="extra argument of every `worker run` (repeatable), "
        "e.g. --worker-arg=--no-state-changelog",
    )
    p.add_argument("--users", type=int, default=20000, help="simulated population")
    p.add_argument("--products", type=int, default=5000, help="simulated catalogue")
    p.add_argument("--categories", type=int, default=60)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--skip-peers", action="store_true")
    p.add_argument(
        "--peers",
        default="mlserver,quix",
        help="which peers the peers phase runs (comma separated; default both)",
    )
    p.add_argument(
        "--env-root",
        type=Path,
        default=None,
        help="peer venvs and the worker's runtime venv (<work-dir>/envs)",
    )
    add_worker_env_argument(p, env_root=False)
    p.add_argument("--quix-events", type=int, default=None, help="backlog events per Quix mode")
    p.add_argument(
        "--mlserver-modes",
        default="plain,adaptive-batching,adaptive-batching:lleaves",
        help="MODE[:SCORER],...: MLServer modes (plain, adaptive-batching), each served by its "
        "LightGBM runtime or, with :lleaves, by a custom runtime with the compiled model",
    )
    p.add_argument(
        "--quix-modes",
        default="per-message,batch-sink,batch-sink:lleaves",
        help="MODE[:SCORER],...: Quix app modes, each scored with Booster.predict or, with "
        ":lleaves, with the compiled model the worker serves",
    )
    p.add_argument(
        "--quix-sweep-modes",
        default="per-message,batch-sink,batch-sink:lleaves",
        help="Quix modes whose maximum is swept (devtools.bench.sweep) and whose latency is "
        "measured at half of it; the others get their backlog throughput only",
    )
    p.add_argument("--peer-latency-s", type=float, default=None, help="peer latency run seconds")
    p.add_argument(
        "--sweep-step-s",
        type=float,
        default=None,
        help="measured seconds per step of the maximum-rate sweep, every system (10; --small 2; "
        "the worker's steps have --warmup-s before them)",
    )
    p.add_argument(
        "--sweep-max-steps",
        type=int,
        default=None,
        help="sweep steps up (or down) before the refinement (8; --small 2)",
    )
    p.add_argument(
        "--sweep-refine",
        type=int,
        default=None,
        help=f"geometric bisections after the sweep ({REFINE_STEPS}; --small 0)",
    )
    p.add_argument(
        "--sweep-start-rate",
        type=float,
        default=None,
        help="the worker's first sweep rate (default: a quarter of its 1-process backlog "
        "throughput; 1,000/s without one)",
    )
    p.add_argument("--mlserver-start-rate", type=float, default=None)
    p.add_argument(
        "--phases",
        default="throughput,ceiling,state,peers,sweep,latency",
        help="comma-separated subset to run (a partial run; the reference run runs all)",
    )
    p.add_argument(
        "--latency-max-rate",
        type=float,
        default=None,
        help="events/s taken as 100 %% for the latency loads (default: the measured 1-process "
        "max; required with --phases latency without throughput, unless --latency-rate or "
        "--latency-rates alone is given)",
    )
    p.add_argument(
        "--latency-rate",
        type=float,
        default=None,
        help="the half-load rate of the latency phase (sets --latency-max-rate to twice it)",
    )
    p.add_argument(
        "--latency-loads",
        default="0.25,0.5,0.75",
        help="fractions of the maximum at which latency is measured, each mode",
    )
    p.add_argument(
        "--latency-rates",
        default="peers",
        help="absolute events/s at which latency is also measured, comma-separated; `peers` "
        "(default) = the rates of the peers' latency runs of this run (the peers phase runs "
        "before the latency phase), e.g. `peers,500`; `none` for none",
    )
    p.add_argument(
        "--latency-modes",
        default="pinned,unpinned",
        help="pinned (broker and load generator on one CPU, the worker on another, Linux "
        "sched_setaffinity) and/or unpinned",
    )
    p.add_argument(
        "--latency-broker-warmups",
        type=int,
        default=1,
        help="unmeasured latency points run first at the first point's rate (1): a broker's "
        "JIT compiler takes about a minute of CPU to compile its produce and fetch paths, which "
        "the first measured point would otherwise pay for",
    )
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--plot-out", type=Path, default=None, help="PNG of throughput and latency")
    p.add_argument("--keep-broker", action="store_true", help="leave the own broker running")


@dataclass(frozen=True)
class Sizes:
    events: int
    rss_users: int
    latency_s: float
    warmup_s: float
    ceiling_events: int
    quix_events: int
    peer_latency_s: float
    sweep_step_s: float
    mlserver_start_rate: float
    sweep_max_steps: int
    sweep_refine: int


def sizes_of(args: argparse.Namespace) -> Sizes:
    small = bool(args.small)
    base = (
        Sizes(20_000, 50_000, 5.0, 2.0, 5_000, 600, 4.0, 2.0, 100.0, 2, 0)
        if small
        else Sizes(
            1_000_000, 1_000_000, 30.0, 5.0, 20_000, 60_000, 20.0, 10.0, 150.0, 8, REFINE_STEPS
        )
    )

    def pick(name: str, default: Any) -> Any:
        value = getattr(args, name, None)
        return default if value is None else value

    return Sizes(
        events=pick("events", base.events),
        rss_users=pick("rss_users", base.rss_users),
        latency_s=pick("latency_s", base.latency_s),
        warmup_s=pick("warmup_s", base.warmup_s),
        ceiling_events=pick("ceiling_events", base.ceiling_events),
        quix_events=pick("quix_events", base.quix_events),
        peer_latency_s=pick("peer_latency_s", base.peer_latency_s),
        sweep_step_s=pick("sweep_step_s", base.sweep_step_s),
        mlserver_start_rate=pick("mlserver_start_rate", base.mlserver_start_rate),
        sweep_max_steps=pick("sweep_max_steps", base.sweep_max_steps),
        sweep_refine=pick("sweep_refine", base.sweep_refine),
    )


# -- helpers ----------------------------------------------------------------------------------


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _stat(pid: int) -> tuple[float, int] | None:
    """(cpu seconds utime+stime, rss bytes) of one process, None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    tck = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tck, int(fields[21]) * os.sysconf("SC_PAGE_SIZE")


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


_METRIC_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def parse_prometheus(text: str) -> dict[str, float]:
    """``{name or name{labels}: value}`` of a Prometheus text exposition."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _METRIC_RE.match(line.strip())
        if m:
            with contextlib.suppress(ValueError):
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def _http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), ""
    except (urllib.error.URLError, OSError):
        return 0, ""


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(float(value), digits)


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    import confluent_kafka
    import lightgbm

    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "lightgbm": lightgbm.__version__,
        "confluent_kafka": confluent_kafka.version()[0],
        "librdkafka": confluent_kafka.libversion()[0],
        "shared": "broker, load generator, workers and peers share these cores",
    }


# -- the worker process -----------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    consumed: float
    stages: dict[str, float]
    cpu_s: float


@dataclass
class WorkerProc:
    name: str
    proc: subprocess.Popen
    port: int
    log_path: Path
    last: Sample | None = None
    hwm_kib: int = 0
    started: float = field(default_factory=time.monotonic)
    #: Seconds from the spawn to the first ``/readyz`` 200 (None until then).
    ready_s: float | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def sample(self) -> Sample | None:
        status, text = _http_get(f"http://127.0.0.1:{self.port}/metrics")
        stat = _stat(self.proc.pid)
        self.hwm_kib = max(self.hwm_kib, _status_kib(self.proc.pid, "VmHWM"))
        if status != 200 or stat is None:
            return self.last
        metrics = parse_prometheus(text)
        stages = {s: metrics.get(f'worker_stage_seconds_sum{{stage="{s}"}}', 0.0) for s in STAGES}
        self.last = Sample(
            time.monotonic(), metrics.get("worker_events_consumed_total", 0.0), stages, stat[0]
        )
        return self.last

    def ready(self) -> bool:
        ok = _http_get(f"http://127.0.0.1:{self.port}/readyz")[0] == 200
        if ok and self.ready_s is None:
            self.ready_s = time.monotonic() - self.started
        return ok

    def stop(self, timeout_s: float = 40.0) -> int | None:
        self.hwm_kib = max(self.hwm_kib, _status_kib(self.proc.pid, "VmHWM"))
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def check(self) -> None:
        if not self.alive():
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"worker {self.name} exited with {self.proc.returncode}:\n{tail}")


class BenchError(RuntimeError):
    """The benchmark could not complete a measurement."""


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    sizes: Sizes
    log: Any
    work_dir: Path
    bootstrap: str = ""
    models_dir: Path = Path("models")
    prefix: str = ""
    events_topic: str = ""
    results: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    served_backend: str = "lightgbm"
    peer_failures: list[str] = field(default_factory=list)
    _kafka_cfg: Any = None
    _load_events: list[dict[str, Any]] = field(default_factory=list)
    _broker_warmed: bool = False
    _procs: list[WorkerProc] = field(default_factory=list)
    #: The Python the worker runs with (devtools.worker_env; set by ``run``).
    worker_env: WorkerEnv = field(default_factory=lambda: WorkerEnv("current", sys.executable))

    def say(self, text: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)

    # -- set-up ------------------------------------------------------------------------------

    def sim_settings(self):
        from worker.apps.simulate import SimulatorSettings

        a = self.args
        return SimulatorSettings(
            n_products=a.products, n_categories=a.categories, n_users=a.users, seed=a.seed
        )

    def start_broker(self) -> None:
        if self.args.bootstrap_servers:
            self.bootstrap = self.args.bootstrap_servers
            self.results["broker"] = {"bootstrap": self.bootstrap, "started_by_bench": False}
            return
        from devtools.bench.peers.workload import free_port
        from devtools.localkafka import LocalKafkaConfig, start

        port = free_port()
        controller = free_port()
        while controller == port:
            controller = free_port()
        home = self.work_dir / "kafka"
        if home.exists():
            shutil.rmtree(home)
        self._kafka_cfg = LocalKafkaConfig(
            home=home, port=port, controller_port=controller, heap_mb=1024
        )
        self.say(f"starting a local Apache Kafka in {home}")
        self.bootstrap = start(self._kafka_cfg)
        self.results["broker"] = {
            "bootstrap": self.bootstrap,
            "started_by_bench": True,
            "kafka_version": self._kafka_cfg.kafka_version,
            "heap_mb": self._kafka_cfg.heap_mb,
        }

    def stop_broker(self) -> None:
        if self._kafka_cfg is not None and not self.args.keep_broker:
            from devtools.localkafka import stop

            with contextlib.suppress(Exception):
                stop(self._kafka_cfg)
            shutil.rmtree(self._kafka_cfg.home, ignore_errors=True)

    def ensure_model(self) -> None:
        from worker.model.artifact import read_metadata, resolve_artifact_dir

        models = self.args.models_dir or self.work_dir / "models"
        try:
            resolve_artifact_dir(models)
        except Exception as exc:
            if self.args.models_dir is not None and self.args.models_dir.exists():
                raise
            self.say(f"no model in {models}: training one with `worker train` defaults")
            history = self.work_dir / "history"
            a = self.args
            sim = [
                sys.executable, "-m", "worker.cli", "simulate", "--out", str(history),
                "--days", "2", "--users", str(a.users), "--products", str(a.products),
                "--categories", str(a.categories), "--seed", str(a.seed),
            ]  # fmt: skip
            train = [
                sys.executable, "-m", "worker.cli", "train", "--dataset", str(history),
                "--models-dir", str(models),
            ]  # fmt: skip
            log_path = self.work_dir / "train.log"
            with log_path.open("w") as log:
                for cmd in (sim, train):
                    if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode:
                        raise BenchError(f"{' '.join(cmd[2:4])} failed, see {log_path}") from exc
        self.models_dir = models
        self.artifact_dir = resolve_artifact_dir(models)
        meta = read_metadata(models)
        settings = meta.get("settings", {})
        self.results["model"] = {
            "artifact": str(self.artifact_dir),
            "version": meta.get("version"),
            "trees": settings.get("num_trees"),
            "leaves": settings.get("num_leaves"),
            "training_queries": meta.get("training_queries"),
            "training_window": meta.get("training_window"),
        }

    def produce_workload(self) -> None:
        """Produce ``events`` simulated events once; every configuration reads them."""
        from devtools.bench.peers.workload import create_topics, make_load_producer
        from worker.apps.simulate import LIVE_START_MS, build
        from worker.wire.codec import codec_for

        n = self.sizes.events
        self.events_topic = f"{self.prefix}-events"
        create_topics(self.bootstrap, {self.events_topic: (self.args.partitions, {})})
        self.wait_topic(self.events_topic)
        _, simulator = build(self.sim_settings())
        codec = codec_for("BrowsingEvent")
        producer = make_load_producer(self.bootstrap)
        users: set[str] = set()
        first_ms = last_ms = None
        sent = 0
        started = time.monotonic()
        self.say(
            f"producing {n:,} events to {self.events_topic} ({self.args.partitions} partitions)"
        )
        for kind, record in simulator.records(LIVE_START_MS, LIVE_START_MS + 400 * 86_400_000):
            if kind != "event":
                continue
            key = record["user_id"].encode("utf-8")
            value = codec.encode(record)
            while True:
                try:
                    producer.produce(self.events_topic, value=value, key=key, timestamp=now_ms())
                    break
                except BufferError:
                    producer.poll(0.05)
            users.add(record["user_id"])
            first_ms = record["event_time"] if first_ms is None else first_ms
            last_ms = record["event_time"]
            sent += 1
            if sent % 10_000 == 0:
                producer.poll(0)
            if sent >= n:
                break
        remaining = producer.flush(120)
        if remaining or sent < n:
            raise BenchError(f"workload: {sent} generated, {remaining} unacknowledged")
        seconds = time.monotonic() - started
        self.results["workload"] = {
            "events": n,
            "topic": self.events_topic,
            "partitions": self.args.partitions,
            "distinct_users": len(users),
            "simulated_hours": round((last_ms - first_ms) / 3_600_000, 1),
            "simulator": self.sim_settings().__dict__,
            "produce_s": round(seconds, 1),
            "event_time": "simulated time (Kafka timestamp: wall clock at produce)",
        }
        self.say(f"produced in {seconds:.1f} s ({len(users):,} users)")

    # -- worker processes --------------------------------------------------------------------

    def start_worker(
        self, name: str, events_topic: str, suggestions_topic: str, group: str
    ) -> WorkerProc:
        from devtools.bench.peers.workload import free_port

        port = free_port()
        log_path = self.work_dir / f"{self.prefix}-{name}.log"
        a = self.args
        cmd = [
            *self.worker_env.command("run"),
            "--bootstrap-servers", self.bootstrap,
            "--events-topic", events_topic,
            "--suggestions-topic", suggestions_topic,
            "--purchases-topic", f"{self.prefix}-purchases",
            "--accuracy-topic", f"{self.prefix}-accuracy",
            "--partitions", str(a.partitions),
            "--models-dir", str(self.models_dir),
            "--group-id", group,
            "--metrics-port", str(port),
            "--max-batch-size", str(a.max_batch_size),
            "--max-batch-wait-ms", str(a.max_batch_wait_ms),
            "--candidates", str(a.candidates),
            "--top-k", str(a.top_k),
            *a.worker_arg,
        ]  # fmt: skip
        env = self.worker_env.environ(
            {**os.environ, "WORKER_LOG_FORMAT": "json", "WORKER_LOG_LEVEL": "info"}
        )
        with log_path.open("wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        worker = WorkerProc(name, proc, port, log_path)
        self._procs.append(worker)
        self.worker_command = " ".join(cmd[1:])
        return worker

    def stop_all(self) -> None:
        for w in self._procs:
            with contextlib.suppress(Exception):
                w.stop()
        self._procs.clear()

    def create_output_topic(self, name: str) -> None:
        from devtools.bench.peers.workload import LOG_APPEND_TIME, create_topics

        create_topics(self.bootstrap, {name: (self.args.partitions, LOG_APPEND_TIME)})
        self.wait_topic(name)

    def wait_topic(self, name: str, timeout_s: float = 30.0) -> None:
        """Until the topic's metadata shows all its partitions (creation is asynchronous)."""
        from devtools.bench.peers.workload import partition_count

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if partition_count(self.bootstrap, name) >= self.args.partitions:
                    return
            except RuntimeError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"topic {name} did not appear within {timeout_s:.0f} s")
            time.sleep(0.2)

    # -- 1. throughput -----------------------------------------------------------------------

    def measure_backlog(self, n_procs: int, *, pinned: bool = False) -> dict[str, Any]:
        """``n_procs`` workers over the backlog; ``pinned``: worker ``i`` on CPU ``i`` (all of
        its threads), the broker and the bench free."""
        from devtools.bench.latency import set_affinity

        label = f"backlog{n_procs}p" + ("-pinned" if pinned else "")
        n = self.sizes.events
        suggestions = f"{self.prefix}-{label}-suggestions"
        self.create_output_topic(suggestions)
        group = f"{self.prefix}-{label}"
        self.say(f"{n_procs} worker process(es) over the {n:,}-event backlog")
        procs = [
            self.start_worker(f"{label}-w{i}", self.events_topic, suggestions, group)
            for i in range(n_procs)
        ]
        cpus = sorted(os.sched_getaffinity(0)) if pinned else []
        pinned_to: list[int] = []
        for i, w in enumerate(procs if pinned else []):
            set_affinity(w.proc.pid, {cpus[i]})  # its threads started later inherit the mask
            pinned_to.append(cpus[i])
        history: list[tuple[float, float, dict[str, float], float]] = []
        last_total, last_change = -1.0, time.monotonic()
        try:
            while True:
                time.sleep(SAMPLE_INTERVAL_S)
                samples = []
                for w in procs:
                    w.check()
                    if w.ready_s is None:
                        w.ready()  # records the time to ready
                    samples.append(w.sample())
                if any(s is None for s in samples):
                    if time.monotonic() - last_change > 180:
                        raise BenchError(f"{label}: workers never served /metrics")
                    continue
                total = sum(s.consumed for s in samples)  # type: ignore[union-attr]
                stages = {st: sum(s.stages[st] for s in samples) for st in STAGES}  # type: ignore[union-attr]
                cpu = sum(s.cpu_s for s in samples)  # type: ignore[union-attr]
                history.append((time.monotonic(), total, stages, cpu))
                if total >= n:
                    break
                if total != last_total:
                    last_total, last_change = total, time.monotonic()
                elif time.monotonic() - last_change > 120:
                    raise BenchError(f"{label}: stalled at {total:.0f} of {n} events")
        finally:
            codes = [w.stop() for w in procs]
            self._procs = [w for w in self._procs if w not in procs]
        window = _steady_window(history, n)
        (t_a, c_a, s_a, cpu_a), (t_b, c_b, s_b, cpu_b) = window
        wall = t_b - t_a
        events = c_b - c_a
        rate = events / wall
        stage_s = {st: s_b[st] - s_a[st] for st in STAGES}
        busy = sum(stage_s.values())
        fetch = max(wall * n_procs - busy, 0.0)
        breakdown = {"fetch": fetch, **stage_s}
        result = {
            "processes": n_procs,
            "events": n,
            "throughput_per_s": round(rate, 1),
            "window": {"from_events": int(c_a), "to_events": int(c_b), "seconds": round(wall, 2)},
            "cpu_s_per_million": round((cpu_b - cpu_a) / events * 1e6, 1),
            "cpu_utilisation": round((cpu_b - cpu_a) / wall, 2),
            "peak_rss_mib": [round(w.hwm_kib / 1024, 1) for w in procs],
            "ready_s": [_r(w.ready_s, 2) for w in procs],
            "stages_us_per_event": {k: round(v / events * 1e6, 1) for k, v in breakdown.items()},
            "stages_share": {k: round(v / (wall * n_procs), 3) for k, v in breakdown.items()},
            "exit_codes": codes,
            "group": group,
            "pinned_to_cpus": pinned_to or None,
        }
        result["scoring_backend"] = sorted({served_backend(w.log_path) for w in procs})
        if n_procs == 1:
            self.served_backend = result["scoring_backend"][0]
        self.say(
            f"{n_procs} process(es): {rate:,.0f} events/s, "
            f"{result['cpu_s_per_million']} CPU s per million, RSS {result['peak_rss_mib']} MiB"
        )
        return result

    # -- 2. scoring ceiling ------------------------------------------------------------------

    def measure_ceiling(self) -> dict[str, Any]:
        from devtools.bench.peers.workload import build_feature_matrices
        from worker.model.artifact import load_artifact
        from worker.model.scoring import BoosterScorer

        batch = self.args.max_batch_size
        n = max(self.sizes.ceiling_events // batch, 1) * batch
        self.say(f"scoring ceiling: building features of {n:,} events ({batch} per batch)")
        events = stream_events(self.sim_settings(), n)
        mats = build_feature_matrices(self.artifact_dir, events, self.args.candidates, chunk=batch)
        self.feature_matrices = mats  # (n, candidates, 20), reused by the MLServer peer
        batches = [
            np.ascontiguousarray(mats[i : i + batch].reshape(-1, mats.shape[2]))
            for i in range(0, n, batch)
        ]
        artifact = load_artifact(self.artifact_dir)
        scorers: dict[str, Any] = {"lightgbm": BoosterScorer(artifact.booster, num_threads=1)}
        notes: dict[str, str] = {}
        try:
            from worker.model.scoring import make_scorer  # type: ignore[import-not-found]
        except ImportError:
            notes["lleaves"] = "worker.model.scoring not present: lightgbm backend only"
        else:
            for backend in ("lightgbm", "lleaves"):
                try:
                    scorer = make_scorer(
                        self.artifact_dir, artifact.booster, backend=backend, num_threads=1
                    )
                except Exception as exc:  # a backend that is not installed or fails to compile
                    notes[backend] = f"{type(exc).__name__}: {exc}"[:300]
                    continue
                actual = getattr(scorer, "name", backend)
                if actual != backend:  # make_scorer falls back to LightGBM instead of failing
                    notes[backend] = f"not available: make_scorer fell back to {actual}"
                    continue
                scorers[backend] = scorer
        min_s = 1.0 if self.args.small else 5.0
        out: dict[str, Any] = {
            "batch_events": batch,
            "batch_shape": list(batches[0].shape),
            "distinct_batches": len(batches),
            "notes": notes,
        }
        for name, scorer in scorers.items():
            scorer.score(batches[0])  # warm-up (a compiled backend may build on first call)
            scored, started = 0, time.perf_counter()
            while True:
                for b in batches:
                    scorer.score(b)
                    scored += batch
                if time.perf_counter() - started >= min_s:
                    break
            seconds = time.perf_counter() - started
            out[name] = {
                "events_per_s": round(scored / seconds, 1),
                "rows_per_s": round(scored * self.args.candidates / seconds, 1),
                "us_per_event": round(seconds / scored * 1e6, 2),
                "events_scored": scored,
            }
            self.say(f"ceiling {name}: {scored / seconds:,.0f} events/s")
        out["served_backend"] = self.served_backend
        return out

    # -- 3. state size -----------------------------------------------------------------------

    def measure_state(self) -> dict[str, Any]:
        users = self.sizes.rss_users
        self.say(f"session state: {users:,} distinct users in a fresh interpreter")
        code = STATE_PROBE.replace("__MODELS__", repr(str(self.artifact_dir))).replace(
            "__USERS__", str(users)
        )
        proc = subprocess.run(  # the worker's Python and code: its state, as it holds it
            [self.worker_env.python, "-c", code],
            capture_output=True,
            text=True,
            timeout=1800,
            env=self.worker_env.environ(),
        )
        if proc.returncode != 0:
            raise BenchError(f"state probe failed:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        self.say(
            f"state: {result['users']:,} users, {result['bytes_per_user']} B per session, "
            f"peak RSS {result.get('peak_rss_filled_mib')} MiB filled, "
            f"{result['peak_rss_mib']} MiB with the expiry (state {result['state_mib']} MiB); "
            f"after expiry {result['users_after_expiry']} users"
        )
        return result

    # -- 4. peers ----------------------------------------------------------------------------

    def peer_features(self, count: int) -> np.ndarray:
        mats = self.feature_matrices
        return mats[np.arange(count) % len(mats)]

    def run_mlserver(self, env_root: Path) -> dict[str, Any]:
        from devtools.bench.peers.envs import ensure_env
        from devtools.bench.peers.run_mlserver import run_mlserver_peer

        python = ensure_env("mlserver", env_root)
        model_txt = self.artifact_dir / "model.txt"
        s = self.sizes
        work = self.work_dir / "peers"
        out: dict[str, Any] = {}
        batchings = {
            "plain": {"max_batch_size": 0, "max_batch_time_s": 0.0},
            "adaptive-batching": {"max_batch_size": 32, "max_batch_time_s": 0.005},
        }
        modes: dict[str, dict[str, Any]] = {}
        scorers: dict[str, str] = {}
        for spec in [m for m in self.args.mlserver_modes.split(",") if m]:
            base, scorer = mode_scorer(spec)
            if base not in batchings:
                raise BenchError(f"--mlserver-modes {spec!r}: plain or adaptive-batching")
            compiled = self.compiled_object() if scorer == "lleaves" else None
            modes[spec] = {**batchings[base], "compiled": compiled}
            scorers[spec] = scorer
        start = s.mlserver_start_rate
        for mode, batching in modes.items():

            def measure(rate: float, batching: dict[str, Any] = batching, mode: str = mode):
                count = max(int(rate * s.sweep_step_s), 50)
                res = run_mlserver_peer(
                    self.bootstrap, model_txt, count, self.args.candidates, work,
                    rate=rate, features=self.peer_features(count), python=python,
                    stall_timeout_s=20.0, **batching,
                )  # fmt: skip
                out.setdefault("config", {})[mode] = res["config"]
                fig = res["figures"]
                lat = fig.get("latency", {})
                return {
                    "events": count,
                    "answered": fig["answered"],
                    "p99_ms": lat.get("p99_ms"),
                    "p50_ms": lat.get("p50_ms"),
                    "achieved_per_s": fig["throughput"].get("per_s"),
                    "cpu_ms_per_event": fig["cpu_ms_per_event"],
                    "peak_rss_mib": fig["peak_hwm_mb"],
                }

            self.say(f"MLServer {mode}: sweep from {start:,.0f}/s")
            sweep = find_max(
                measure, start, max_steps=s.sweep_max_steps, refine=s.sweep_refine,
                say=lambda text, mode=mode: self.say(f"MLServer {mode} {text}"),
            )  # fmt: skip
            best = sweep["best"]
            entry: dict[str, Any] = {"scorer": scorers[mode], "sweep": sweep}
            if best is not None:
                entry["max_offered_per_s"] = sweep["max_offered_per_s"]
                entry["max_sustained_per_s"] = best["achieved_per_s"]
                half = sweep["max_offered_per_s"] / 2
                count = max(int(half * s.peer_latency_s), 50)
                self.say(f"MLServer {mode}: latency at {half:,.0f}/s (half its maximum)")
                res = run_mlserver_peer(
                    self.bootstrap, model_txt, count, self.args.candidates, work,
                    rate=half, features=self.peer_features(count), python=python,
                    stall_timeout_s=20.0, **batching,
                )  # fmt: skip
                entry["latency_at_half"] = {
                    "offered_per_s": half,
                    **res["figures"].get("latency", {}),
                    "cpu_ms_per_event": res["figures"]["cpu_ms_per_event"],
                    "peak_rss_mib": res["figures"]["peak_hwm_mb"],
                }
                if mode == "plain":  # batching does not make it slower: start the others there
                    start = max(start, sweep["max_offered_per_s"])
            else:
                entry["note"] = "kept up at no rate of the sweep"
                self.peer_failures.append(f"mlserver {mode}: kept up at no rate of the sweep")
            out[mode] = entry
        return out

    def compiled_object(self) -> Path:
        """The lleaves object of the served model for this host, as the worker loads it (from
        the artifact's cache; compiled into it when missing).

        Raises:
            BenchError: lleaves cannot score the model here.
        """
        from devtools.bench.peers.run_mlserver import compiled_object

        compiled = compiled_object(self.artifact_dir)
        if compiled is None:
            raise BenchError("lleaves cannot score the model here: no compiled object")
        return compiled

    def run_quix(self, env_root: Path) -> dict[str, Any]:
        from devtools.bench.peers.envs import ensure_env

        python = ensure_env("quix", env_root)
        s = self.sizes
        work = self.work_dir / "peers"
        n = min(s.quix_events, self.sizes.events)
        out: dict[str, Any] = {}
        sweep_modes = {m for m in self.args.quix_sweep_modes.split(",") if m}
        for mode in [m for m in self.args.quix_modes.split(",") if m]:
            self.say(f"Quix {mode}: backlog of the first {n:,} events of the workload topic")
            try:
                out[mode] = self._quix_mode(mode, n, python, work, mode in sweep_modes)
            except Exception as exc:  # one mode failing still reports the others
                self.say(f"Quix {mode} failed: {exc}")
                out[mode] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
                self.peer_failures.append(f"quix {mode}: {type(exc).__name__}: {exc}")
        return out

    def _quix_mode(
        self, spec: str, n: int, python: Path, work: Path, with_sweep: bool
    ) -> dict[str, Any]:
        """A Quix mode's backlog throughput, then (``with_sweep``) its maximum by the one rule
        (:mod:`devtools.bench.sweep`, from a quarter of the backlog figure) and its latency at
        half that maximum."""
        from devtools.bench.peers.run_quix import run_quix_peer

        s = self.sizes
        mode, scorer = mode_scorer(spec)
        res = run_quix_peer(
            self.bootstrap, self.models_dir, self.events_topic, n, work,
            mode=mode, scorer=scorer, candidates=self.args.candidates, top_k=self.args.top_k,
            python=python, simulator=self.sim_settings(),
        )  # fmt: skip
        fig = res["figures"]
        entry: dict[str, Any] = {
            "scorer": scorer,
            "events": n,
            "answered": fig["answered"],
            "throughput_per_s": fig["throughput"].get("per_s"),
            "cpu_ms_per_event": fig["cpu_ms_per_event"],
            "peak_rss_mib": fig["peak_hwm_mb"],
            "config": res["config"],
        }
        if not with_sweep or not entry["throughput_per_s"]:
            return entry
        runs = [0]

        def at_rate(rate: float, seconds: float) -> dict[str, Any]:
            count = max(int(rate * seconds), 50)
            error: Exception | None = None
            for attempt in (1, 2):  # the driver can race the creation of its output topic
                runs[0] += 1
                try:
                    res = run_quix_peer(
                        self.bootstrap, self.models_dir,
                        f"{self.prefix}-quix-{mode}-{scorer}-rate-{runs[0]}", count, work,
                        rate=rate, mode=mode, scorer=scorer, candidates=self.args.candidates,
                        top_k=self.args.top_k, python=python, simulator=self.sim_settings(),
                    )  # fmt: skip
                except Exception as exc:
                    self.say(f"Quix {spec} at {rate:,.0f}/s, attempt {attempt} failed: {exc}")
                    error = exc
                    continue
                fig = res["figures"]
                lat = fig.get("latency", {})
                return {
                    "events": count,
                    "answered": fig["answered"],
                    "p99_ms": lat.get("p99_ms"),
                    "p50_ms": lat.get("p50_ms"),
                    "latency": lat,
                    "achieved_per_s": fig["throughput"].get("per_s"),
                    "cpu_ms_per_event": fig["cpu_ms_per_event"],
                    "peak_rss_mib": fig["peak_hwm_mb"],
                }
            assert error is not None
            raise error

        start = entry["throughput_per_s"] / 4
        self.say(f"Quix {spec}: sweep from {start:,.0f}/s")
        sweep = find_max(
            lambda rate: at_rate(rate, s.sweep_step_s), start,
            max_steps=s.sweep_max_steps, refine=s.sweep_refine,
            say=lambda text: self.say(f"Quix {spec} {text}"),
        )  # fmt: skip
        entry["sweep"] = sweep
        if sweep["best"] is None:
            self.peer_failures.append(f"quix {spec}: kept up at no rate of the sweep")
            return entry
        entry["max_offered_per_s"] = sweep["max_offered_per_s"]
        entry["max_sustained_per_s"] = sweep["best"]["achieved_per_s"]
        half = sweep["max_offered_per_s"] / 2
        self.say(f"Quix {spec}: latency at {half:,.0f}/s (half its maximum)")
        try:
            step = at_rate(half, s.peer_latency_s)
        except Exception as exc:
            entry["latency_error"] = f"{type(exc).__name__}: {exc}"[:1000]
            self.peer_failures.append(f"quix {spec} latency: {entry['latency_error']}")
            return entry
        entry["latency_at_half"] = {
            "offered_per_s": round(half, 1),
            **step["latency"],
            "cpu_ms_per_event": step["cpu_ms_per_event"],
            "peak_rss_mib": step["peak_rss_mib"],
        }
        return entry

    # -- 5. latency at several loads, pinned and unpinned ------------------------------------

    def latency_plan(self, mode: str) -> tuple[list[tuple[str, float, float | None]], str]:
        """The latency points ``(label, rate, fraction or None)`` of ``mode`` and where its
        maximum comes from: given, else the mode's swept maximum (the one rule), else the
        1-process backlog throughput."""
        from devtools.bench.latency import load_points

        a = self.args
        swept = self.results.get("sweep", {}).get(mode, {}).get("max_offered_per_s")
        if a.latency_max_rate:
            max_rate, basis = a.latency_max_rate, "--latency-max-rate"
        elif a.latency_rate:
            max_rate, basis = 2 * a.latency_rate, "twice --latency-rate"
        elif swept:
            max_rate, basis = swept, "the swept maximum (p99 <= 1 s, every answer)"
        elif self.results.get("throughput_1p", {}).get("throughput_per_s"):
            max_rate = self.results["throughput_1p"]["throughput_per_s"]
            basis = "the measured 1-process maximum"
        else:
            max_rate, basis = None, "none known"
        fractions = [float(x) for x in a.latency_loads.split(",") if x.strip()]
        absolute: list[tuple[float, str]] = []
        for item in (x.strip() for x in a.latency_rates.split(",")):
            if item == "peers":
                absolute.extend(self.peer_latency_rates())
            elif item and item != "none":
                absolute.append((float(item), f"{float(item):g}/s"))
        points = load_points(max_rate, fractions, absolute)
        if not points:
            raise BenchError(
                "latency: no maximum rate known and no absolute rate given; run the throughput "
                "phase or give --latency-max-rate (or --latency-rates)"
            )
        return points, basis

    def peer_latency_rates(self) -> list[tuple[float, str]]:
        """The rates of the peers' latency runs of this run: ``(rate, "<peer> <mode>'s rate")``."""
        out: list[tuple[float, str]] = []
        peers = self.results.get("peers", {})
        for name, title in (("mlserver", "MLServer"), ("quix", "Quix")):
            for mode, m in peers.get(name, {}).items():
                rate = (
                    m.get("latency_at_half", {}).get("offered_per_s")
                    if isinstance(m, dict)
                    else None
                )
                if rate:
                    out.append((float(rate), f"{title} {mode}'s rate"))
        return out

    def latency_modes(self) -> list[str]:
        modes = [m.strip() for m in self.args.latency_modes.split(",") if m.strip()]
        for mode in modes:
            if mode not in ("pinned", "unpinned"):
                raise BenchError(f"unknown latency mode {mode!r} (pinned, unpinned)")
        return modes

    def load_events(self, n: int) -> list[dict[str, Any]]:
        """The first ``n`` events of the simulated live stream (cached, grown on demand)."""
        if len(self._load_events) < n:
            self._load_events = stream_events(self.sim_settings(), max(n, 10))
        return self._load_events

    def warm_broker(self, rate: float) -> int:
        """``--latency-broker-warmups`` unmeasured points at ``rate``, once per run (the sweep's
        or the latency phase's, whichever comes first); returns how many ran in this run."""
        warmups = max(self.args.latency_broker_warmups, 0)
        if self._broker_warmed:
            return warmups
        self._broker_warmed = True
        events = self.load_events(int(rate * (self.sizes.warmup_s + self.sizes.latency_s)))
        for k in range(warmups):
            self.say(f"broker warm-up {k + 1}/{warmups} at {rate:,.0f}/s, not measured")
            self.latency_point(f"lat-warm-{k}", rate, events, None)
        return warmups

    @contextlib.contextmanager
    def pinned_as(self, mode: str, record: dict[str, Any]) -> Iterator[Any]:
        """The :class:`~devtools.bench.latency.Pinning` applied for ``mode`` and restored after:
        ``None`` for unpinned, ``False`` when pinning is not possible here (why, in
        ``record["pinning"]``)."""
        from devtools.bench.latency import Pinning, broker_pid_of

        if mode == "unpinned":
            yield None
            return
        broker_pid = broker_pid_of(self._kafka_cfg.pid_file) if self._kafka_cfg else None
        pinning = Pinning(broker_pid).plan()
        record["pinning"] = pinning.describe()
        if not pinning.possible:
            self.say(pinning.describe())
            yield False
            return
        try:
            pinning.apply()
        except OSError as exc:  # e.g. a broker pid this user may not re-pin
            pinning.possible = False
            pinning.reason = f"sched_setaffinity failed: {exc}"
            record["pinning"] = pinning.describe()
            self.say(pinning.describe())
            yield False
            return
        try:
            yield pinning
        finally:
            pinning.restore()

    def measure_sweep(self) -> dict[str, Any]:
        """The worker's maximum in each latency mode by the one rule (:mod:`devtools.bench.sweep`):
        a rate sweep, each step a fresh worker fed at a fixed rate for ``--warmup-s`` +
        ``--sweep-step-s``, kept up when every event is answered with p99 <= 1 s."""
        s, a = self.sizes, self.args
        backlog = self.results.get("throughput_1p", {}).get("throughput_per_s")
        start = a.sweep_start_rate or (backlog / 4 if backlog else 1000.0)
        out: dict[str, Any] = {"step_s": s.sweep_step_s, "warmup_s": s.warmup_s}
        self.results["sweep"] = out  # the modes measured so far survive a failure
        self.warm_broker(start)
        for mode in self.latency_modes():
            record: dict[str, Any] = {}
            with self.pinned_as(mode, record) as pinning:
                if pinning is False:
                    out[mode] = {"error": "not possible", **record}
                    continue

                def measure(rate: float, mode: str = mode, pinning: Any = pinning) -> dict:
                    n = int(rate * (s.warmup_s + s.sweep_step_s)) + 1
                    point = self.latency_point(
                        f"sweep-{mode}-{rate:.0f}", rate, self.load_events(n), pinning,
                        measured_s=s.sweep_step_s,
                    )  # fmt: skip
                    lat = point["latency_acknowledged"]
                    return {
                        "events": point["measured_events"],
                        "answered": point["measured_answered"],
                        "p99_ms": lat.get("p99_ms"),
                        "p50_ms": lat.get("p50_ms"),
                        "achieved_per_s": point["achieved_per_s"],
                        "cpu_share": point["cpu_share"],
                        "peak_rss_mib": point["peak_rss_mib"],
                        "scoring_backend": point["scoring_backend"],
                    }

                self.say(f"sweep, worker {mode}: from {start:,.0f}/s")
                out[mode] = {
                    **record,
                    **find_max(
                        measure, start, max_steps=s.sweep_max_steps, refine=s.sweep_refine,
                        say=lambda text, mode=mode: self.say(f"worker {mode} {text}"),
                    ),
                }  # fmt: skip
        return out

    def measure_latency(self) -> dict[str, Any]:
        """Latency per mode (pinned, unpinned) and load: see :mod:`devtools.bench.latency`."""
        from devtools.bench.latency import LOAD_PRODUCER_OVERRIDES

        warm, measured = self.sizes.warmup_s, self.sizes.latency_s
        modes = self.latency_modes()
        plans = {mode: self.latency_plan(mode) for mode in modes}
        out: dict[str, Any] = {
            "max_rate_basis": {mode: basis for mode, (_, basis) in plans.items()},
            "warmup_s": warm,
            "measured_s": measured,
            "producer": {"linger.ms": LOAD_PRODUCER_OVERRIDES["linger.ms"], "acks": "all"},
            "points": [],
        }
        self.results["latency"] = out  # the points measured so far survive a failure
        n_max = max(int(rate * (warm + measured)) for points, _ in plans.values()
                    for _, rate, _ in points)  # fmt: skip
        self.say(
            f"latency: {sum(len(p) for p, _ in plans.values())} points over {modes}, "
            f"{warm:g} + {measured:g} s each; generating {n_max:,} events"
        )
        events = self.load_events(n_max)
        first_points, _ = plans[modes[0]]
        out["broker_warmups"] = self.warm_broker(first_points[0][1])
        for mode in modes:
            points, _ = plans[mode]
            with self.pinned_as(mode, out) as pinning:
                if pinning is False:
                    out["pinned"] = "not possible"
                    continue
                for k, (label, rate, fraction) in enumerate(points):
                    point = self.latency_point(f"lat-{mode}-{k}", rate, events, pinning)
                    out["points"].append(
                        {"mode": mode, "load": label, "fraction": fraction, **point}
                    )
        return out

    def latency_probe(
        self,
        producer: Any,
        topic: str,
        template: dict[str, Any],
        id_prefix: str,
        raw: list[tuple[bytes | None, int]],
        worker: WorkerProc,
        event_codec: Any,
        sugg_codec: Any,
        timeout_s: float = 120.0,
    ) -> None:
        """One event per partition every 2 s until each partition has answered one."""
        answered: set[int] = set()
        deadline = time.monotonic() + timeout_s
        seen = 0
        round_ = 0
        while len(answered) < self.args.partitions:
            for p in range(self.args.partitions):
                if p in answered:
                    continue
                record = {**template, "event_id": f"{id_prefix}-warm{round_}-{p}",
                          "event_time": now_ms()}  # fmt: skip
                value = event_codec.encode(record)
                producer.produce(topic, value=value, key=record["user_id"].encode(), partition=p)
            producer.flush(10)
            round_ += 1
            until = time.monotonic() + 2.0
            while time.monotonic() < until and len(answered) < self.args.partitions:
                for value, _ in raw[seen:]:
                    eid = sugg_codec.decode(value)["event_id"]
                    answered.add(int(eid.rpartition("-")[2]))
                seen = len(raw)
                worker.check()
                time.sleep(0.05)
            if time.monotonic() > deadline:
                missing = sorted(set(range(self.args.partitions)) - answered)
                raise BenchError(f"latency probe: {missing} unanswered after {timeout_s:.0f} s")

    def append_times(self, topic: str, id_prefix: str, n: int, codec: Any) -> dict[int, int]:
        """``{index: broker append time (ms)}`` of the scheduled events of a latency point."""
        from devtools.bench.peers.workload import OutputCollector

        out: dict[int, int] = {}
        raw: list[tuple[bytes | None, int]] = []
        collector = OutputCollector(
            self.bootstrap, topic, lambda k, v, ts: raw.append((v, ts))
        ).start()
        try:
            deadline = time.monotonic() + 30
            last, since = -1, time.monotonic()
            while time.monotonic() < deadline:  # all read: >= n and no more for 0.5 s
                if len(raw) != last:
                    last, since = len(raw), time.monotonic()
                elif time.monotonic() - since > (0.5 if len(raw) >= n else 5.0):
                    break
                time.sleep(0.1)
        finally:
            collector.stop()
        for value, ts_ms in raw:
            head, _, index = codec.decode(value)["event_id"].rpartition("-")
            if head == id_prefix:
                out[int(index)] = ts_ms
        return out

    def latency_point(
        self,
        tag: str,
        rate: float,
        events: list[dict[str, Any]],
        pinning: Any,
        *,
        measured_s: float | None = None,
    ) -> dict[str, Any]:
        """One fresh worker on a fresh topic, fed ``rate`` events/s on a schedule for
        ``--warmup-s`` then ``measured_s`` (default ``--latency-s``)."""
        from devtools.bench import latency as L
        from devtools.bench.peers.workload import (
            LOG_APPEND_TIME,
            OutputCollector,
            create_topics,
            make_load_producer,
        )
        from worker.wire.codec import codec_for

        topic = f"{self.prefix}-{tag}-events"
        suggestions = f"{self.prefix}-{tag}-suggestions"
        # Events appended at LogAppendTime too: their append time splits the latency into the
        # generator's and broker's part (ingest) and the worker's.
        create_topics(self.bootstrap, {topic: (self.args.partitions, LOG_APPEND_TIME)})
        self.wait_topic(topic)
        self.create_output_topic(suggestions)
        warm = self.sizes.warmup_s
        measured = self.sizes.latency_s if measured_s is None else measured_s
        n = max(int(rate * (warm + measured)), 10)
        first = min(int(rate * warm), n - 1)
        id_prefix = f"{self.prefix}-{tag}"
        event_codec = codec_for("BrowsingEvent")
        sugg_codec = codec_for("ProductSuggestion")
        raw: list[tuple[bytes | None, int]] = []  # decoded after the run: less load meanwhile

        def on_suggestion(key: bytes | None, value: bytes | None, ts_ms: int) -> None:
            raw.append((value, ts_ms))  # list.append is atomic under the GIL

        worker = self.start_worker(f"{tag}-w0", topic, suggestions, f"{self.prefix}-{tag}")
        if pinning is not None:
            pinning.pin_worker(worker.proc.pid)
        collector = OutputCollector(self.bootstrap, suggestions, on_suggestion).start()
        producer = make_load_producer(self.bootstrap, **L.LOAD_PRODUCER_OVERRIDES)
        lag_behind_s = 0.0
        try:
            deadline = time.monotonic() + 120
            while not worker.ready():
                worker.check()
                if time.monotonic() > deadline:
                    raise BenchError("latency worker never became ready")
                time.sleep(0.2)
            # Before the clock: one event per partition, in rounds, until every partition has
            # answered (the group joined, every partition assigned and served once).
            self.latency_probe(
                producer, topic, events[0], id_prefix, raw, worker, event_codec, sugg_codec
            )
            base = len(raw)
            if pinning is not None:
                pinning.pin_worker(worker.proc.pid)  # again: threads are all there now
            # Encode everything before the clock starts; t0 after the (estimated) encoding.
            sample = min(n, 2000)
            started = time.perf_counter()
            L.encode_scheduled(events, L.build_schedule(sample, rate, 0), "x", event_codec.encode)
            per_event = (time.perf_counter() - started) / sample
            for _ in range(3):
                t0_ns = L.choose_t0_ns(n, per_event)
                schedule = L.build_schedule(n, rate, t0_ns)
                started = time.perf_counter()
                messages = L.encode_scheduled(events, schedule, id_prefix, event_codec.encode)
                per_event = (time.perf_counter() - started) / n
                if time.time_ns() < t0_ns - 500_000_000:
                    break
            lag_behind_s = max((time.time_ns() - t0_ns) / 1e9, 0.0)
            window_ns = (int(schedule[first]), int(schedule[-1]))
            pids = {"worker": worker.proc.pid, "generator": os.getpid()}
            if self._kafka_cfg is not None:
                broker_pid = L.broker_pid_of(self._kafka_cfg.pid_file)
                if broker_pid:
                    pids["broker"] = broker_pid
            cpu = L.CpuWindow(pids, *window_ns).start()
            affinity = {name: L.affinity_of(pid) for name, pid in pids.items()}

            def produce(key: bytes, value: bytes, ts_ms: int) -> None:
                while True:
                    try:
                        producer.produce(topic, value=value, key=key, timestamp=ts_ms)
                        return
                    except BufferError:
                        producer.poll(0.01)

            with L.frozen_heap():  # no full collection walks the pre-encoded load meanwhile
                sent_ns = L.send_scheduled(produce, lambda: producer.poll(0), messages, schedule)
            del messages
            remaining = producer.flush(60)
            if remaining:
                raise BenchError(f"{remaining} latency events were not acknowledged")
            # Drain: every answer, or 10 s without a new one, or 60 s.
            deadline = time.monotonic() + 60
            last, last_change = -1, time.monotonic()
            while len(raw) - base < n and time.monotonic() < deadline:
                worker.check()
                if len(raw) != last:
                    last, last_change = len(raw), time.monotonic()
                elif time.monotonic() - last_change > 10:
                    break
                time.sleep(0.1)
            time.sleep(0.5)  # a late answer to the probe may have been counted
            shares = cpu.shares()
            busy = cpu.cpu_busy()
        finally:
            code = worker.stop()
            self._procs = [w for w in self._procs if w is not worker]
            collector.stop()
        ingest_ms = self.append_times(topic, id_prefix, n, event_codec)
        answers: dict[int, tuple[int, int]] = {}
        for value, ts_ms in list(raw):
            rec = sugg_codec.decode(value)
            head, _, index = rec["event_id"].rpartition("-")
            if head != id_prefix:
                continue
            i = int(index)
            if i not in answers or ts_ms < answers[i][0]:  # at-least-once: the first answer
                answers[i] = (ts_ms, rec["produced_time"])
        intended_ms = schedule / 1e6
        measured_ids = [i for i in range(first, n) if i in answers]
        acked = [answers[i][0] - intended_ms[i] for i in measured_ids]
        produced = [answers[i][1] - intended_ms[i] for i in measured_ids]
        measured_in = [i for i in range(first, n) if i in ingest_ms]
        ingest = [ingest_ms[i] - intended_ms[i] for i in measured_in]
        in_worker = [answers[i][0] - ingest_ms[i] for i in measured_ids if i in ingest_ms]
        result = {
            "offered_per_s": round(rate, 1),
            "events": n,
            "answered": len(answers),
            "measured_events": n - first,
            "measured_answered": len(measured_ids),
            "achieved_per_s": L.achieved_rate([answers[i][0] for i in measured_ids]),
            "latency_acknowledged": L.summary(acked),
            "latency_produced_time": L.summary(produced),
            "latency_ingest": L.summary(ingest),
            "latency_event_appended_to_acknowledged": L.summary(in_worker),
            "histogram_acknowledged": L.histogram(acked),
            "generator_lag": L.lag_summary(sent_ns[first:], schedule[first:].tolist()),
            "generator_start_late_s": round(lag_behind_s, 3),
            "cpu_share": shares,
            "cpu_busy": busy,
            "others_cpu": L.others_cpu(shares, busy),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "affinity": affinity,
            "peak_rss_mib": round(worker.hwm_kib / 1024, 1),
            "scoring_backend": served_backend(worker.log_path),
            "exit_code": code,
        }
        s, g = result["latency_acknowledged"], result["generator_lag"]
        self.say(
            f"latency {tag} at {rate:,.0f}/s: answered {len(answers):,}/{n:,}, "
            f"p50 {s.get('p50_ms')} p95 {s.get('p95_ms')} p99 {s.get('p99_ms')} "
            f"max {s.get('max_ms')} ms; generator lag p99 {g.get('p99_ms')} max {g.get('max_ms')} "
            f"ms; CPU {shares}"
        )
        return result

    # -- clean-up ----------------------------------------------------------------------------

    def delete_run_topics(self) -> None:
        if self._kafka_cfg is not None:
            return  # the own broker is wiped
        from confluent_kafka.admin import AdminClient

        from devtools.bench.peers.workload import delete_topics

        with contextlib.suppress(Exception):
            admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 3})
            names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(self.prefix)]
            delete_topics(self.bootstrap, names)


@contextlib.contextmanager
def topics_visible_on_create(module: Any):
    """Make a peer driver's ``create_topics`` wait until the new topics' metadata is visible.

    The drivers create their output topic and read its partition count right away; on a busy
    broker the metadata can lag (``topic ... does not exist``). Until
    ``devtools.bench.peers.workload`` waits itself, this wraps the function the driver module
    imported, for the duration of a call.
    """
    from devtools.bench.peers.workload import partition_count

    original = module.create_topics

    def create_and_wait(bootstrap: str, topics: dict[str, Any], *a: Any, **kw: Any) -> None:
        original(bootstrap, topics, *a, **kw)
        deadline = time.monotonic() + 30
        for name, (partitions, _) in topics.items():
            while True:
                try:
                    if partition_count(bootstrap, name) >= partitions:
                        break
                except RuntimeError:
                    pass
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)

    module.create_topics = create_and_wait
    try:
        yield
    finally:
        module.create_topics = original


def stream_events(settings: Any, n: int) -> list[dict[str, Any]]:
    """The first ``n`` browsing events of the simulator's live stream, each once, in order."""
    from worker.apps.simulate import LIVE_START_MS, build

    _, simulator = build(settings)
    out: list[dict[str, Any]] = []
    for kind, record in simulator.records(LIVE_START_MS, LIVE_START_MS + 400 * 86_400_000):
        if kind == "event":
            out.append(record)
            if len(out) >= n:
                break
    if len(out) < n:
        raise BenchError(f"the simulator produced only {len(out)} events")
    return out


def _steady_window(
    history: list[tuple[float, float, dict[str, float], float]], n: int
) -> tuple[tuple, tuple]:
    """The samples nearest to 10 % and 90 % of ``n`` events consumed (steady state: start-up,
    rebalances and the tail are left out)."""
    lo = next((h for h in history if h[1] >= 0.1 * n), history[0])
    hi = next((h for h in history if h[1] >= 0.9 * n), history[-1])
    if hi[0] - lo[0] < 1.0 or hi[1] <= lo[1]:  # too short a run for the middle: take it all
        lo = next((h for h in history if h[1] > 0), history[0])
        hi = history[-1]
        if hi[0] <= lo[0]:
            lo = history[0]
    if hi[1] <= lo[1]:
        raise BenchError("not enough samples to measure a steady state")
    return lo, hi


def served_backend(worker_log: Path) -> str:
    """The scoring backend a worker used: its ``scoring_backend`` log line (``lightgbm`` when the
    worker does not log one: it then scores with ``Booster.predict``)."""
    backend = "lightgbm"
    with contextlib.suppress(OSError):
        for line in worker_log.read_text(errors="replace").splitlines():
            if '"scoring_backend' in line:
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if record.get("event") == "scoring_backend":
                        backend = str(record.get("backend", backend))
    return backend


#: Run in a fresh interpreter: the artifact as the worker loads it, then the session state.
STATE_PROBE = textwrap.dedent(
    """
    import gc, json, sys, time
    from pathlib import Path
    import numpy as np
    from worker.core.features import FEATURE_NAMES
    from worker.model.artifact import load_artifact
    from worker.core.pipeline import advance_sessions
    from worker.core.records import BrowsingEvent
    from worker.core.session import SessionStore

    def kib(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    artifact = load_artifact(Path(__MODELS__), expected_features=FEATURE_NAMES)
    tables = artifact.tables
    gc.collect()
    base_kib = kib("VmRSS")
    users = __USERS__
    store = SessionStore(max_users=2_000_000, idle_ttl_ms=3_600_000)  # worker defaults
    ids = tables.product_ids
    rng = np.random.default_rng(7)
    t0 = 1_767_225_600_000
    per_user, chunk = 3, 20_000
    started = time.monotonic()
    for round_ in range(per_user):
        for lo in range(0, users, chunk):
            hi = min(lo + chunk, users)
            items = rng.integers(0, len(ids), hi - lo).astype(np.int32)
            events = [
                BrowsingEvent(f"e{round_}-{u}", f"user-{u:07d}", f"s-{u:07d}", 0,
                              ids[int(items[i])], None, None, t0 + round_ * 60_000 + u)
                for i, u in enumerate(range(lo, hi))
            ]
            advance_sessions(store, events, items)
    fill_s = time.monotonic() - started
    gc.collect()
    filled_kib = kib("VmRSS")
    filled_peak_kib = kib("VmHWM")  # the peak while filling (expiry below allocates too)
    n_users = len(store)
    # Expiry: one event an idle TTL later moves the watermark; everyone else is idle.
    late = t0 + 3 * 60_000 + users + store.idle_ttl_ms + 1
    advance_sessions(store, [BrowsingEvent("late", "user-late", "s-late", 0, ids[0], None, None,
                                           late)], np.zeros(1, dtype=np.int32))
    expired = store.expire_idle()
    gc.collect()
    print(json.dumps({
        "users": n_users,
        "events_per_user": per_user,
        "fill_s": round(fill_s, 1),
        "baseline_rss_mib": round(base_kib / 1024, 1),
        "rss_filled_mib": round(filled_kib / 1024, 1),
        "peak_rss_mib": round(kib("VmHWM") / 1024, 1),
        "peak_rss_filled_mib": round(filled_peak_kib / 1024, 1),
        "state_mib": round((filled_kib - base_kib) / 1024, 1),
        "bytes_per_user": round((filled_kib - base_kib) * 1024 / max(n_users, 1)),
        "expired": expired,
        "users_after_expiry": len(store),
        "rss_after_expiry_mib": round(kib("VmRSS") / 1024, 1),
        # Slots held after expiry: reused by the next users, not returned to the system.
        "slots_after_expiry": getattr(store, "capacity", None),
    }))
    """
)


# -- report -----------------------------------------------------------------------------------


def _same_scorer_figures(
    f: dict[str, Any],
    results: dict[str, Any],
    peer: str,
    modes: dict[str, Any],
    rate_key: str,
) -> None:
    """``<peer>_same_scorer_per_s`` (the best ``rate_key`` of the peer's lleaves modes) and the
    worker's ratio to it, into ``f``; only when the worker served the compiled model too."""
    rates = [
        m[rate_key]
        for m in modes.values()
        if isinstance(m, dict) and m.get("scorer") == "lleaves" and m.get(rate_key)
    ]
    if not rates or results.get("throughput_1p", {}).get("scoring_backend") != ["lleaves"]:
        return
    f[f"{peer}_same_scorer_per_s"] = max(rates)
    if f.get("throughput_1p_per_s"):
        f[f"ratio_throughput_vs_{peer}_same_scorer"] = round(
            f["throughput_1p_per_s"] / max(rates), 2
        )


def _peer_max(modes: dict[str, Any], scorer: str | None) -> float | None:
    """The highest swept maximum among a peer's modes (those with ``scorer`` only, if given)."""
    rates = [
        m["max_offered_per_s"]
        for m in modes.values()
        if isinstance(m, dict)
        and m.get("max_offered_per_s")
        and (scorer is None or m.get("scorer", "booster") == scorer)
    ]
    return max(rates) if rates else None


def _swept_figures(f: dict[str, Any], results: dict[str, Any]) -> None:
    """Every system's maximum by the one rule, and the worker's ratios to the peers'. The
    peers run unpinned, so the ratios use the worker's unpinned maximum; the same-scorer ones
    only when the worker served the compiled model in its sweep."""
    sweep = results.get("sweep", {})
    for mode in ("pinned", "unpinned"):
        m = sweep.get(mode) or {}
        if m.get("max_offered_per_s"):
            f[f"max_{mode}_per_s"] = m["max_offered_per_s"]
    peers = results.get("peers", {})
    mls, quix = peers.get("mlserver", {}), peers.get("quix", {})
    f["mlserver_max_per_s"] = _peer_max(mls, "booster")
    f["mlserver_max_same_scorer_per_s"] = _peer_max(mls, "lleaves")
    f["quix_max_per_s"] = _peer_max(quix, None)
    f["quix_max_same_scorer_per_s"] = _peer_max(quix, "lleaves")
    ours = f.get("max_unpinned_per_s")
    backends = {
        s.get("scoring_backend")
        for s in (sweep.get("unpinned") or {}).get("steps", [])
        if s.get("scoring_backend")
    }
    if not ours:
        return
    for key, peer in (("mlserver", "mlserver_max_per_s"), ("quix", "quix_max_per_s")):
        if f.get(peer):
            f[f"ratio_max_vs_{key}"] = round(ours / f[peer], 2)
        same = f.get(f"{key}_max_same_scorer_per_s")
        if same and backends == {"lleaves"}:
            f[f"ratio_max_vs_{key}_same_scorer"] = round(ours / same, 2)


def derive_figures(results: dict[str, Any]) -> dict[str, Any]:
    """The headline figures and ratios from the raw results."""
    f: dict[str, Any] = {}
    one = results.get("throughput_1p", {})
    two = results.get("throughput_2p", {})
    f["throughput_1p_per_s"] = one.get("throughput_per_s")
    f["throughput_2p_per_s"] = two.get("throughput_per_s")
    if one.get("throughput_per_s") and two.get("throughput_per_s"):
        f["scaling_factor"] = round(two["throughput_per_s"] / one["throughput_per_s"], 2)
    f["cpu_s_per_million_1p"] = one.get("cpu_s_per_million")
    f["cpu_s_per_million_2p"] = two.get("cpu_s_per_million")
    latency = results.get("latency", {})
    for mode in ("pinned", "unpinned"):
        point = half_load_point(latency, mode)
        if point is None:
            continue
        s = point.get("latency_acknowledged", {})
        f[f"latency_{mode}_offered_per_s"] = point.get("offered_per_s")
        for p in ("p50", "p95", "p99", "max"):
            f[f"latency_{mode}_{p}_ms"] = s.get(f"{p}_ms")
    # The headline latency (and the ratios to the peers, which run unpinned): unpinned, as the
    # peers; pinned when only that mode ran.
    mode = "unpinned" if "latency_unpinned_p99_ms" in f else "pinned"
    f["latency_mode"] = mode if f"latency_{mode}_p99_ms" in f else None
    f["latency_offered_per_s"] = f.get(f"latency_{mode}_offered_per_s")
    for p in ("p50", "p95", "p99"):
        f[f"latency_{p}_ms"] = f.get(f"latency_{mode}_{p}_ms")
    rss = [*one.get("peak_rss_mib", []), *two.get("peak_rss_mib", [])]
    rss.extend(p["peak_rss_mib"] for p in latency.get("points", []) if p.get("peak_rss_mib"))
    f["peak_rss_per_process_mib"] = max(rss) if rss else None
    state = results.get("state", {})
    f["state_users"] = state.get("users")
    f["state_probe_peak_rss_mib"] = state.get("peak_rss_mib")
    base = two.get("peak_rss_mib") or one.get("peak_rss_mib")
    if state.get("state_mib") is not None and base:
        # A worker holding them: a worker's measured peak plus the state's measured size. The
        # 2-process run's peaks are used: those workers found the compiled model in the cache,
        # while the first worker of a new model compiles it (LLVM) at start-up, a transient
        # peak before any session exists.
        f["rss_1m_users_mib"] = round(max(base) + state["state_mib"], 1)
        f["rss_1m_users_basis"] = "max peak RSS of the 2-process run + measured state size"
    f["users_after_expiry"] = state.get("users_after_expiry")
    ceiling = results.get("ceiling", {})
    backend = ceiling.get("served_backend", "lightgbm")
    f["ceiling_backend"] = backend
    for name in ("lightgbm", "lleaves"):
        if name in ceiling:
            f[f"ceiling_{name}_per_s"] = ceiling[name]["events_per_s"]
    for name in ("lightgbm", "lleaves"):
        if f.get("throughput_1p_per_s") and name in ceiling:
            f[f"ratio_e2e_to_ceiling_{name}"] = round(
                f["throughput_1p_per_s"] / ceiling[name]["events_per_s"], 3
            )
    if f.get("throughput_1p_per_s") and backend in ceiling:
        f["ratio_e2e_to_ceiling"] = round(
            f["throughput_1p_per_s"] / ceiling[backend]["events_per_s"], 3
        )
    one_p = results.get("throughput_1p_pinned", {}).get("throughput_per_s")
    two_p = results.get("throughput_2p_pinned", {}).get("throughput_per_s")
    f["throughput_1p_pinned_per_s"], f["throughput_2p_pinned_per_s"] = one_p, two_p
    if one_p and two_p:
        f["scaling_factor_pinned"] = round(two_p / one_p, 2)
    if f["cpu_s_per_million_1p"] and f["cpu_s_per_million_2p"]:
        f["cpu_ratio_2p_to_1p"] = round(f["cpu_s_per_million_2p"] / f["cpu_s_per_million_1p"], 2)
    _swept_figures(f, results)
    peers = results.get("peers", {})
    mls = peers.get("mlserver", {})
    mls_best = max(
        (
            m
            for m in (mls.get("plain"), mls.get("adaptive-batching"))
            if m and m.get("max_sustained_per_s")
        ),
        key=lambda m: m["max_sustained_per_s"],
        default=None,
    )
    if mls_best is not None:
        f["mlserver_best_per_s"] = mls_best["max_sustained_per_s"]
        if f.get("throughput_1p_per_s"):
            f["ratio_throughput_vs_mlserver"] = round(
                f["throughput_1p_per_s"] / mls_best["max_sustained_per_s"], 2
            )
    p99 = _best_p99(m for m in (mls.get("plain"), mls.get("adaptive-batching")) if m)
    if p99 is not None:
        f["mlserver_best_p99_ms"] = p99
        if f.get("latency_p99_ms"):
            f["ratio_p99_vs_mlserver"] = round(f["latency_p99_ms"] / p99, 2)
    _same_scorer_figures(f, results, "mlserver", mls, "max_sustained_per_s")
    quix = peers.get("quix", {})
    _same_scorer_figures(f, results, "quix", quix, "throughput_per_s")
    q_best = max(
        (q for q in quix.values() if isinstance(q, dict) and q.get("throughput_per_s")),
        key=lambda q: q["throughput_per_s"],
        default=None,
    )
    if q_best is not None:
        f["quix_best_per_s"] = q_best["throughput_per_s"]
        if f.get("throughput_1p_per_s"):
            f["ratio_throughput_vs_quix"] = round(
                f["throughput_1p_per_s"] / q_best["throughput_per_s"], 2
            )
    p99 = _best_p99(q for q in quix.values() if isinstance(q, dict))
    if p99 is not None:
        f["quix_best_p99_ms"] = p99
        if f.get("latency_p99_ms"):
            f["ratio_p99_vs_quix"] = round(f["latency_p99_ms"] / p99, 2)
    # At the same absolute rate: ours (unpinned, as the peer) / the peer's, at its best mode's.
    for system, _mode, rate, peer_p99 in same_rate_pairs(results, best_only=True):
        ours = _point_at(latency, "unpinned", rate)
        value = (ours or {}).get("latency_acknowledged", {}).get("p99_ms")
        if value is not None and peer_p99:
            f[f"ratio_p99_same_rate_vs_{system}"] = round(value / peer_p99, 2)
    return f


def half_load_point(latency: dict[str, Any], mode: str) -> dict[str, Any] | None:
    """The latency point at 50 % of the maximum in ``mode``, if measured."""
    return next(
        (
            p
            for p in latency.get("points", [])
            if p.get("mode") == mode and p.get("fraction") == 0.5
        ),
        None,
    )


def _point_at(latency: dict[str, Any], mode: str, rate: float) -> dict[str, Any] | None:
    return next(
        (
            p
            for p in latency.get("points", [])
            if p.get("mode") == mode and abs(p.get("offered_per_s", -9) - rate) < 1.0
        ),
        None,
    )


def same_rate_pairs(
    results: dict[str, Any], *, best_only: bool = False
) -> list[tuple[str, str, float, float]]:
    """``(system, mode, rate, p99_ms)`` of every peer latency run (``best_only``: each system's
    mode with the lowest p99)."""
    out: list[tuple[str, str, float, float]] = []
    for system, entries in results.get("peers", {}).items():
        mine = []
        for mode, m in entries.items():
            h = m.get("latency_at_half", {}) if isinstance(m, dict) else {}
            if h.get("offered_per_s") and h.get("p99_ms") is not None:
                mine.append((system, mode, float(h["offered_per_s"]), float(h["p99_ms"])))
        if best_only and mine:
            mine = [min(mine, key=lambda x: x[3])]
        out.extend(mine)
    return out


def _best_p99(entries) -> float | None:
    """The lowest p99 among a peer's modes with a latency measurement."""
    values = [
        e["latency_at_half"]["p99_ms"]
        for e in entries
        if e.get("latency_at_half", {}).get("p99_ms") is not None
    ]
    return min(values) if values else None


def evaluate_targets(figures: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for key, op, bound, text in TARGETS:
        value = figures.get(key)
        if value is None:
            status = "not measured"
        else:
            ok = value >= bound if op == ">=" else value <= bound
            status = "met" if ok else "NOT met"
        row = {"target": text, "figure": key, "value": value, "bound": f"{op} {bound:g}",
               "status": status}  # fmt: skip
        if key in TARGET_ASIDES:
            aside, label = TARGET_ASIDES[key]
            row["aside"] = f"{label}: {_fmt(figures.get(aside), 'ms')}"
        out.append(row)
    return out


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and abs(value) >= 100:
        text = f"{value:,.0f}"
    elif isinstance(value, float):
        text = f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    elif isinstance(value, int):
        text = f"{value:,}"
    else:
        text = str(value)
    return f"{text} {unit}".rstrip()


def format_report(results: dict[str, Any]) -> str:
    f = results["figures"]
    r = results
    rows: list[tuple[str, str]] = []
    add = rows.append
    add(("throughput, 1 process", _fmt(f.get("throughput_1p_per_s"), "events/s")))
    add(("throughput, 2 processes", _fmt(f.get("throughput_2p_per_s"), "events/s")))
    add(("scaling factor 2 / 1", _fmt(f.get("scaling_factor"), "x")))
    if f.get("scaling_factor_pinned"):
        add((
            "pinned, a core each: 1 process; 2 processes; 2 / 1",
            f"{_fmt(f.get('throughput_1p_pinned_per_s'))}; "
            f"{_fmt(f.get('throughput_2p_pinned_per_s'))} events/s; "
            f"{_fmt(f['scaling_factor_pinned'], 'x')}",
        ))  # fmt: skip
    add(("CPU per million events, 1 process", _fmt(f.get("cpu_s_per_million_1p"), "CPU s")))
    add(("CPU per million events, 2 processes", _fmt(f.get("cpu_s_per_million_2p"), "CPU s")))
    add(("CPU per event, 2 processes / 1", _fmt(f.get("cpu_ratio_2p_to_1p"), "x")))
    for mode in ("unpinned", "pinned"):
        if f.get(f"max_{mode}_per_s"):
            add((
                f"max, 1 process, {mode} (one rule: p99 <= 1 s, every answer)",
                _fmt(f[f"max_{mode}_per_s"], "events/s"),
            ))  # fmt: skip
    lat = r.get("latency", {})
    for mode in ("pinned", "unpinned"):
        if f.get(f"latency_{mode}_p99_ms") is not None:
            rate = _fmt(f.get(f"latency_{mode}_offered_per_s"))
            values = (_fmt(f.get(f"latency_{mode}_{p}_ms")) for p in ("p50", "p95", "p99", "max"))
            add((f"latency p50 / p95 / p99 / max at {rate}/s (half max, {mode})",
                 " / ".join(values) + " ms"))  # fmt: skip
    one, two = r.get("throughput_1p", {}), r.get("throughput_2p", {})
    add(("peak RSS, 1-process run", _fmt(", ".join(map(str, one.get("peak_rss_mib", []))), "MiB")))
    ready = [r for r in [*one.get("ready_s", []), *two.get("ready_s", [])] if r is not None]
    if ready:
        add(
            (
                "time to ready (spawn to /readyz 200, model precompiled; 0.5 s sampling)",
                _fmt(", ".join(f"{r:.1f}" for r in ready), "s"),
            )
        )
    add(
        (
            "peak RSS, 2-process run (each)",
            _fmt(", ".join(map(str, two.get("peak_rss_mib", []))), "MiB"),
        )
    )
    lat_rss = [p["peak_rss_mib"] for p in lat.get("points", []) if p.get("peak_rss_mib")]
    add(("peak RSS, latency runs (largest)", _fmt(max(lat_rss) if lat_rss else None, "MiB")))
    st = r.get("state", {})
    if st:
        add((f"state probe: {st['users']:,} users, peak RSS", _fmt(st.get("peak_rss_mib"), "MiB")))
        add(
            (
                "  of which session state",
                f"{_fmt(st.get('state_mib'))} MiB ({st.get('bytes_per_user')} B/user)",
            )
        )
        add(("RSS with those users (worker peak + state)", _fmt(f.get("rss_1m_users_mib"), "MiB")))
        add(
            (
                "  users after idle expiry",
                f"{st.get('users_after_expiry'):,} (expired {st.get('expired'):,})",
            )
        )
    ce = r.get("ceiling", {})
    for name in ("lightgbm", "lleaves"):
        if name in ce:
            add(
                (
                    f"scoring ceiling, {name} (model call alone)",
                    _fmt(ce[name]["events_per_s"], "events/s"),
                )
            )
    add((f"e2e / ceiling ({f.get('ceiling_backend')})", _fmt(f.get("ratio_e2e_to_ceiling"))))
    if one.get("stages_us_per_event"):
        add(("stage breakdown, 1 process", "us/event (share of wall)"))
        for stage, us in one["stages_us_per_event"].items():
            add((f"  {stage}", f"{us} ({100 * one['stages_share'][stage]:.0f} %)"))
    peers = r.get("peers", {})
    for mode, m in peers.get("mlserver", {}).items():
        if mode == "config" or not isinstance(m, dict):
            continue
        h = m.get("latency_at_half", {})
        add((
            f"MLServer {peer_title(mode, m)}: max (one rule)",
            _fmt(m.get("max_offered_per_s"), "req/s"),
        ))  # fmt: skip
        if h:
            add(
                (
                    f"  latency p50/p95/p99 at {_fmt(h.get('offered_per_s'))}/s",
                    " / ".join(_fmt(h.get(f"{p}_ms")) for p in ("p50", "p95", "p99")) + " ms",
                )
            )
    for mode, q in peers.get("quix", {}).items():
        if not isinstance(q, dict):
            continue
        h = q.get("latency_at_half", {})
        add((
            f"Quix {peer_title(mode, q)}: max (one rule); backlog throughput",
            f"{_fmt(q.get('max_offered_per_s'))}; {_fmt(q.get('throughput_per_s'), 'events/s')}",
        ))  # fmt: skip
        if h:
            add(
                (
                    f"  latency p50/p95/p99 at {_fmt(h.get('offered_per_s'))}/s",
                    " / ".join(_fmt(h.get(f"{p}_ms")) for p in ("p50", "p95", "p99")) + " ms",
                )
            )
    for key, title in (
        ("ratio_max_vs_mlserver", "ours / MLServer (its LightGBM runtime), max (one rule)"),
        ("ratio_max_vs_mlserver_same_scorer", "ours / MLServer (same compiled scorer), max"),
        ("ratio_max_vs_quix", "ours / Quix (best), max (one rule)"),
        ("ratio_max_vs_quix_same_scorer", "ours / Quix (same compiled scorer), max"),
    ):
        if key in f:
            add((title, _fmt(f[key], "x")))
    if "ratio_throughput_vs_mlserver" in f:
        add(("ours / MLServer (best), throughput", _fmt(f["ratio_throughput_vs_mlserver"], "x")))
        add(("ours / MLServer (best), p99 latency", _fmt(f.get("ratio_p99_vs_mlserver"), "x")))
    if "ratio_throughput_vs_mlserver_same_scorer" in f:
        add((
            "ours / MLServer (same compiled scorer), throughput",
            _fmt(f["ratio_throughput_vs_mlserver_same_scorer"], "x"),
        ))  # fmt: skip
    if "ratio_throughput_vs_quix_same_scorer" in f:
        add((
            "ours / Quix (same compiled scorer), throughput",
            _fmt(f["ratio_throughput_vs_quix_same_scorer"], "x"),
        ))  # fmt: skip
    if "ratio_throughput_vs_quix" in f:
        add(("ours / Quix (best), throughput", _fmt(f["ratio_throughput_vs_quix"], "x")))
        add(("ours / Quix (best), p99 latency", _fmt(f.get("ratio_p99_vs_quix"), "x")))
    for system, mode, rate, peer_p99 in same_rate_pairs(r):
        ours = [
            (p.get("latency_acknowledged", {}).get("p99_ms"), p["mode"])
            for p in lat.get("points", [])
            if abs(p.get("offered_per_s", -9) - rate) < 1.0
        ]
        title = {"mlserver": "MLServer", "quix": "Quix"}.get(system, system)
        add((
            f"p99 at {_fmt(rate)}/s, {title} {mode}'s rate: ours vs it",
            ", ".join(f"{_fmt(v)} ({m})" for v, m in ours) + f" vs {_fmt(peer_p99)} ms",
        ))  # fmt: skip
    for key, title in (("mlserver", "MLServer"), ("quix", "Quix")):
        if f"ratio_p99_same_rate_vs_{key}" in f:
            add((
                f"ours / {title} (best), p99 at its rate (unpinned)",
                _fmt(f[f"ratio_p99_same_rate_vs_{key}"], "x"),
            ))  # fmt: skip
    width = max(len(k) for k, _ in rows) + 2
    lines = ["", "=== worker bench ===", *[f"{k:<{width}}{v}" for k, v in rows]]
    if r.get("sweep") or r.get("peers"):
        lines.extend(["", *format_sweeps(r)])
    if lat:
        lines.extend(["", *format_latency_table(lat)])
    lines.extend(["", "targets:"])
    for t in r.get("targets", []):
        aside = f"  [{t['aside']}]" if t.get("aside") else ""
        lines.append(
            f"  {t['target']:<42} {_fmt(t['value']):>10}  ({t['bound']})  {t['status']}{aside}"
        )
    for failure in r.get("failures", []):
        lines.append(f"FAILED: {failure[:500]}")
    m = r.get("machine", {})
    lines.append("")
    lines.append(
        f"machine: {m.get('cpus')} CPUs ({m.get('cpu_model')}), {m.get('memory_gib')} GiB; "
        f"{m.get('shared')}; {r.get('date')}"
    )
    if r.get("worker_env"):
        lines.append(f"the worker's Python: {r['worker_env']} (devtools.worker_env)")
    return "\n".join(lines)


def format_sweeps(r: dict[str, Any]) -> list[str]:
    """Each system's sweep: ``offered/s ok|no p99`` per step, and its maximum."""
    sweeps: list[tuple[str, dict[str, Any]]] = []
    for mode in ("unpinned", "pinned"):
        if isinstance(r.get("sweep", {}).get(mode), dict) and "steps" in r["sweep"][mode]:
            sweeps.append((f"worker, {mode}", r["sweep"][mode]))
    for system, title in (("mlserver", "MLServer"), ("quix", "Quix")):
        for mode, m in r.get("peers", {}).get(system, {}).items():
            if isinstance(m, dict) and isinstance(m.get("sweep"), dict):
                sweeps.append((f"{title} {peer_title(mode, m)}", m["sweep"]))
    if not sweeps:
        return []
    rule = sweeps[0][1].get("rule", {})
    lines = [
        f"maximum by one rule (every answer, p99 <= {rule.get('p99_bound_ms')} ms; steps x"
        f"{rule.get('factor')}, then {rule.get('refine_steps')} bisections): offered/s ok|no p99"
    ]
    for title, sw in sweeps:
        steps = " | ".join(
            f"{_fmt(st.get('offered_per_s'))} {'ok' if st.get('kept_up') else 'no'} "
            f"{_fmt(st.get('p99_ms'))}"
            for st in sw.get("steps", [])
        )
        lines.append(f"  {title}: {steps} -> max {_fmt(sw.get('max_offered_per_s'))}/s")
    return lines


def _basis(basis: Any) -> str:
    """The latency phase's 100 %: one text, or one per mode."""
    if isinstance(basis, dict):
        return "; ".join(f"{mode}: {text}" for mode, text in basis.items())
    return str(basis)


def format_latency_table(lat: dict[str, Any]) -> list[str]:
    """The latency table: one row per (mode, offered rate)."""
    lines = [
        f"latency (ms, event's scheduled send time -> suggestion acknowledged; "
        f"{lat.get('warmup_s')} s warm-up + {lat.get('measured_s')} s measured per point, "
        f"after {lat.get('broker_warmups', 0)} unmeasured broker warm-up point(s) in this run; "
        f"100 % = {_basis(lat.get('max_rate_basis'))})",
        f"  {lat.get('pinning')}",
    ]
    head = (
        "mode", "load", "offered/s", "achieved/s", "answered/sent", "p50", "p95", "p99", "max",
        "p99 prod.", "ingest p99", "gen. lag p99/max", "worker CPU", "others CPU",
    )  # fmt: skip
    table = [head]
    for p in lat.get("points", []):
        s = p.get("latency_acknowledged", {})
        g = p.get("generator_lag", {})
        table.append((
            p["mode"], p["load"], _fmt(p.get("offered_per_s")), _fmt(p.get("achieved_per_s")),
            f"{p.get('answered', 0):,}/{p.get('events', 0):,}",
            *(_fmt(s.get(f"{q}_ms")) for q in ("p50", "p95", "p99", "max")),
            _fmt(p.get("latency_produced_time", {}).get("p99_ms")),
            _fmt(p.get("latency_ingest", {}).get("p99_ms")),
            f"{_fmt(g.get('p99_ms'))}/{_fmt(g.get('max_ms'))}",
            _fmt((p.get("cpu_share") or {}).get("worker")),
            _fmt(p.get("others_cpu")),
        ))  # fmt: skip
    if lat.get("pinned") == "not possible":
        table.append(("pinned", "not possible", *("-" for _ in head[2:])))
    widths = [max(len(str(row[c])) for row in table) for c in range(len(head))]
    for row in table:
        cells = [
            f"{row[c]:<{widths[c]}}" if c < 2 else f"{row[c]:>{widths[c]}}"
            for c in range(len(head))
        ]
        lines.append("  " + "  ".join(cells))
    return lines


# -- plot -------------------------------------------------------------------------------------

PLOT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = json.load(open(sys.argv[1]))
    f = r["figures"]
    peers = r.get("peers", {})
    served = "/".join(r.get("throughput_1p", {}).get("scoring_backend") or ["?"])
    tp = []
    for mode in ("unpinned", "pinned"):
        if f.get(f"max_{mode}_per_s"):
            tp.append((f"worker, 1 process, {mode} ({served})", f[f"max_{mode}_per_s"], "C0"))
    halves = {p["mode"]: p for p in r.get("latency", {}).get("points", [])
              if p.get("fraction") == 0.5}
    lat = [(f"worker, {mode}", p.get("offered_per_s"), p.get("latency_acknowledged", {}),
            "C0" if mode == "pinned" else "C9") for mode, p in sorted(halves.items())]
    # CPU ms per event and peak RSS, each system at its half-load latency run.
    cost = []
    for mode, p in sorted(halves.items()):
        share, rate = (p.get("cpu_share") or {}).get("worker"), p.get("offered_per_s")
        if share and rate:
            cost.append((f"worker, {mode}", 1000 * share / rate, p.get("peak_rss_mib"), "C0"))
    same_rate = []  # (label, ours p99, peer p99, colour)
    points = r.get("latency", {}).get("points", [])
    for system, colour in (("quix", "C2"), ("mlserver", "C3")):
        for mode, m in peers.get(system, {}).items():
            if not isinstance(m, dict) or not (m.get("max_offered_per_s") or
                                               m.get("throughput_per_s")):
                continue
            name = ("Quix " if system == "quix" else "MLServer ") + mode.partition(":")[0] + (
                " (lleaves)" if m.get("scorer") == "lleaves" else " (Booster.predict)")
            tp.append((name, m.get("max_offered_per_s"), colour))
            h = m.get("latency_at_half")
            if h:
                lat.append((name, h.get("offered_per_s"), h, colour))
                cost.append((name, h.get("cpu_ms_per_event"), h.get("peak_rss_mib"), colour))
                ours = next((p for p in points if p.get("mode") == "unpinned"
                             and abs(p.get("offered_per_s", -9) - h["offered_per_s"]) < 1), None)
                if ours:
                    same_rate.append((f"{name}\\n@ {h['offered_per_s']:,.0f}/s",
                                      ours["latency_acknowledged"].get("p99_ms"),
                                      h.get("p99_ms"), colour))
    for name in ("lightgbm", "lleaves"):
        if f.get(f"ceiling_{name}_per_s"):
            tp.append((f"scoring ceiling ({name}, model call alone)",
                       f[f"ceiling_{name}_per_s"], "C7"))
    tp = [t for t in tp if t[1]]
    fig, ((a, b, d), (c, e, g)) = plt.subplots(2, 3, figsize=(22, 11))
    ys = range(len(tp))
    a.barh(list(ys), [t[1] for t in tp], color=[t[2] for t in tp])
    a.set_yticks(list(ys), [t[0] for t in tp], fontsize=8)
    a.invert_yaxis()
    a.set_xlabel("events/s (linear: bar lengths are the ratios)")
    a.set_title("Maximum by one rule: every answer, p99 <= 1 s (scorer in brackets)")
    for y, t in zip(ys, tp):
        a.text(t[1], y, f" {t[1]:,.0f}", va="center", fontsize=8)
    # p99 at the same offered rate: the worker (unpinned) at each peer's half-load rate.
    xs = range(len(same_rate))
    d.bar([x - 0.2 for x in xs], [v[1] or 0 for v in same_rate], 0.4, color="C9",
          label="worker (unpinned)")
    d.bar([x + 0.2 for x in xs], [v[2] or 0 for v in same_rate], 0.4,
          color=[v[3] for v in same_rate], label="the peer")
    for x, v in zip(xs, same_rate):
        d.text(x - 0.2, v[1] or 0, f"{v[1] or 0:.0f}", ha="center", va="bottom", fontsize=8)
        d.text(x + 0.2, v[2] or 0, f"{v[2] or 0:.0f}", ha="center", va="bottom", fontsize=8)
    d.set_xticks(list(xs), [v[0] for v in same_rate], fontsize=7, rotation=30, ha="right")
    d.set_ylabel("p99 ms")
    d.set_title("p99 at the same offered rate (each peer's half-load rate)")
    d.legend()
    ys = range(len(cost))
    e.barh(list(ys), [v[1] or 0 for v in cost], color=[v[3] for v in cost])
    e.set_yticks(list(ys), [v[0] for v in cost], fontsize=8)
    e.invert_yaxis()
    e.set_xlabel("CPU ms per event (the system's processes, at half of its max)")
    e.set_title("CPU per event")
    for y, v in zip(ys, cost):
        e.text(v[1] or 0, y, f" {v[1] or 0:.3f}", va="center", fontsize=8)
    g.barh(list(ys), [v[2] or 0 for v in cost], color=[v[3] for v in cost])
    g.set_yticks(list(ys), [v[0] for v in cost], fontsize=8)
    g.invert_yaxis()
    g.set_xlabel("MiB, peak RSS of the system's processes in that run")
    g.set_title("Memory")
    for y, v in zip(ys, cost):
        g.text(v[2] or 0, y, f" {v[2] or 0:,.0f}", va="center", fontsize=8)
    labels = [f"{n}\\n@ {rate:,.0f}/s" for n, rate, _, _ in lat]
    width = 0.25
    for i, (p, alpha) in enumerate((("p50", 1.0), ("p95", 0.7), ("p99", 0.45))):
        vals = [h.get(f"{p}_ms") or 0 for _, _, h, _ in lat]
        xs = [x + (i - 1) * width for x in range(len(lat))]
        b.bar(xs, vals, width, label=p, color=[c for *_, c in lat], alpha=alpha)
        for x, v in zip(xs, vals):
            b.text(x, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
    b.set_xticks(range(len(lat)), labels, fontsize=7, rotation=30, ha="right")
    b.axhline(50, color="k", ls="--", lw=0.8)
    b.text(len(lat) - 0.5, 50, "target p99 50 ms", va="bottom", ha="right", fontsize=8)
    b.set_yscale("log")
    b.set_ylabel("ms (log scale)")
    b.set_title("Latency event -> suggestion at half of each one's max")
    b.legend()
    # The worker's latency histogram at half load, pinned and unpinned (log-spaced buckets).
    for mode, p in sorted(halves.items()):
        h = p.get("histogram_acknowledged")
        if not h or not sum(h["counts"]):
            continue
        last = max(i for i, k in enumerate(h["counts"]) if k) + 2  # up to the last non-empty
        edges, counts = h["edges_ms"][:last], h["counts"][:last]
        total = sum(counts)
        lo = [max(e, 0.5) for e in edges]
        hi = lo[1:] + [lo[-1] * 10]
        shares = [100 * k / total for k in counts]
        color = "C0" if mode == "pinned" else "C9"
        c.stairs(shares, lo + [hi[-1]], label=f"{mode} @ {p['offered_per_s']:,.0f}/s",
                 color=color, lw=1.5)
        p99 = p.get("latency_acknowledged", {}).get("p99_ms")
        if p99:
            c.axvline(p99, color=color, ls=":", lw=1)
            c.text(p99, 0, f" p99 {p99:,.0f}", color=color, rotation=90, va="bottom", fontsize=8)
    c.axvline(50, color="k", ls="--", lw=0.8)
    c.set_xscale("log")
    c.set_xlabel("ms, event's scheduled send -> suggestion acknowledged (log scale)")
    c.set_ylabel("% of events per bucket (10 per decade)")
    c.set_title("Worker latency histogram at half load")
    if halves:
        c.legend()
    m = r.get("machine", {})
    fig.suptitle(f"worker bench, {r['workload']['events']:,} events, {m.get('cpus')} shared cores,"
                 f" {r.get('date', '')[:10]}")
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)
    """
)


def make_plot(json_path: Path, png_path: Path, env_root: Path) -> None:
    """Draw the PNG with matplotlib from a venv of its own (the project's env stays clean)."""
    env_dir = env_root / "plot"
    python = env_dir / "bin" / "python"
    stamp = env_dir / ".bench-plot-stamp"
    wanted = " ".join(PLOT_REQUIREMENTS)
    if not (python.is_file() and stamp.is_file() and stamp.read_text() == wanted):
        if env_dir.exists():
            shutil.rmtree(env_dir)
        subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             *PLOT_REQUIREMENTS],
            check=True,
        )  # fmt: skip
        stamp.write_text(wanted)
    script = env_root / "bench_plot.py"
    script.write_text(PLOT_SCRIPT)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(python), str(script), str(json_path), str(png_path)], check=True)


# -- entry ------------------------------------------------------------------------------------


def run(args: argparse.Namespace, log: Any) -> int:
    """``worker bench``: see the module docstring. Returns 0 when every figure was measured
    (targets not met do not fail the command: they are figures, not tests)."""
    sizes = sizes_of(args)
    work_dir = args.work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args=args, sizes=sizes, log=log, work_dir=work_dir)
    bench.prefix = f"bench-{dt.datetime.now(dt.timezone.utc):%m%d%H%M}-{uuid.uuid4().hex[:6]}"
    r = bench.results
    r["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    argv = sys.argv[1:]
    argv = argv[1:] if argv[:1] == ["bench"] else argv
    r["command"] = " ".join(["worker", "bench", *argv])
    r["machine"] = machine_info()
    r["sizes"] = sizes.__dict__
    started = time.monotonic()
    failures: list[str] = []
    try:
        bench.worker_env = resolve_worker_env(
            args.worker_env,
            (args.env_root or work_dir / "envs").resolve(),
            say=bench.say,
            checkout=args.worker_checkout,
        )
        r["worker_env"] = bench.worker_env.name
        bench.start_broker()
        bench.ensure_model()
        phases = set(args.phases.split(","))
        if phases & {"throughput", "peers"}:
            bench.produce_workload()
        if "throughput" in phases:
            r["throughput_1p"] = bench.measure_backlog(1)
            r["worker_command"] = bench.worker_command
            r["throughput_2p"] = bench.measure_backlog(2)
            if len(os.sched_getaffinity(0)) >= 2:  # wall-clock scaling, each worker on a core
                r["throughput_1p_pinned"] = bench.measure_backlog(1, pinned=True)
                r["throughput_2p_pinned"] = bench.measure_backlog(2, pinned=True)
        if phases & {"ceiling", "peers"}:
            r["ceiling"] = bench.measure_ceiling()
        if "state" in phases:
            r["state"] = bench.measure_state()
        if "peers" in phases and not args.skip_peers:
            env_root = (args.env_root or work_dir / "envs").resolve()
            r["peers"] = {}
            import devtools.bench.peers.run_mlserver as mlserver_driver
            import devtools.bench.peers.run_quix as quix_driver

            drivers = (
                ("mlserver", bench.run_mlserver, mlserver_driver),
                ("quix", bench.run_quix, quix_driver),
            )
            wanted = {name for name in args.peers.split(",") if name}
            for name, fn, driver in drivers:
                if name not in wanted:
                    continue
                try:
                    with topics_visible_on_create(driver):
                        r["peers"][name] = fn(env_root)
                except Exception as exc:  # one peer failing still reports everything else
                    failures.append(f"{name}: {type(exc).__name__}: {exc}")
                    r["peers"][name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
                    bench.say(f"peer {name} failed: {exc}")
        if "sweep" in phases:  # the worker's maximum by the peers' rule
            r["sweep"] = bench.measure_sweep()
        if "latency" in phases:  # after the peers: it is measured at their rates too
            r["latency"] = bench.measure_latency()
    except Exception as exc:
        failures.append(f"{type(exc).__name__}: {exc}")
        log.error("bench_failed", error_class=type(exc).__name__, error=str(exc)[:2000])
    finally:
        bench.stop_all()
        bench.delete_run_topics()
        bench.stop_broker()
    failures.extend(bench.peer_failures)
    r["duration_s"] = round(time.monotonic() - started, 1)
    r["figures"] = derive_figures(r)
    r["targets"] = evaluate_targets(r["figures"])
    r["failures"] = failures
    print(format_report(r), flush=True)
    json_out = args.json_out or work_dir / f"{bench.prefix}.json"
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(r, indent=2, default=str))
    print(f"figures written to {json_out}")
    if args.plot_out and not failures:
        try:
            make_plot(json_out, args.plot_out, (args.env_root or work_dir / "envs").resolve())
            print(f"plot written to {args.plot_out}")
        except (subprocess.CalledProcessError, OSError) as exc:
            failures.append(f"plot: {exc}")
            print(f"plot failed: {exc}", file=sys.stderr)
    return 1 if failures else 0
