"""``worker`` command line: one settings object per command, CLI flag > environment > default.

Subcommands: ``topics``, ``simulate``, ``train``, ``run`` (the worker), ``monitor``. The
development tooling (local broker, chaos harness, benchmark, demo) is ``worker-dev``
(:mod:`devtools.cli`), which production does not install.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from worker.config import (
    DEFAULT_BOOTSTRAP,
    KafkaSettings,
    MonitorSettings,
    TopicSettings,
    WorkerSettings,
    env,
    kafka_properties,
)
from worker.core.errors import InfrastructureError, WorkerError

EXIT_INFRASTRUCTURE = 2


def _add_kafka_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("kafka")
    g.add_argument(
        "--bootstrap-servers",
        default=env("KAFKA_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP),
        help="Kafka bootstrap servers (env KAFKA_BOOTSTRAP_SERVERS; default %(default)s)",
    )
    g.add_argument(
        "-X",
        dest="kafka_props",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="librdkafka property passed through (repeatable; VALUE @file reads a file); "
        "also env WORKER_KAFKA_<KEY> with _ for .",
    )
    g.add_argument(
        "--schema-registry-url",
        default=env("WORKER_SCHEMA_REGISTRY_URL", "") or None,
        help="Confluent-compatible schema registry; unset = Avro single-object encoding",
    )
    g.add_argument("--events-topic", default=env("WORKER_EVENTS_TOPIC", "browsing-events"))
    g.add_argument(
        "--suggestions-topic", default=env("WORKER_SUGGESTIONS_TOPIC", "product-suggestions")
    )
    g.add_argument("--purchases-topic", default=env("WORKER_PURCHASES_TOPIC", "purchases"))
    g.add_argument(
        "--accuracy-topic", default=env("WORKER_ACCURACY_TOPIC", "recommendation-accuracy")
    )
    g.add_argument(
        "--partitions",
        type=int,
        default=int(env("WORKER_TOPIC_PARTITIONS", "12")),
        help="partitions of events, suggestions and purchases when created (default 12)",
    )


def _kafka(args: argparse.Namespace) -> KafkaSettings:
    return KafkaSettings(args.bootstrap_servers, kafka_properties(args.kafka_props))


def _topics(args: argparse.Namespace) -> TopicSettings:
    return TopicSettings(
        events=args.events_topic,
        suggestions=args.suggestions_topic,
        purchases=args.purchases_topic,
        accuracy=args.accuracy_topic,
        partitions=args.partitions,
    )


def _models_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--models-dir",
        type=Path,
        default=Path(env("WORKER_MODELS_DIR", "models")),
        help="models directory (uses its LATEST) or one artifact directory",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="worker", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("topics", help="create the project's topics (idempotent)")
    _add_kafka_args(p)

    p = sub.add_parser(
        "simulate", help="simulated clickstream: a dataset to files, or live to Kafka"
    )
    _add_kafka_args(p)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--out", type=Path, help="write a historical dataset into this directory")
    mode.add_argument("--produce", action="store_true", help="produce live to Kafka")
    p.add_argument("--days", type=float, default=2.0, help="history length for --out (days)")
    p.add_argument("--users", type=int, default=20000)
    p.add_argument("--products", type=int, default=5000)
    p.add_argument("--categories", type=int, default=60)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--speedup",
        type=float,
        default=60.0,
        help="simulated seconds per wall second for --produce",
    )
    p.add_argument("--max-rate", type=float, default=None, help="cap in records/s for --produce")
    p.add_argument("--duration-s", type=float, default=60.0, help="wall seconds to produce")
    p.add_argument(
        "--corrupt-every",
        type=int,
        default=0,
        help="send every N-th event malformed (dead-letter demonstration)",
    )

    p = sub.add_parser("train", help="train and evaluate a LightGBM ranker; write an artifact")
    p.add_argument(
        "--dataset", type=Path, required=True, help="directory from `worker simulate --out`"
    )
    _models_arg(p)
    p.add_argument("--trees", type=int, default=200)
    p.add_argument("--leaves", type=int, default=63)
    p.add_argument("--max-queries", type=int, default=40000, help="training events sampled")
    p.add_argument("--candidates", type=int, default=50)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)

    p = sub.add_parser("run", help="the streaming inference worker")
    _add_kafka_args(p)
    _models_arg(p)
    p.add_argument("--group-id", default=env("WORKER_GROUP_ID", "recommender-workers"))
    p.add_argument("--top-k", type=int, default=int(env("WORKER_TOP_K", "10")))
    p.add_argument("--candidates", type=int, default=int(env("WORKER_CANDIDATES", "50")))
    p.add_argument("--max-batch-size", type=int, default=int(env("WORKER_MAX_BATCH_SIZE", "500")))
    p.add_argument(
        "--max-batch-wait-ms", type=int, default=int(env("WORKER_MAX_BATCH_WAIT_MS", "20"))
    )
    p.add_argument(
        "--max-event-bytes", type=int, default=int(env("WORKER_MAX_EVENT_BYTES", "65536"))
    )
    p.add_argument("--max-sessions", type=int, default=int(env("WORKER_MAX_SESSIONS", "2000000")))
    p.add_argument(
        "--session-idle-ttl-s", type=float, default=float(env("WORKER_SESSION_IDLE_TTL_S", "3600"))
    )
    p.add_argument(
        "--fetch-buffer-mb",
        type=int,
        default=int(env("WORKER_FETCH_BUFFER_MB", "16")),
        help="records fetched ahead of the loop, at most (the rest of a backlog stays in Kafka)",
    )
    p.add_argument(
        "--produce-buffer-mb",
        type=int,
        default=int(env("WORKER_PRODUCE_BUFFER_MB", "32")),
        help="outputs queued for the broker, at most (produce waits when it is full)",
    )
    p.add_argument(
        "--shutdown-timeout-s", type=float, default=float(env("WORKER_SHUTDOWN_TIMEOUT_S", "30"))
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(env("WORKER_METRICS_PORT", "9100")),
        help="/metrics, /healthz, /readyz; 0 disables",
    )
    p.add_argument(
        "--scoring-backend",
        choices=("auto", "lleaves", "lightgbm"),
        default=env("WORKER_SCORING_BACKEND", "auto"),
        help="auto = the compiled lleaves model when installed (pip extra 'fast'), else LightGBM",
    )
    p.add_argument(
        "--exactly-once",
        action=argparse.BooleanOptionalAction,
        default=env("WORKER_EXACTLY_ONCE", "false").lower() in ("1", "true", "yes"),
        help="transactional read-process-write; downstream readers use read_committed "
        "(env WORKER_EXACTLY_ONCE)",
    )
    p.add_argument(
        "--transactional-id",
        default=env("WORKER_TRANSACTIONAL_ID", "") or None,
        help="stable per replica (e.g. the pod name) so a restart fences its predecessor; "
        "default <group>-<host>-<pid>",
    )
    p.add_argument(
        "--state-changelog",
        action=argparse.BooleanOptionalAction,
        default=env("WORKER_STATE_CHANGELOG", "true").lower() in ("1", "true", "yes"),
        help="keep session state in a compacted changelog topic and restore it on assignment",
    )
    p.add_argument(
        "--max-idle-s",
        type=float,
        default=None,
        help="exit after this long without input (batch jobs and tests)",
    )

    p = sub.add_parser("monitor", help="rolling accuracy of suggestions against purchases")
    _add_kafka_args(p)
    _models_arg(p)
    p.add_argument("--group-id", default=env("WORKER_MONITOR_GROUP_ID", "recommender-monitor"))
    p.add_argument("--k", type=int, default=int(env("WORKER_MONITOR_K", "10")))
    p.add_argument(
        "--attribution-window-s",
        type=float,
        default=float(env("WORKER_ATTRIBUTION_WINDOW_S", "1800")),
    )
    p.add_argument("--window-s", type=float, default=float(env("WORKER_MONITOR_WINDOW_S", "60")))
    p.add_argument(
        "--allowed-lateness-s", type=float, default=float(env("WORKER_ALLOWED_LATENESS_S", "2"))
    )
    p.add_argument("--idle-partition-grace-s", type=float, default=5.0)
    p.add_argument(
        "--metrics-port", type=int, default=int(env("WORKER_MONITOR_METRICS_PORT", "9101"))
    )
    p.add_argument(
        "--exit-at-end",
        action="store_true",
        help="flush every window and exit once all partitions are read (batch mode)",
    )

    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("run", "monitor"):
        _exit_cleanly_on_sigterm_while_starting()  # as early as possible, before parsing
    args = build_parser().parse_args(argv)
    from worker.ops.logging import configure_logging

    log = configure_logging(component=args.command)
    try:
        return COMMANDS[args.command](args, log)
    except InfrastructureError as exc:
        log.error("fatal", error_class=type(exc).__name__, error=str(exc))
        return EXIT_INFRASTRUCTURE
    except WorkerError as exc:
        log.error("failed", error_class=type(exc).__name__, error=str(exc))
        return 1


def cmd_topics(args: argparse.Namespace, log: Any) -> int:
    from worker.kafka.admin import ensure_topics, wait_for_cluster

    kafka = _kafka(args)
    wait_for_cluster(kafka)
    created = ensure_topics(kafka, _topics(args), log)
    print("created: " + (", ".join(created) if created else "nothing (all topics exist)"))
    return 0


def cmd_simulate(args: argparse.Namespace, log: Any) -> int:
    from worker.apps import simulate

    settings = simulate.SimulatorSettings(
        n_products=args.products, n_categories=args.categories, n_users=args.users, seed=args.seed
    )
    if args.out:
        summary = simulate.write_history(args.out, settings, days=args.days)
        log.info("dataset_written", out=str(args.out), **summary)
        return 0
    from worker.kafka.admin import ensure_topics, wait_for_cluster

    kafka = _kafka(args)
    wait_for_cluster(kafka)
    topics = _topics(args)
    ensure_topics(kafka, topics, log)
    summary = simulate.produce_live(
        kafka,
        topics,
        settings,
        speedup=args.speedup,
        duration_s=args.duration_s,
        max_rate=args.max_rate,
        corrupt_every=args.corrupt_every,
        registry=_registry(args),
        log=log,
    )
    log.info(
        "simulator_done",
        events=summary.events,
        purchases=summary.purchases,
        corrupted=summary.corrupted,
        seconds=round(summary.seconds, 1),
    )
    return 0


def cmd_train(args: argparse.Namespace, log: Any) -> int:
    from worker.apps.train import TrainSettings, format_evaluation, train

    settings = TrainSettings(
        num_trees=args.trees,
        num_leaves=args.leaves,
        max_train_queries=args.max_queries,
        n_candidates=args.candidates,
        top_k=args.top_k,
        num_threads=args.threads,
    )
    path, metadata = train(args.dataset, args.models_dir, settings, log=log)
    print(f"model {metadata['version']} written to {path}")
    print(format_evaluation(metadata))
    log.info(
        "model_trained",
        version=metadata["version"],
        path=str(path),
        seconds=metadata["training_seconds"],
    )
    return 0


def _registry(args: argparse.Namespace) -> Any:
    if not args.schema_registry_url:
        return None
    from worker.wire.registry import HttpSchemaRegistry

    return HttpSchemaRegistry(args.schema_registry_url)


def _exit_cleanly_on_sigterm_while_starting() -> None:
    """Until the loop installs its graceful handler, SIGTERM just ends the process with 0:
    nothing was consumed yet, so there is nothing to drain or commit."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def cmd_run(args: argparse.Namespace, log: Any) -> int:
    _exit_cleanly_on_sigterm_while_starting()
    from worker.apps.serve import Worker
    from worker.core.features import FEATURE_NAMES
    from worker.kafka.admin import ensure_topics, wait_for_cluster
    from worker.model.artifact import load_artifact

    settings = WorkerSettings(
        kafka=_kafka(args),
        topics=_topics(args),
        group_id=args.group_id,
        models_dir=args.models_dir,
        top_k=args.top_k,
        n_candidates=args.candidates,
        max_batch_size=args.max_batch_size,
        max_batch_wait_ms=args.max_batch_wait_ms,
        max_event_bytes=args.max_event_bytes,
        max_sessions=args.max_sessions,
        session_idle_ttl_s=args.session_idle_ttl_s,
        fetch_buffer_mb=args.fetch_buffer_mb,
        produce_buffer_mb=args.produce_buffer_mb,
        shutdown_timeout_s=args.shutdown_timeout_s,
        metrics_port=args.metrics_port,
        schema_registry_url=args.schema_registry_url,
        exactly_once=args.exactly_once,
        scoring_backend=args.scoring_backend,
        transactional_id=args.transactional_id,
        state_changelog=args.state_changelog,
    )
    artifact = load_artifact(settings.models_dir, expected_features=FEATURE_NAMES)
    wait_for_cluster(settings.kafka)
    ensure_topics(settings.kafka, settings.topics, log)
    if settings.state_changelog:
        from worker.kafka.admin import partition_count
        from worker.kafka.changelog import changelog_topic, ensure_changelog

        ensure_changelog(
            settings.kafka,
            changelog_topic(settings.group_id),
            partition_count(settings.kafka, settings.topics.events),
            settings.topics.replication_factor,
            log,
        )
    return Worker(settings, artifact, log).run(max_idle_s=args.max_idle_s)


def cmd_monitor(args: argparse.Namespace, log: Any) -> int:
    _exit_cleanly_on_sigterm_while_starting()
    from worker.apps.monitor import Monitor
    from worker.kafka.admin import ensure_topics, wait_for_cluster

    settings = MonitorSettings(
        kafka=_kafka(args),
        topics=_topics(args),
        group_id=args.group_id,
        models_dir=args.models_dir,
        k=args.k,
        attribution_window_s=args.attribution_window_s,
        window_s=args.window_s,
        allowed_lateness_s=args.allowed_lateness_s,
        idle_partition_grace_s=args.idle_partition_grace_s,
        metrics_port=args.metrics_port,
        schema_registry_url=args.schema_registry_url,
        exit_at_end=args.exit_at_end,
    )
    wait_for_cluster(settings.kafka)
    ensure_topics(settings.kafka, settings.topics, log)
    return Monitor(settings, log).run()


COMMANDS = {
    "topics": cmd_topics,
    "simulate": cmd_simulate,
    "train": cmd_train,
    "run": cmd_run,
    "monitor": cmd_monitor,
}

if __name__ == "__main__":
    sys.exit(main())
