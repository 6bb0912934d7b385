"""Driver of the Quix Streams peer (:mod:`devtools.bench.peers.quix_app`).

Runs in the project's env; the app runs as one process from the quix venv with the repository
root on ``PYTHONPATH`` (so it imports this checkout's ``worker`` package).

Two modes (see :func:`run_quix_peer`):

* **backlog** (``rate=None``): the events topic already holds at least ``n_events`` events
  (`worker-dev bench` pre-produces them). The app reads it from the beginning with a fresh
  consumer group; throughput is the rate of suggestions between the first and the
  ``n_events``-th (broker append times).
* **rate**: the app starts at the end of the topic (``latest``); the driver sends warm-up events
  to every partition until each is answered, then produces ``n_events`` simulated events at
  ``rate`` per second with ``event_time`` = now, then :data:`TAIL_S` more unmeasured, and
  measures latency from each event's produce time to its suggestion's append time (matched by
  ``event_id``).

From a shell:
``python -m devtools.bench.peers.run_quix --bootstrap ... --models-dir ... --events-topic ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from devtools.bench.peers.envs import ensure_env
from devtools.bench.peers.run_mlserver import PeerFailedError, peer_versions, stop_process_group
from devtools.bench.peers.workload import (
    LOG_APPEND_TIME,
    OutputCollector,
    ProcessMeter,
    create_topics,
    delete_topics,
    latency_summary,
    make_load_producer,
    partition_count,
    produce_paced,
    simulated_events,
    throughput,
    unique_name,
)
from worker.apps.simulate import SimulatorSettings
from worker.wire.codec import codec_for

REPO_ROOT = Path(__file__).resolve().parents[3]
PEER_PACKAGES = (
    "quixstreams",
    "confluent-kafka",
    "lightgbm",
    "lleaves",
    "llvmlite",
    "numpy",
    "fastavro",
    "structlog",
)
#: How the app scores: the booster (``Booster.predict``) or the compiled model the worker serves.
SCORERS = ("booster", "lleaves")
WARMUP_PREFIX = "warmup-"
#: Rate mode keeps sending for this long after the measured events, unmeasured: the app polls
#: with Quix's default 1 s timeout and checkpoints (batch-sink: scores and flushes) after a poll
#: returns, so once the stream stops, its last events wait up to a second for the poll, which a
#: steady stream never does. Without the tail, that end-of-step wait was the p99 of a short
#: step.
TAIL_S = 2.0
QUIX_DEFAULTS = {
    # What Quix Streams 3.28 sets itself (kafka/consumer.py, kafka/producer.py); everything else
    # is librdkafka's default (acks=all, linger.ms=5, no compression).
    "consumer": {
        "enable.auto.offset.store": False,
        "enable.auto.commit": False,
        "partition.assignment.strategy": "range",
        "statistics.interval.ms": 30000,
    },
    "producer": {"partitioner": "murmur2", "statistics.interval.ms": 30000},
    "processing_guarantee": "at-least-once",
}


def run_quix_peer(
    bootstrap: str,
    models_dir: Path,
    events_topic: str,
    n_events: int,
    work_dir: Path,
    *,
    rate: float | None = None,
    mode: str = "per-message",
    scorer: str = "booster",
    candidates: int = 50,
    top_k: int = 10,
    commit_interval_s: float | None = None,
    commit_every: int | None = None,
    consumer_config: dict[str, Any] | None = None,
    producer_config: dict[str, Any] | None = None,
    python: Path | None = None,
    env_root: Path | None = None,
    simulator: SimulatorSettings | None = None,
    partitions_if_missing: int = 12,
    ready_timeout_s: float = 120.0,
    stall_timeout_s: float = 60.0,
    keep_topics: bool = False,
) -> dict[str, Any]:
    """Measure the Quix Streams app on ``n_events`` events of ``events_topic``.

    Args:
        models_dir: the worker's models dir (or one artifact dir): the same model the worker
            serves.
        rate: ``None`` for backlog mode, else events per second produced by the driver.
        mode: ``per-message`` (one predict per event) or ``batch-sink`` (one predict per
            checkpoint batch, see :mod:`devtools.bench.peers.quix_app`).
        scorer: ``booster`` (``Booster.predict``, as Quix users would write it) or ``lleaves``
            (the compiled model the worker serves, from the artifact's cache).
        commit_interval_s, commit_every: Quix checkpointing; defaults: Quix's own (5 s, off) for
            ``per-message``; 0.1 s and 1000 records for ``batch-sink`` (its batch boundary).
        consumer_config, producer_config: librdkafka pass-through, default none (Quix defaults).
        simulator: catalogue/population of the events produced in rate mode (default: the
            worker's defaults, the catalogue models are trained on).
        partitions_if_missing: rate mode creates ``events_topic`` with this many partitions when
            it does not exist.

    Returns:
        ``{"peer", "figures": {...}, "config": {...}}``.

    Raises:
        PeerFailedError: the app exited early or never answered.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    run_id = unique_name("quix")
    if python is None:
        python = ensure_env("quix", env_root or work_dir / "envs")
    if commit_interval_s is None:
        commit_interval_s = 5.0 if mode == "per-message" else 0.1
    if commit_every is None:
        commit_every = 0 if mode == "per-message" else 1000

    try:
        partitions = partition_count(bootstrap, events_topic)
    except RuntimeError:
        if not rate:
            raise
        partitions = partitions_if_missing
        create_topics(bootstrap, {events_topic: (partitions, {})})
    output_topic = f"{run_id}-suggestions"
    create_topics(bootstrap, {output_topic: (partitions, LOG_APPEND_TIME)})

    group = f"{run_id}-group"
    cmd = [
        str(python),
        str(Path(__file__).with_name("quix_app.py")),
        "--bootstrap",
        bootstrap,
        "--models-dir",
        str(models_dir),
        "--events-topic",
        events_topic,
        "--output-topic",
        output_topic,
        "--group",
        group,
        "--offset-reset",
        "latest" if rate else "earliest",
        "--mode",
        mode,
        "--scorer",
        scorer,
        "--commit-interval",
        str(commit_interval_s),
        "--commit-every",
        str(commit_every),
        "--candidates",
        str(candidates),
        "--top-k",
        str(top_k),
        "--consumer-config",
        json.dumps(consumer_config or {}),
        "--producer-config",
        json.dumps(producer_config or {}),
        "--state-dir",
        str(work_dir / f"{run_id}-state"),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    log_path = work_dir / f"{run_id}.log"
    out_path = work_dir / f"{run_id}.out"

    codec = codec_for("ProductSuggestion")
    arrivals: dict[str, int] = {}  # event_id -> append time of its suggestion
    first_last: list[float] = []  # monotonic time of the first and latest measured suggestion
    lock = threading.Lock()

    def on_suggestion(key: bytes | None, value: bytes | None, ts_ms: int) -> None:
        event_id = codec.decode(value)["event_id"]
        with lock:
            arrivals[event_id] = ts_ms
            if not event_id.startswith(WARMUP_PREFIX):
                if not first_last:
                    first_last.append(time.monotonic())
                first_last[1:] = [time.monotonic()]

    def measured() -> int:
        with lock:
            return sum(1 for e in arrivals if not e.startswith(WARMUP_PREFIX))

    proc: subprocess.Popen | None = None
    meter: ProcessMeter | None = None
    collector: OutputCollector | None = None
    send_ms: dict[str, int] = {}
    warmup_rounds = 0
    started = time.monotonic()
    try:
        collector = OutputCollector(bootstrap, output_topic, on_suggestion).start()
        with log_path.open("w") as log, out_path.open("w") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=log, env=env, cwd=work_dir, start_new_session=True
            )
        meter = ProcessMeter(proc.pid).start()

        def check_alive() -> None:
            if proc is not None and proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise PeerFailedError(f"quix app exited with {proc.returncode}:\n{tail}")

        load_started = time.monotonic()
        produce_s = 0.0
        if rate:
            tail = int(rate * TAIL_S)
            events = simulated_events(n_events + tail + 1000, simulator)
            warm, events = events[:1000], events[1000:]
            producer = make_load_producer(bootstrap)
            event_codec = codec_for("BrowsingEvent")
            deadline = time.monotonic() + ready_timeout_s
            # One warm-up event per partition per round, until every partition has answered one
            # (the group joined and each partition assigned and served once). Not "until the
            # latest round is answered": in batch-sink mode a round was answered only once the
            # next one arrived (the sink flushes at a checkpoint, which came with a record), so
            # that never held and the warm-up timed out.
            while True:
                check_alive()
                if time.monotonic() > deadline:
                    raise PeerFailedError(f"no full warm-up round answered on {events_topic}")
                for p in range(partitions):
                    rec = warm[(warmup_rounds * partitions + p) % len(warm)]
                    event_id = f"{WARMUP_PREFIX}{warmup_rounds}-{p}"
                    record = {**rec, "event_id": event_id, "event_time": int(time.time() * 1000)}
                    producer.produce(
                        events_topic,
                        key=rec["user_id"].encode(),
                        partition=p,
                        value=event_codec.encode(record),
                    )
                producer.flush(10)
                warmup_rounds += 1
                time.sleep(1.0)
                with lock:
                    served = {e.rpartition("-")[2] for e in arrivals if e.startswith(WARMUP_PREFIX)}
                if len(served) >= partitions:
                    break
            warmup_s = time.monotonic() - started

            def make_value(index: int, sent_ms: int) -> tuple[bytes, bytes]:
                record = {**events[index], "event_time": sent_ms}
                if index >= n_events:  # the unmeasured tail
                    record["event_id"] = f"{WARMUP_PREFIX}tail-{index}"
                send_ms[record["event_id"]] = sent_ms
                return record["user_id"].encode("utf-8"), event_codec.encode(record)

            cpu_before = meter.cpu_s()
            load_started = time.monotonic()
            produce_s = produce_paced(
                producer,
                ((events_topic, None, b"", None) for _ in range(n_events + tail)),
                rate=rate,
                make_value=make_value,
            )
        last_count, last_change = -1, time.monotonic()
        while True:
            count = measured()
            if count >= n_events:
                break
            check_alive()
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            elif time.monotonic() - last_change > (stall_timeout_s if count else ready_timeout_s):
                break
            time.sleep(0.05)
        load_s = time.monotonic() - load_started
        meter.sample()
        if rate:
            cpu_load = meter.cpu_s() - cpu_before
        else:  # from the first to the last suggestion: excludes imports and model loading
            cpu_load = meter.cpu_s() - meter.cpu_s_at(first_last[0]) if first_last else 0.0
    finally:
        exit_code = stop_process_group(proc) if proc is not None else None
        if meter is not None:
            meter.stop()
        if collector is not None:
            collector.stop()
        if not keep_topics:
            delete_topics(bootstrap, [output_topic])

    with lock:
        answered = {e: t for e, t in arrivals.items() if not e.startswith(WARMUP_PREFIX)}
    timestamps = sorted(answered.values())[:n_events]
    counters = _last_json_line(out_path)
    figures: dict[str, Any] = {
        "events": n_events,
        "answered": len(answered),
        "throughput": throughput(timestamps),
        "load_s": round(load_s, 3),
        "cpu_s": round(cpu_load, 2),
        "cpu_ms_per_event": round(1000 * cpu_load / max(len(answered), 1), 3),
        "cpu_s_total": round(meter.cpu_s(), 2),
        "peak_rss_mb": round(meter.peak_rss_bytes / 2**20, 1),
        "peak_hwm_mb": round(meter.peak_hwm_bytes / 2**20, 1),
        "processes": meter.processes,
        "exit_code": exit_code,
        "app_counters": counters,
    }
    if rate:
        latencies = [answered[e] - t for e, t in send_ms.items() if e in answered]
        figures.update(
            offered_rate_per_s=rate,
            produce_s=round(produce_s, 3),
            warmup_s=round(warmup_s, 1),
            latency=latency_summary(latencies),
        )
    return {
        "peer": f"quixstreams-{mode}",
        "figures": figures,
        "config": {
            "versions": peer_versions(python, PEER_PACKAGES),
            "mode": mode,
            "scorer": scorer,
            "commit_interval_s": commit_interval_s,
            "commit_every": commit_every,
            "consumer_config": {**QUIX_DEFAULTS["consumer"], **(consumer_config or {})},
            "producer_config": {**QUIX_DEFAULTS["producer"], **(producer_config or {})},
            "processing_guarantee": QUIX_DEFAULTS["processing_guarantee"],
            "auto_offset_reset": "latest" if rate else "earliest",
            "candidates": candidates,
            "top_k": top_k,
            "models_dir": str(models_dir),
            "topics": {"events": events_topic, "output": output_topic, "partitions": partitions},
            "warmup_rounds": warmup_rounds,
            "worker_import": f"PYTHONPATH={REPO_ROOT}",
            "command": cmd,
            "log": str(log_path),
        },
    }


def _last_json_line(path: Path) -> dict[str, Any] | None:
    for line in reversed(path.read_text(errors="replace").splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--events-topic", required=True)
    parser.add_argument("--events", type=int, default=10000)
    parser.add_argument("--rate", type=float, default=None)
    parser.add_argument("--mode", choices=("per-message", "batch-sink"), default="per-message")
    parser.add_argument("--scorer", choices=SCORERS, default="booster")
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--work-dir", type=Path, default=Path("var/bench-peers"))
    parser.add_argument("--env-root", type=Path, default=None)
    parser.add_argument(
        "--preproduce",
        action="store_true",
        help="first produce --events simulated events to the topic (creating it), as the "
        "benchmark does before a backlog run",
    )
    args = parser.parse_args(argv)
    if args.preproduce:
        preproduce_events(args.bootstrap, args.events_topic, args.events)
    result = run_quix_peer(
        args.bootstrap,
        args.models_dir,
        args.events_topic,
        args.events,
        args.work_dir,
        rate=args.rate,
        mode=args.mode,
        scorer=args.scorer,
        candidates=args.candidates,
        env_root=args.env_root,
    )
    print(json.dumps(result, indent=2))
    return 0


def preproduce_events(
    bootstrap: str,
    topic: str,
    n_events: int,
    *,
    partitions: int = 12,
    simulator: SimulatorSettings | None = None,
) -> float:
    """Create ``topic`` if needed and fill it with ``n_events`` simulated events (event time =
    now). Returns the seconds it took."""
    create_topics(bootstrap, {topic: (partitions, {})})
    codec = codec_for("BrowsingEvent")
    events = simulated_events(n_events, simulator)
    producer = make_load_producer(bootstrap)

    def make_value(index: int, sent_ms: int) -> tuple[bytes, bytes]:
        record = {**events[index], "event_time": sent_ms}
        return record["user_id"].encode("utf-8"), codec.encode(record)

    return produce_paced(
        producer,
        ((topic, None, b"", None) for _ in range(n_events)),
        rate=None,
        make_value=make_value,
    )


if __name__ == "__main__":
    raise SystemExit(main())
