"""``worker-dev ready``: seconds from a worker's spawn to ready, and its memory, by catalogue size.

For each catalogue size (``--products 5000,50000,200000``):

1. ``worker simulate --out`` a small history with that many products (``--days``, ``--users``);
2. ``worker train`` a model on it (``--trees``/``--leaves``: the project's defaults, so the compile
   costs what a production model's does; ``--max-queries`` small, so training stays short);
3. ``lightgbm``: start ``worker run --scoring-backend lightgbm`` as a subprocess and poll its
   ``/readyz`` until 200 (the baseline: no compiled model at all);
4. ``precompiled``: ``worker compile`` the artifact (timed: the cost moved to publishing), then
   start ``worker run`` (lleaves, ``auto``) and poll again;
5. ``fresh``: move the artifact's ``.lleaves/`` cache away and start again: this start compiles.

A start is timed from spawn to the first 200 of ``/readyz`` (model loaded, partitions assigned);
the worker's resident memory is read from ``/proc/<pid>/status`` then (``VmRSS``, and the peak so
far, ``VmHWM``). All starts of a run use one broker (a local one of its own, on free ports and
in a temp dir, unless ``--bootstrap-servers`` names a cluster), topics and a changelog created
beforehand, and one consumer group that each worker joins alone; another group is joined once
beforehand, so that no start pays for the broker's first group coordination. Each worker gets
its own ``HOME``, so no user-level lleaves cache (``~/.cache/worker-lleaves``) is found. Prints
Markdown tables; the figures (JSON) and the commands' logs stay in ``--work-dir``.
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
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from devtools.worker_env import WorkerEnv, resolve_worker_env
from devtools.worker_env import add_argument as add_worker_env_argument
from worker.config import BOOTSTRAP_SERVERS, TRAIN_LEAVES, TRAIN_TREES, Setting

MODES = ("lightgbm", "precompiled", "fresh")
MODE_LABELS = {
    "lightgbm": "LightGBM backend",
    "precompiled": "lleaves, precompiled",
    "fresh": "lleaves, fresh cache",
}
DEFAULT_PRODUCTS = "5000,50000,200000"
#: Polling period of /readyz.
POLL_S = 0.1
STOP_TIMEOUT_S = 30.0

READY_BOOTSTRAP_SERVERS: Setting[str | None] = replace(
    BOOTSTRAP_SERVERS,
    default=None,
    help="an existing cluster; default: a local broker of its own on free ports",
)


def parse_sizes(text: str) -> list[int]:
    """``"5000,50k,200_000"`` -> ``[5000, 50000, 200000]`` (a ``k`` suffix is thousands).

    Raises:
        argparse.ArgumentTypeError: not a comma-separated list of positive integers.
    """
    sizes = []
    for part in text.split(","):
        item = part.strip().lower()
        scale = 1000 if item.endswith("k") else 1
        try:
            value = int(item.removesuffix("k")) * scale
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part.strip()!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{part.strip()!r} is not a positive number")
        sizes.append(value)
    if not sizes:
        raise argparse.ArgumentTypeError("no catalogue size")
    return sizes


def parse_modes(text: str) -> list[str]:
    """``"fresh,precompiled"`` -> the modes, in the order they run (that of :data:`MODES`).

    Raises:
        argparse.ArgumentTypeError: an unknown mode.
    """
    asked = {m.strip() for m in text.split(",") if m.strip()}
    unknown = asked - set(MODES)
    if unknown or not asked:
        raise argparse.ArgumentTypeError(f"modes are a subset of {','.join(MODES)}, not {text!r}")
    return [m for m in MODES if m in asked]


def add_arguments(p: Any) -> None:
    """The flags of ``worker-dev ready`` (``p`` is a :class:`worker.cli.SettingsParser`)."""
    p.add_argument(
        "--products",
        type=parse_sizes,
        default=parse_sizes(DEFAULT_PRODUCTS),
        metavar="N,N,...",
        help=f"catalogue sizes (default {DEFAULT_PRODUCTS})",
    )
    p.add_argument(
        "--modes",
        type=parse_modes,
        default=list(MODES),
        metavar="MODE,...",
        help="starts to measure: lightgbm (--scoring-backend lightgbm), precompiled "
        "(`worker compile` first), fresh (no compiled object); default all",
    )
    p.add_argument(
        "--days", type=float, default=0.5, help="simulated history length (default 0.5 days)"
    )
    p.add_argument("--users", type=int, default=5000, help="simulated users (default 5000)")
    p.add_argument(
        "--trees",
        type=int,
        default=TRAIN_TREES.default,
        help=f"trees (default {TRAIN_TREES.default}, worker train's)",
    )
    p.add_argument(
        "--leaves",
        type=int,
        default=TRAIN_LEAVES.default,
        help=f"leaves per tree (default {TRAIN_LEAVES.default}, worker train's)",
    )
    p.add_argument(
        "--max-queries",
        type=int,
        default=3000,
        help="training queries (default 3000; the project's is 40000: fewer keep training "
        "short, the trees as large)",
    )
    p.add_argument(
        "--timeout-s",
        type=float,
        default=300.0,
        help="longest wait for one worker to be ready (default 300)",
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        default=Path("var/ready"),
        help="datasets, models, logs and the figures as JSON (default var/ready)",
    )
    add_worker_env_argument(p)
    p.add_settings(READY_BOOTSTRAP_SERVERS)


# -- results ------------------------------------------------------------------------------------


@dataclass
class Start:
    """One worker start: spawn to ready, memory then, and how the scorer was had."""

    mode: str
    ready_s: float | None = None
    rss_mib: float | None = None
    peak_rss_mib: float | None = None
    backend: str | None = None
    loaded_from_cache: bool | None = None
    scorer_s: float | None = None  # compiled_s or loaded_s of the scoring_backend line
    error: str | None = None


@dataclass
class SizeResult:
    """The figures of one catalogue size."""

    products: int
    events: int | None = None
    simulate_s: float | None = None
    train_s: float | None = None
    compile_s: float | None = None  # `worker compile`, wall seconds
    starts: dict[str, Start] = field(default_factory=dict)
    error: str | None = None


def _num(value: float | None, fmt: str = ".1f", unit: str = "") -> str:
    return "–" if value is None else f"{value:{fmt}}{unit}"


def _scorer_cell(start: Start) -> str:
    if start.backend != "lleaves":
        return start.backend or "–"
    how = "compiled" if start.loaded_from_cache is False else "loaded"
    return f"lleaves, {how} in {_num(start.scorer_s, '.2f', ' s')}"


def format_table(results: Sequence[SizeResult], *, trees: int, leaves: int) -> str:
    """Markdown: one row per catalogue size and start, then how long preparing each size took."""
    lines = [
        "| products | start | ready s | scorer | RSS at ready MiB | peak RSS MiB |",
        "|---:|---|---:|---|---:|---:|",
    ]
    for r in results:
        if r.error and not r.starts:
            lines.append(f"| {r.products:,} | failed: {r.error} | | | | |")
        for mode in MODES:
            start = r.starts.get(mode)
            if start is None:
                continue
            label = MODE_LABELS[mode]
            if start.error:
                lines.append(f"| {r.products:,} | {label} | failed: {start.error} | | | |")
                continue
            lines.append(
                f"| {r.products:,} | {label} | {_num(start.ready_s)} | {_scorer_cell(start)} "
                f"| {_num(start.rss_mib, '.0f')} | {_num(start.peak_rss_mib, '.0f')} |"
            )
    lines += [
        "",
        "| products | history events | simulate s | train s | `worker compile` s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.products:,} | {_num(r.events, ',')} | {_num(r.simulate_s)} "
            f"| {_num(r.train_s)} | {_num(r.compile_s)} |"
        )
    lines += ["", f"model: {trees} trees x {leaves} leaves (LambdaRank, 20 features)"]
    return "\n".join(lines)


# -- measuring ----------------------------------------------------------------------------------


def proc_memory_mib(status_text: str) -> tuple[float | None, float | None]:
    """``(VmRSS, VmHWM)`` in MiB from the text of ``/proc/<pid>/status``."""
    found: dict[str, float] = {}
    for line in status_text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            parts = rest.split()
            if parts and parts[-1] == "kB":
                found[key] = round(int(parts[0]) / 1024, 1)
    return found.get("VmRSS"), found.get("VmHWM")


def scorer_line(log_text: str) -> dict[str, Any] | None:
    """The worker's ``scoring_backend`` log record (JSON lines), or None."""
    for line in log_text.splitlines():
        if '"scoring_backend"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "scoring_backend":
            return record
    return None


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1.0) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):  # 503 (HTTPError), refused, reset
        return False


