"""``worker-dev demo --lifecycle``: the model lifecycle on the local broker, for a person.

Like :mod:`devtools.demo` (broker, topics, workers, monitor, live simulator, a live table and a
summary), on a registry of its own (a copy of the champion of ``--models-dir``, so the user's
models directory is never changed):

1. v1 (the champion) serves the simulated shop.
2. The shop shifts: a second simulator with another seed and a new product range takes over.
3. Once the new shop has run for a while, ``worker dataset export`` reads the topics since the
   shift and ``worker train --no-publish`` trains v2 on them (a small model: 40 trees);
   ``worker models challenger v2 --share 0.5`` makes it a challenger: the workers swap it in by
   hot reload, no restart.
4. Later ``worker models promote`` makes v2 the champion of every user.
5. The live table and the summary show each version's hit rate, discovery hit rate and purchase
   lines from the monitor's reports, and the champion/challenger significance statement.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from devtools.demo import (
    ATTRIBUTION_WINDOW_SIM_S,
    SPEEDUP,
    KafkaObserver,
    Progress,
    _ensure_model,
    _pct,
    _spawn,
    _state,
    _stop_all,
    _warm_scorer,
    latency_summary,
    run_topics,
    simulated_users,
    topic_args,
)
from worker.config import KafkaSettings
from worker.model import registry

#: Share of the run (of ``--duration-s``) before the shop shifts, and before the promotion.
SHIFT_AT = 0.2
PROMOTE_AT = 0.8
#: The retrained model is small, so that it is ready within the run (about a minute).
RETRAIN_FLAGS = ["--trees", "40", "--max-queries", "6000", "--threads", "1", "--no-publish"]


def version_rows(
    report: dict[str, Any] | None, state: registry.ServingState
) -> list[tuple[str, str]]:
    """One row per model version of the monitor's latest report (cumulative figures, with the
    purchase lines behind them), its role now, and the significance statement when there is a
    champion/challenger pair."""
    if not report:
        return []
    k = report["k"]
    rows = []
    for v in report.get("versions") or []:
        version = v["model_version"]
        role = (
            "champion"
            if version == state.champion
            else f"challenger {state.share:.0%}"
            if version == state.challenger
            else "retired"
        )
        rows.append(
            (
                f"{version} ({role})",
                f"hit rate@{k} {_pct(v.get('cumulative_hit_rate_at_k'))} on "
                f"{v.get('cumulative_attributed', 0):,} lines, recency+category "
                f"{_pct(v.get('cumulative_heuristic_hit_rate_at_k'))}, discovery "
                f"{_pct(v.get('cumulative_discovery_hit_rate_at_k'))}, "
                f"{v.get('cumulative_events_answered', 0):,} events answered",
            )
        )
    comparison = report.get("version_comparison")
    if comparison:
        rows.append(("champion vs challenger", comparison["statement"]))
    return rows


class Lifecycle:
    """The registry changes of the run, on a background thread: export, train, challenger,
    promote; ``phase`` says where it is for the live table."""

    def __init__(self, models: Path, common: list[str], logs: Path, env: dict[str, str]) -> None:
        self.models = models
        self.common = common
        self.logs = logs
        self.env = env
        self.phase = "v1 serves"
        self.v2: str | None = None
        self.error: str | None = None
        self.events: list[tuple[float, str]] = []

    def _note(self, t0: float, phase: str) -> None:
        self.phase = phase
        self.events.append((time.monotonic() - t0, phase))
        print(f"[{time.monotonic() - t0:5.0f} s] {phase}", flush=True)

    def retrain(self, t0: float, since_ms: int) -> None:
        """Export the topics so far, train v2, make it a 50 % challenger."""
        try:
            self._note(t0, "exporting the topics for retraining")
            export = self.logs / "export"
            until_ms = time.time_ns() // 1_000_000
            args = ["dataset", "export", "--out", str(export), *self.common]
            args += ["--since", str(since_ms), "--until", str(until_ms), "--max-wait-s", "20"]
            if _spawn(args, self.logs / "export.log", self.env).wait() != 0:
                raise RuntimeError(f"export failed: see {self.logs / 'export.log'}")
            self._note(t0, "training v2 on the export")
            models_before = set(registry.versions(self.models))
            args = ["train", "--dataset", str(export), "--models-dir", str(self.models)]
            if _spawn(args + RETRAIN_FLAGS, self.logs / "train.log", self.env).wait() != 0:
                raise RuntimeError(f"training failed: see {self.logs / 'train.log'}")
            (self.v2,) = set(registry.versions(self.models)) - models_before
            registry.set_challenger(
                self.models, self.v2, 0.5, by="demo", why="retrained on the shifted shop"
            )
            self._note(t0, f"v2 {self.v2} challenges v1 for 50 % of the users (hot reload)")
        except Exception as exc:  # the demo goes on with v1 and says why
            self.error = str(exc)
            self._note(t0, f"retraining failed: {exc}")

    def promote(self, t0: float) -> None:
        if self.v2 is None:
            return
        registry.promote(self.models, by="demo", why="demo: promote the challenger")
        self._note(t0, "v2 promoted: it answers every user")


def _registry_copy(models_dir: Path, work_dir: Path, run_id: str) -> Path:
    """A registry holding only the champion of ``models_dir`` (its artifact, compiled cache
    included), published as this run's v1."""
    from worker.model.artifact import resolve_artifact_dir

    source = resolve_artifact_dir(models_dir)
    target = work_dir / f"lifecycle-models-{run_id}"
    shutil.copytree(source, target / source.name)
    registry.publish(target, source.name, by="demo", why="lifecycle demo: v1")
    return target


def run_lifecycle(args: argparse.Namespace, log: Any, bootstrap: str, work_dir: Path) -> int:
    kafka = KafkaSettings(bootstrap)
    run_id, topics = run_topics(kafka, log)
    _ensure_model(args.models_dir, work_dir, log)
    models = _registry_copy(args.models_dir, work_dir, run_id)
    _warm_scorer(models, log)
    users = simulated_users(args.rate)
    group = f"recommender-workers-{run_id}"
    common = topic_args(bootstrap, topics)
    env = {**os.environ, "WORKER_LOG_FORMAT": "json"}
    logs = work_dir / f"logs-{run_id}"
    logs.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen] = {}
    for i in range(args.workers):
        procs[f"worker{i + 1}"] = _spawn(
            ["run", *common, "--models-dir", str(models), "--group-id", group]
            + ["--metrics-port", "0", "--model-poll-s", "1"],
            logs / f"worker{i + 1}.log",
            env,
        )
    procs["monitor"] = _spawn(
        ["monitor", *common, "--models-dir", str(models), "--group-id", f"monitor-{run_id}"]
        + ["--attribution-window-s", f"{ATTRIBUTION_WINDOW_SIM_S / SPEEDUP:g}", "--window-s", "10"]
        + ["--metrics-port", "0", "--worker-group-id", group],
        logs / "monitor.log",
        env,
    )
    time.sleep(2.0)
    shift_s = args.duration_s * SHIFT_AT

    def simulator(seed: int, products: int, duration_s: float, name: str) -> subprocess.Popen:
        return _spawn(
            ["simulate", "--produce", *common, "--users", str(users), "--seed", str(seed)]
            + ["--products", str(products), "--speedup", f"{SPEEDUP:g}"]
            + ["--max-rate", f"{args.rate:g}", "--duration-s", f"{duration_s:g}"],
            logs / f"{name}.log",
            env,
        )

    procs["shop"] = simulator(1, 5000, shift_s, "shop")
    shifted_ms = 0
    print(
        f"run {run_id}: {args.workers} workers (hot reload every 1 s), monitor, the simulated shop "
        f"for {shift_s:.0f} s, then a shifted shop (another seed, 1,000 new products) for "
        f"{args.duration_s - shift_s:.0f} s; v2 is trained on the topics and goes live as a 50 % "
        f"challenger, then is promoted at {args.duration_s * PROMOTE_AT:.0f} s; registry "
        f"{models}; logs in {logs}",
        flush=True,
    )
    observer = KafkaObserver(kafka, topics, group)
    lifecycle = Lifecycle(models, common, logs, env)
    t0 = time.monotonic()
    retrainer: threading.Thread | None = None
    promoted = False
    last_print = 0.0
    try:
        while True:
            elapsed = time.monotonic() - t0
            if "shifted" not in procs and elapsed >= shift_s:
                procs["shifted"] = simulator(2, 6000, args.duration_s - shift_s, "shifted")
                shifted_ms = time.time_ns() // 1_000_000
                lifecycle._note(t0, "the shop shifts: another seed, 1,000 new products")
            if retrainer is None and elapsed >= shift_s + args.duration_s * 0.15:
                # v2 learns the shifted shop: the topics' records since the shift.
                retrainer = threading.Thread(
                    target=lifecycle.retrain, args=(t0, shifted_ms - 5_000), daemon=True
                )
                retrainer.start()
            ready = retrainer is not None and not retrainer.is_alive()
            if not promoted and ready and elapsed >= args.duration_s * PROMOTE_AT:
                lifecycle.promote(t0)
                promoted = True
            progress = observer.poll()
            if elapsed - last_print >= 5:
                last_print = elapsed
                _print_line(progress, elapsed, lifecycle, models, procs)
            if any(p.poll() not in (None, 0) for n, p in procs.items() if n.startswith("worker")):
                print("a worker process exited early; see its log", flush=True)
                break
            sims = [procs[n] for n in ("shop", "shifted") if n in procs]
            done = "shifted" in procs and all(p.poll() is not None for p in sims)
            if done and (retrainer is None or not retrainer.is_alive()):
                caught_up = progress.suggestions_out + progress.dead_lettered >= progress.events_in
                if caught_up and elapsed > args.duration_s + 12:
                    break
            if elapsed > args.duration_s + 240:
                print("the run did not finish in time; stopping", flush=True)
                break
            time.sleep(1.0)
    finally:
        _stop_all(procs)
    progress = observer.poll()
    observer.close()
    lat = latency_summary(kafka, topics)
    _print_lifecycle_summary(progress, lat, procs, lifecycle, models)
    failed = [n for n, p in procs.items() if p.returncode not in (0, -signal.SIGTERM)]
    return 1 if failed or progress.suggestions_out == 0 or lifecycle.error else 0