def _run_step(args: list[str], log_path: Path) -> float:
    """Run a ``worker`` command to completion (its output to ``log_path``); wall seconds.

    Raises:
        RuntimeError: it failed.
    """
    started = time.monotonic()
    with open(log_path, "ab") as out:
        code = subprocess.run(
            WorkerEnv("current", sys.executable).command(*args),
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        ).returncode
    if code != 0:
        raise RuntimeError(f"`worker {args[0]}` exited {code} (see {log_path})")
    return time.monotonic() - started


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def warm_up_group(kafka: Any, topic: str, group: str, log: Any, timeout_s: float = 60.0) -> None:
    """Join a consumer group once and leave: the broker's first group coordination (it creates
    ``__consumer_offsets``) then costs no measured start anything."""
    from worker.kafka.clients import make_consumer

    assigned: list[Any] = []
    consumer = make_consumer(kafka, group, log)
    try:
        consumer.subscribe([topic], on_assign=lambda c, partitions: assigned.extend(partitions))
        deadline = time.monotonic() + timeout_s
        while not assigned and time.monotonic() < deadline:
            consumer.poll(0.2)
    finally:
        consumer.close()


def measure_start(
    run_args: list[str],
    port: int,
    home: Path,
    log_path: Path,
    mode: str,
    timeout_s: float,
    worker: WorkerEnv,
) -> Start:
    """Spawn ``worker run`` (with ``worker``'s Python), poll ``/readyz`` until 200; memory at
    that moment; stop it."""
    home.mkdir(parents=True, exist_ok=True)
    env = worker.environ({**os.environ, "HOME": str(home), "WORKER_LOG_FORMAT": "json"})
    start = Start(mode=mode)
    with open(log_path, "wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen(
            worker.command(*run_args, "--metrics-port", str(port)),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            while True:
                if _ready(port):
                    start.ready_s = round(time.monotonic() - started, 2)
                    try:
                        status = Path(f"/proc/{proc.pid}/status").read_text()
                    except OSError:
                        status = ""
                    start.rss_mib, start.peak_rss_mib = proc_memory_mib(status)
                    break
                if proc.poll() is not None:
                    start.error = f"exited {proc.returncode} before ready (see {log_path})"
                    break
                if time.monotonic() - started > timeout_s:
                    start.error = f"not ready after {timeout_s:g} s (see {log_path})"
                    break
                time.sleep(POLL_S)
        finally:
            _stop(proc)
    record = scorer_line(log_path.read_text(errors="replace"))
    if record is not None:
        start.backend = record.get("backend")
        start.loaded_from_cache = record.get("loaded_from_cache")
        start.scorer_s = record.get("compiled_s", record.get("loaded_s"))
    return start


def measure_size(
    products: int,
    args: argparse.Namespace,
    common_run_args: list[str],
    say: Callable[[str], None],
    worker: WorkerEnv,
) -> SizeResult:
    """Simulate, train, then start the worker in each mode; never raises for one size."""
    from devtools.localkafka import free_ports
    from worker.model.artifact import resolve_artifact_dir
    from worker.model.scoring import CACHE_SUBDIR

    result = SizeResult(products=products)
    base = args.work_dir / f"products-{products}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    history, models, logs = base / "history", base / "models", base / "logs"
    logs.mkdir()
    try:
        result.simulate_s = round(
            _run_step(
                [
                    *("simulate", "--out", str(history), "--products", str(products)),
                    *("--days", f"{args.days:g}", "--users", str(args.users)),
                    *("--log-format", "json"),
                ],
                logs / "simulate.log",
            ),
            1,
        )
        result.events = _events_written(logs / "simulate.log")
        say(f"  simulated {products:,} products, {result.events} events in {result.simulate_s} s")
        result.train_s = round(
            _run_step(
                [
                    *("train", "--dataset", str(history), "--models-dir", str(models)),
                    *("--trees", str(args.trees), "--leaves", str(args.leaves)),
                    *("--max-queries", str(args.max_queries), "--log-format", "json"),
                ],
                logs / "train.log",
            ),
            1,
        )
        say(f"  trained in {result.train_s} s")
        artifact = resolve_artifact_dir(models)
        cache = artifact / CACHE_SUBDIR
        run_args = [*common_run_args, "--models-dir", str(models)]
        for mode in args.modes:
            if mode == "precompiled":
                shutil.rmtree(cache, ignore_errors=True)
                result.compile_s = round(
                    _run_step(
                        ["compile", "--models-dir", str(models), "--log-format", "json"],
                        logs / "compile.log",
                    ),
                    1,
                )
                say(f"  `worker compile`: {result.compile_s} s")
            elif mode == "fresh" and cache.exists():
                shutil.move(str(cache), str(base / "lleaves-set-aside"))
            backend = "lightgbm" if mode == "lightgbm" else "auto"
            start = measure_start(
                [*run_args, "--scoring-backend", backend],
                free_ports(1)[0],
                base / f"home-{mode}",
                logs / f"worker-{mode}.log",
                mode,
                args.timeout_s,
                worker,
            )
            result.starts[mode] = start
            say(
                f"  {MODE_LABELS[mode]}: ready {_num(start.ready_s, '.1f', ' s')}, "
                f"{_scorer_cell(start)}, RSS {_num(start.rss_mib, '.0f')} MiB, "
                f"peak {_num(start.peak_rss_mib, '.0f')} MiB"
                + (f"; {start.error}" if start.error else "")
            )
    except Exception as exc:  # one size failing still reports the others
        result.error = str(exc)
        say(f"  failed: {exc}")
    return result


def _events_written(log_path: Path) -> int | None:
    for line in log_path.read_text(errors="replace").splitlines():
        if '"dataset_written"' in line:
            try:
                return int(json.loads(line)["n_events"])
            except (ValueError, KeyError, TypeError):
                return None
    return None


def run(args: argparse.Namespace, log: Any) -> int:
    """``worker-dev ready``: measure every size, print the table; 1 if anything failed."""
    from devtools import localkafka
    from worker.config import KafkaSettings, TopicSettings
    from worker.kafka.admin import ensure_topics, wait_for_cluster
    from worker.kafka.changelog import changelog_topic, ensure_changelog

    def say(line: str) -> None:
        print(line, flush=True)

    work_dir: Path = args.work_dir.resolve()
    args.work_dir = work_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    worker = resolve_worker_env(
        args.worker_env, args.env_root.resolve(), say=say, checkout=args.worker_checkout
    )
    broker_cfg = None
    bootstrap = args.bootstrap_servers
    if not bootstrap:
        port, controller_port = localkafka.free_ports(2)
        broker_cfg = localkafka.LocalKafkaConfig(
            home=Path(tempfile.mkdtemp(prefix="worker-ready-kafka-")),
            port=port,
            controller_port=controller_port,
            heap_mb=384,
        )
        say(f"starting a local broker in {broker_cfg.home} ...")
    try:
        if broker_cfg is not None:
            bootstrap = localkafka.start(broker_cfg)
        run_id = time.strftime("%Y%m%d%H%M%S")
        kafka = KafkaSettings(bootstrap)
        wait_for_cluster(kafka)
        topics = TopicSettings(
            events=f"ready-events-{run_id}",
            suggestions=f"ready-suggestions-{run_id}",
            purchases=f"ready-purchases-{run_id}",
            accuracy=f"ready-accuracy-{run_id}",
        )
        group = f"ready-{run_id}"
        ensure_topics(kafka, topics, log)
        ensure_changelog(
            kafka, changelog_topic(group), topics.partitions, topics.replication_factor, log
        )
        warm_up_group(kafka, topics.events, f"{group}-warm-up", log)
        common = [
            "run",
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
            "--group-id",
            group,
        ]
        results = []
        for products in args.products:
            say(f"{products:,} products")
            results.append(measure_size(products, args, common, say, worker))
    finally:
        if broker_cfg is not None:
            try:
                localkafka.stop(broker_cfg)
            finally:
                shutil.rmtree(broker_cfg.home, ignore_errors=True)
    table = format_table(results, trees=args.trees, leaves=args.leaves)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    command = "worker-dev " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    say("")
    say(f"{command}  ({stamp}, {os.cpu_count()} CPUs, worker env {worker.name})")
    say(table)
    (work_dir / f"ready-{run_id}.json").write_text(
        json.dumps(
            {
                "date": stamp,
                "command": command,
                "worker_env": worker.name,
                "results": [asdict(r) for r in results],
            },
            indent=2,
        )
        + "\n"
    )
    failed = any(r.error or any(s.error for s in r.starts.values()) for r in results)
    return 1 if failed else 0