def _print_line(
    progress: Progress,
    elapsed: float,
    lifecycle: Lifecycle,
    models: Path,
    procs: dict[str, subprocess.Popen],
) -> None:
    states = "  ".join(f"{n}:{_state(p)}" for n, p in procs.items())
    print(
        f"[{elapsed:5.0f} s] {lifecycle.phase} | events in {progress.events_in:,}  suggestions "
        f"out {progress.suggestions_out:,}  lag {progress.lag:,} | {states}",
        flush=True,
    )
    for name, value in version_rows(progress.last_report, registry.serving_state(models)):
        print(f"          {name}: {value}", flush=True)


def _print_lifecycle_summary(
    progress: Progress,
    lat: dict[str, Any],
    procs: dict[str, subprocess.Popen],
    lifecycle: Lifecycle,
    models: Path,
) -> None:
    unanswered = max(0, progress.events_in - progress.suggestions_out - progress.dead_lettered)
    rows = [
        ("events in", f"{progress.events_in:,}"),
        ("suggestions out", f"{progress.suggestions_out:,} ({lat['distinct_events']:,} events)"),
        ("unanswered", f"{unanswered:,}"),
        ("purchase lines", f"{progress.purchases:,}"),
        (
            "latency event->suggestion produced",
            f"p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms",
        ),
    ]
    rows += [(f"at {t:.0f} s", phase) for t, phase in lifecycle.events]
    rows += version_rows(progress.last_report, registry.serving_state(models))
    rows.append(("exit codes", "  ".join(f"{n}={p.returncode}" for n, p in procs.items())))
    print("\n=== lifecycle demo summary ===")
    width = max(len(name) for name, _ in rows) + 2
    for name, value in rows:
        print(f"{name:<{width}}{value}")
    print(f"registry history: worker models history --models-dir {models}")
    sys.stdout.flush()
