"""``worker`` command line: one settings object per command, CLI flag > environment > default.

Subcommands: ``topics``, ``simulate``, ``train``, ``dataset import`` (real clickstream files as a
dataset), ``dataset export`` (the topics' records of a window as a dataset), ``models`` (the model
registry: list, show, history, compare, challenger, promote, rollback), ``retrain`` (export,
train, gate, publish as challenger), ``run`` (the worker), ``monitor``, ``compile`` (the served
model compiled with lleaves into its artifact's cache, for workers of this platform), ``schemas``
(the record schemas and, with ``--fingerprints``, their single-object fingerprints), ``report``
(a PNG of the dashboard's main panels from the accuracy topic and, given one, Prometheus).
The development tooling (local broker, chaos harness, benchmark, demo) is ``worker-dev``
(:mod:`devtools.cli`), which production does not install.

The flags of settings are built from their declarations in :mod:`worker.config`
(:class:`SettingsParser`); a bad value, from a flag or the environment, ends the command with
exit code 2 and one line: ``worker run: error: --top-k / WORKER_TOP_K: 'abc' is not an integer``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.config import (
    BOOTSTRAP_SERVERS,
    EXPORT_SETTINGS,
    LOGGING_SETTINGS,
    MODELS_DIR,
    REPORT_SETTINGS,
    SCHEMA_REGISTRY_SETTINGS,
    SIMULATE_SETTINGS,
    TRAIN_SETTINGS,
    AtMost,
    KafkaSettings,
    MonitorSettings,
    OneOf,
    Setting,
    SettingError,
    TopicSettings,
    WorkerSettings,
    as_float,
    as_instant,
    declared,
    kafka_properties,
    non_negative,
    rules_of,
    settings_from,
)
from worker.core.errors import ConfigError, InfrastructureError, WorkerError

if TYPE_CHECKING:  # the apps are imported by the command that runs, not to parse the line
    from worker.apps.simulate import SimulatorSettings
    from worker.apps.train import TrainSettings

EXIT_INFRASTRUCTURE = 2
#: A subcommand: parsed arguments and a bound logger in, exit code out.
Command = Callable[[argparse.Namespace, Any], int]
#: Exit code of a bad setting or argument (argparse's own).
EXIT_USAGE = 2

#: ``worker run`` only: not a setting of the worker, an end condition for batch jobs and tests.
MAX_IDLE_S: Setting[float | None] = Setting(
    "max_idle_s",
    "--max-idle-s",
    as_float,
    None,
    help="exit after this long without input (batch jobs and tests)",
    check=non_negative,
)


class SettingsParser(argparse.ArgumentParser):
    """An argument parser that resolves declared settings (flag > environment > default).

    A declared setting's flag stores its text (None when absent); once the command line is
    parsed, each declared setting of this (sub)parser becomes its typed, checked value, and the
    rules between them are checked. Only the running subcommand's parser resolves, so a bad
    variable that another subcommand reads does not matter, and ``--help`` always works. A
    problem ends the program with exit code 2 and one line, ``<prog>: error: <flag> / <ENV>:
    <problem>``, without the usage text, whether the value came from a flag or the environment.
    Subparsers are of this class too (argparse creates them with the parent's class).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.declarations: dict[str, Setting[Any]] = {}
        self.rules: list[AtMost] = []

    def add_settings(self, *settings: Setting[Any], group: Any = None) -> None:
        """Add the flags of declared settings (to ``group``, an argument group, if given).

        A declaration added before is skipped: commands share some (``--models-dir``).

        Raises:
            ValueError: another declaration of the same name is already here.
        """
        for setting in settings:
            known = self.declarations.get(setting.name)
            if known is setting:
                continue
            if known is not None:
                raise ValueError(f"{self.prog}: two settings named {setting.name}")
            _add_flag(self if group is None else group, setting)
            self.declarations[setting.name] = setting

    def add_settings_of(self, settings_class: Any, group: Any = None) -> None:
        """Add the flags of a settings dataclass's declared fields, and its rules."""
        self.add_settings(*declared(settings_class), group=group)
        self.rules.extend(rules_of(settings_class))

    def parse_known_args(
        self, args: Iterable[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        """Parse, then resolve and check this parser's declared settings in the namespace.

        Exits with 2 and one line on stderr when a value is unusable (argparse's way).
        """
        parsed, extras = super().parse_known_args(args, namespace)
        try:
            self._resolve(parsed)
        except SettingError as exc:
            self.exit(EXIT_USAGE, f"{self.prog}: error: {exc}\n")
        return parsed, extras

    def _resolve(self, parsed: argparse.Namespace) -> None:
        """Replace each declared setting's raw flag value by its value; check the rules.

        Raises:
            SettingError: a value is unusable or a rule is broken.
        """
        for name, setting in self.declarations.items():
            setattr(parsed, name, setting.resolve(getattr(parsed, name)))
        for rule in self.rules:
            rule.verify(vars(parsed))


def _add_flag(container: Any, setting: Setting[Any]) -> None:
    """The flag of one declared setting; it stores the raw text (or a switch's bool) or None.

    Conversion and checks happen later (:meth:`SettingsParser._resolve`), so that a bad flag
    value and a bad environment value give the same one-line error.
    """
    if setting.is_switch:
        action: Any = argparse.BooleanOptionalAction if setting.negatable else "store_true"
        container.add_argument(
            setting.flag, dest=setting.name, action=action, default=None, help=_help(setting)
        )
        return
    metavar = setting.flag.lstrip("-").upper().replace("-", "_")
    if isinstance(setting.parse, OneOf):
        metavar = "{" + ",".join(setting.parse.options) + "}"
    container.add_argument(
        setting.flag, dest=setting.name, default=None, metavar=metavar, help=_help(setting)
    )


def _help(setting: Setting[Any]) -> str:
    """The help line: what the setting does, then its environment variable and default."""
    where = [f"env {setting.env}"] if setting.env else []
    if setting.default is not None:
        where.append(f"default {_plain(setting.default)}")
    text = f"{setting.help} ({'; '.join(where)})".strip() if where else setting.help
    return text.replace("%", "%%")  # argparse %-formats help


def _plain(value: object) -> str:
    """A default as the help shows it: 3600 rather than 3600.0, false rather than False."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _add_kafka_args(p: SettingsParser) -> None:
    """The cluster, the pass-through properties, the schema registry and the topics."""
    g = p.add_argument_group("kafka")
    p.add_settings(BOOTSTRAP_SERVERS, group=g)
    g.add_argument(
        "-X",
        dest="kafka_props",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="librdkafka property passed through (repeatable; VALUE @file reads a file); "
        "also env WORKER_KAFKA_<KEY> with _ for .",
    )
    p.add_settings(*SCHEMA_REGISTRY_SETTINGS, group=g)
    p.add_settings_of(TopicSettings, group=g)


def _kafka(args: argparse.Namespace) -> KafkaSettings:
    """The cluster settings, with the pass-through properties (environment, then ``-X``).

    Raises:
        ConfigError: a malformed ``-X`` pair or an unreadable ``@file``.
    """
    return settings_from(KafkaSettings, vars(args), properties=kafka_properties(args.kafka_props))


def _topics(args: argparse.Namespace) -> TopicSettings:
    """The topic settings from the parsed command line."""
    return settings_from(TopicSettings, vars(args))


def _models_arg(p: SettingsParser) -> None:
    """``--models-dir`` / ``WORKER_MODELS_DIR``."""
    p.add_settings(MODELS_DIR)


def build_parser() -> SettingsParser:
    """The ``worker`` command line; see :class:`SettingsParser` for how settings resolve."""
    parser = SettingsParser(prog="worker", description=__doc__.splitlines()[0])
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
    p.add_settings(*SIMULATE_SETTINGS)

    p = sub.add_parser("train", help="train and evaluate a LightGBM ranker; write an artifact")
    p.add_argument(
        "--dataset", type=Path, required=True, help="directory from `worker simulate --out`"
    )
    _models_arg(p)
    p.add_settings(*TRAIN_SETTINGS)

    _add_dataset_parser(sub)
    _add_models_parser(sub)

    p = sub.add_parser(
        "retrain",
        help="export the last days from the topics, train, gate against the champion, publish "
        "as challenger when not worse",
        description="worker retrain: the scheduled retraining run (README, Model lifecycle). "
        "Exports [until - days, until) from the topics, trains a candidate blind to the later "
        "20 %, scores it and the champion on that slice, and when the candidate's HR@10 is "
        "not below the champion's by more than --margin on both targets, refits on the whole "
        "export and serves it as challenger to --share of the users. Every run writes a "
        "report into <models>/reports/.",
    )
    _models_arg(p)
    _add_kafka_args(p)
    p.add_argument("--days", type=float, default=7.0, help="days of traffic to train on (7)")
    p.add_argument(
        "--until", dest="until_ms", type=as_instant, default=None, help="window end (default now)"
    )
    p.add_argument("--margin", type=float, default=0.01, help="HR@10 the candidate may lose (0.01)")
    p.add_argument("--share", type=float, default=0.2, help="challenger's share of users (0.2)")
    p.add_argument("--threads", type=int, default=2, help="LightGBM threads (2)")
    p.add_argument(
        "--work-dir", type=Path, default=None, help="exports and candidates (<models>/.retrain)"
    )
    p.add_settings(*EXPORT_SETTINGS[2:])  # --grace-s, --max-wait-s, --progress-s

    p = sub.add_parser("run", help="the streaming inference worker")
    _add_kafka_args(p)
    _models_arg(p)
    p.add_settings_of(WorkerSettings)
    p.add_settings(MAX_IDLE_S)

    p = sub.add_parser("monitor", help="rolling accuracy of suggestions against purchases")
    _add_kafka_args(p)
    _models_arg(p)
    p.add_settings_of(MonitorSettings)

    p = sub.add_parser(
        "compile",
        help="compile the served model with lleaves into its artifact's cache, so that workers "
        "of this platform (CPU family) load it at start instead of compiling it",
    )
    _models_arg(p)

    p = sub.add_parser(
        "report",
        help="a PNG of the dashboard's main panels, for people without Grafana",
        description="worker report --since T [--until T (default now)] --output report.png "
        "[--prometheus-url URL]: the accuracy panels (hit rate per window against the "
        "baselines and per model version, discovery hit rate, purchase lines attributed, "
        "challenger minus champion) from the accuracy topic's reports of windows starting in "
        "[since, until); with --prometheus-url, the runtime panels (throughput, lag, batch "
        "size, latency, stage times, dead letters, sessions, memory, replicas, input drift) "
        "as range queries over the same period. Needs the 'report' extra (matplotlib).",
    )
    _add_kafka_args(p)
    p.add_settings(*REPORT_SETTINGS)

    p = sub.add_parser(
        "schemas",
        help="the record schemas: full names and, with --fingerprints, the CRC-64-AVRO "
        "fingerprints that single-object encoding writes",
    )
    p.add_argument(
        "--fingerprints",
        action="store_true",
        help="print each schema's CRC-64-AVRO fingerprint of its Parsing Canonical Form (hex in "
        "wire byte order, little-endian, and as a signed 64-bit integer)",
    )
    p.add_argument(
        "--canonical", action="store_true", help="print each schema's Parsing Canonical Form too"
    )

    for command in sub.choices.values():
        command.add_settings(*LOGGING_SETTINGS)
    return parser


def _add_models_parser(sub: Any) -> None:
    """``worker models``: the registry of a models directory (README, Model lifecycle)."""
    parent = sub.add_parser(
        "models",
        help="the model registry: list, show, history, compare two versions, set a challenger, "
        "promote, roll back",
    )
    actions = parent.add_subparsers(dest="action", required=True)
    p = actions.add_parser("list", help="every version with its role, parent, window and HR@K")
    _models_arg(p)
    p = actions.add_parser("show", help="one version: hash, parent, window, metrics, changes")
    _models_arg(p)
    p.add_argument("version")
    p = actions.add_parser("history", help="every change of what serves: who, when, why")
    _models_arg(p)
    p = actions.add_parser(
        "compare",
        help="two versions and the heuristic baselines on the same slice of a dataset",
        description="worker models compare A B --dataset DIR: replay DIR's events through both "
        "versions' serving pipelines and score the events from --since (default: after both "
        "versions' training windows), beside the baselines fit on the events before it.",
    )
    _models_arg(p)
    p.add_argument("version_a")
    p.add_argument("version_b")
    p.add_argument("--dataset", type=Path, required=True, help="dataset directory")
    p.add_argument(
        "--since", type=as_instant, default=None, help="slice start (ISO 8601 UTC or epoch ms)"
    )
    for name, text in (
        ("challenger", "serve VERSION to --share of the users (or --end the experiment)"),
        ("promote", "make VERSION (default: the challenger) the champion of every user"),
        ("rollback", "undo the latest promote or publish: the serving state before it, exactly"),
    ):
        p = actions.add_parser(name, help=text)
        _models_arg(p)
        if name != "rollback":
            p.add_argument("version", nargs="?", default=None)
        if name == "challenger":
            p.add_argument("--share", type=float, default=None, help="share of users, 0 .. 1")
            p.add_argument("--end", action="store_true", help="end the experiment")
        p.add_argument("--why", default="", help="recorded in the history")
        p.add_argument("--by", default=None, help="recorded in the history (default: $USER)")
    for command in actions.choices.values():
        command.add_settings(*LOGGING_SETTINGS)


def _add_dataset_parser(sub: Any) -> None:
    """``worker dataset import``: real clickstream files into a dataset directory;
    ``worker dataset export``: the topics' records of an event-time window into one."""
    parent = sub.add_parser(
        "dataset",
        help="import real clickstream files (DIGINETICA, RetailRocket, CSV), or export the "
        "topics' records of an event-time window, as a dataset directory",
    )
    actions = parent.add_subparsers(dest="action", required=True)
    p = actions.add_parser(
        "export",
        help="the browsing events and purchases of an event-time window, from the topics",
        description="worker dataset export --out DIR --since T --until T: the browsing events "
        "and purchases of that event-time window, read from the topics (read_committed, start "
        "offsets by timestamp, nothing committed), written as a dataset directory for `worker "
        "train --dataset`; dataset.json records the topics, partitions and offsets read "
        "(README, section Training data from the topics).",
    )
    p.add_argument("--out", type=Path, required=True, help="dataset directory to write (new)")
    p.add_settings(*EXPORT_SETTINGS)
    _add_kafka_args(p)
    p.add_settings(*LOGGING_SETTINGS)

    p = actions.add_parser(
        "import",
        help="real clickstream files (DIGINETICA, RetailRocket, CSV) as a dataset directory",
        description="worker dataset import --format FORMAT --out DIR INPUT...: map a real "
        "clickstream to a dataset directory for `worker train --dataset`. Input kinds are told "
        "apart by their header. Parquet input would need pyarrow, which is not installed: "
        "convert Parquet to CSV first.",
    )
    p.add_settings(*LOGGING_SETTINGS)
    p.add_argument(
        "--format",
        required=True,
        choices=["diginetica", "retailrocket", "csv"],
        help="input layout (README, section Importing real clickstreams)",
    )
    p.add_argument("--out", type=Path, required=True, help="dataset directory to write")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="input files")
    p.add_argument(
        "--session-gap-min",
        type=float,
        default=None,
        help="retailrocket, csv without --session-col: a new session after more than this many "
        "minutes of a user's inactivity (default 30)",
    )
    g = p.add_argument_group("csv format (a JSON --mapping file may hold the same names)")
    g.add_argument("--mapping", type=Path, help="JSON object of the options below (flags win)")
    for name, text in (
        ("time-col", "event time column"),
        ("time-format", "epoch_ms (default), epoch_s, iso8601 or a strptime pattern"),
        ("type-col", "event type column (absent: every row is a view)"),
        ("view-values", "comma-separated type values of views (default view)"),
        ("cart-values", "... of add-to-cart (default addtocart,add_to_cart,cart)"),
        (
            "remove-values",
            "... of remove-from-cart (default removefromcart,remove_from_cart,remove)",
        ),
        ("purchase-values", "... of purchases (default purchase,transaction)"),
        ("product-col", "product id column"),
        ("category-col", "category column (optional)"),
        ("price-col", "price column (optional)"),
        ("user-col", "user id column (NA/empty: anonymous, the session stands for the user)"),
        ("session-col", "session id column (optional; else sessions are cut by inactivity)"),
        ("order-col", "order id column of purchases (optional; else <user>/<session>/<time>)"),
        ("quantity-col", "quantity column of purchases (optional; else 1)"),
        ("delimiter", "field delimiter (default ,)"),
    ):
        g.add_argument(f"--{name}", default=None, help=text.replace("%", "%%"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("run", "monitor"):
        _exit_cleanly_on_sigterm_while_starting()  # as early as possible, before parsing
    return run_command(build_parser().parse_args(argv), COMMANDS)


def run_command(args: argparse.Namespace, commands: Mapping[str, Command]) -> int:
    """Configure logging from the parsed settings and run the chosen command; its exit code.

    An infrastructure error (broker, model, configuration) is one ``fatal`` log line and exit
    code 2; any other project error one ``failed`` line and exit code 1.
    """
    from worker.ops.logging import configure_logging

    log = configure_logging(level=args.log_level, fmt=args.log_format, component=args.command)
    try:
        return commands[args.command](args, log)
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

    settings = simulator_settings(args)
    if args.out:
        written = simulate.write_history(args.out, settings, days=args.days)
        log.info("dataset_written", out=str(args.out), **written)
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
    from worker.apps.train import format_data, format_evaluation, train

    settings = train_settings(args)
    path, metadata = train(args.dataset, args.models_dir, settings, log=log)
    print(f"model {metadata['version']} written to {path}")
    print(format_data(metadata))
    print(format_evaluation(metadata))
    log.info(
        "model_trained",
        version=metadata["version"],
        path=str(path),
        seconds=metadata["training_seconds"],
    )
    return 0


def cmd_dataset(args: argparse.Namespace, log: Any) -> int:
    """``worker dataset import``: write the dataset, print a one-paragraph summary.
    ``worker dataset export``: see :func:`cmd_dataset_export`."""
    if args.action == "export":
        return cmd_dataset_export(args, log)
    from worker.apps import importers

    gap_min = 30.0 if args.session_gap_min is None else args.session_gap_min
    mapping = None
    if args.format == "csv":
        mapping = importers.CsvMapping.build(args.mapping, vars(args))
        gap_min = mapping.session_gap_min
    elif args.mapping is not None:
        raise importers.ImportInputError("--mapping is for --format csv only")
    if not gap_min > 0:
        raise importers.ImportInputError(f"--session-gap-min {gap_min:g}: not positive")
    result = importers.import_dataset(
        args.format,
        args.inputs,
        args.out,
        session_gap_ms=round(gap_min * 60_000),
        mapping=mapping,
    )
    print(importers.format_summary(result))
    log.info("dataset_imported", out=str(args.out), format=args.format)
    return 0


def cmd_dataset_export(args: argparse.Namespace, log: Any) -> int:
    """``worker dataset export``: the window's records from the topics into ``--out``; print the
    summary (counts, rate, skips by reason, offset ranges per partition)."""
    from worker.apps import export
    from worker.core.errors import ConfigError

    if args.since_ms is None or args.until_ms is None:
        raise ConfigError("dataset export: --since and --until are required")
    result = _export_window(args, args.out, args.since_ms, args.until_ms, log)
    print(export.format_summary(result))
    return 0


def _export_window(
    args: argparse.Namespace, out: Path, since_ms: int, until_ms: int, log: Any
) -> Any:
    """Export ``[since_ms, until_ms)`` of the topics the parsed arguments name into ``out``
    (``worker dataset export`` and ``worker retrain``); the :class:`ExportResult`."""
    from worker.apps import export
    from worker.core.errors import ConfigError
    from worker.kafka.admin import partition_count, wait_for_cluster
    from worker.kafka.clients import make_consumer
    from worker.wire.codec import codec_for

    try:
        window = export.Window(since_ms, until_ms, round(args.grace_s * 1000))
    except ValueError as exc:
        raise ConfigError(f"dataset export: {exc}") from None
    kafka, topics, registry = _kafka(args), _topics(args), _registry(args)
    wait_for_cluster(kafka)
    partitions = {t: partition_count(kafka, t) for t in (topics.events, topics.purchases)}
    consumer = make_consumer(
        kafka, "recommender-export", log, auto_commit=False, **{"enable.partition.eof": True}
    )
    try:
        job = export.Export(
            consumer,
            {
                topics.events: ("event", codec_for("BrowsingEvent", registry=registry)),
                topics.purchases: ("purchase", codec_for("PurchaseOutcome", registry=registry)),
            },
            window,
            log=log,
            progress_every_s=args.progress_s,
            max_wait_s=args.max_wait_s,
        )
        result = export.export_dataset(
            job, partitions, out, bootstrap_servers=kafka.bootstrap_servers
        )
    finally:
        consumer.close()
    source = result.meta["source"]
    log.info(
        "dataset_exported",
        out=str(out),
        read=source["read"],
        written=source["written"],
        skipped=source["skipped"],
        seconds=round(result.seconds, 1),
        complete=source["complete"],
    )
    return result


def cmd_retrain(args: argparse.Namespace, log: Any) -> int:
    """``worker retrain``: export the last ``--days``, train, gate against the champion, publish
    the refit model as challenger when it passes (:mod:`worker.apps.retrain`)."""
    import time as _time

    from worker.apps import retrain
    from worker.apps.train import TrainSettings

    until_ms = args.until_ms if args.until_ms is not None else int(_time.time() * 1000)
    since_ms = until_ms - round(args.days * 86_400_000)
    try:
        settings = retrain.RetrainSettings(
            days=args.days,
            margin=args.margin,
            share=args.share,
            train=TrainSettings(num_threads=args.threads),
        )
    except ValueError as exc:
        raise ConfigError(f"retrain: {exc}") from None

    def export(out: Path) -> dict[str, Any]:
        result = _export_window(args, out, since_ms, until_ms, log)
        return dict(result.meta["source"])

    work_dir = args.work_dir or args.models_dir / ".retrain"
    report = retrain.retrain(args.models_dir, work_dir, export, settings, log=log)
    print(retrain.format_report(report))
    return 0


def _registry(args: argparse.Namespace) -> Any:
    from worker.kafka.schema_registry import open_schema_registry

    return open_schema_registry(args)


def _exit_cleanly_on_sigterm_while_starting() -> None:
    """Until the loop installs its graceful handler, SIGTERM just ends the process with 0:
    nothing was consumed yet, so there is nothing to drain or commit."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def worker_settings(args: argparse.Namespace) -> WorkerSettings:
    """The worker's settings from the parsed ``worker run`` command line.

    Raises:
        ConfigError: an unreadable ``@file`` or malformed ``-X`` pair; a bad value (the
            parser already reported those).
    """
    return settings_from(WorkerSettings, vars(args), kafka=_kafka(args), topics=_topics(args))


def monitor_settings(args: argparse.Namespace) -> MonitorSettings:
    """The monitor's settings from the parsed ``worker monitor`` command line.

    Raises:
        ConfigError: as for :func:`worker_settings`.
    """
    return settings_from(MonitorSettings, vars(args), kafka=_kafka(args), topics=_topics(args))


def train_settings(args: argparse.Namespace) -> TrainSettings:
    """The training settings from the parsed ``worker train`` command line."""
    from worker.apps.train import TrainSettings

    return settings_from(TrainSettings, vars(args))


def simulator_settings(args: argparse.Namespace) -> SimulatorSettings:
    """The generator's settings from the parsed ``worker simulate`` command line (the other
    flags, ``--days`` and the pacing, are arguments of write_history and produce_live)."""
    from worker.apps.simulate import SimulatorSettings

    return settings_from(SimulatorSettings, vars(args))


def cmd_run(args: argparse.Namespace, log: Any) -> int:
    _exit_cleanly_on_sigterm_while_starting()
    from worker.apps.serve import Worker
    from worker.core.features import FEATURE_NAMES
    from worker.kafka.admin import ensure_topics, wait_for_cluster
    from worker.model.artifact import load_artifact

    settings = worker_settings(args)
    # A pinned version is served to everyone (LATEST and CHALLENGER ignored, no polling);
    # otherwise LATEST's champion, and the challenger the worker loads itself before serving.
    where = settings.models_dir
    if settings.model_version is not None:
        where = settings.models_dir / settings.model_version
    artifact = load_artifact(where, expected_features=FEATURE_NAMES)
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

    settings = monitor_settings(args)
    wait_for_cluster(settings.kafka)
    ensure_topics(settings.kafka, settings.topics, log)
    return Monitor(settings, log).run()


def cmd_report(args: argparse.Namespace, log: Any) -> int:
    """``worker report``: query Prometheus (when given) and read the period's accuracy reports,
    write the PNG, print the summary lines. The cheap failures come first: matplotlib missing,
    then Prometheus unreachable or refusing a query, before the topic is read."""
    import time as _time

    from worker.apps import report
    from worker.apps.monitor import report_codec
    from worker.kafka.admin import partition_count, wait_for_cluster
    from worker.kafka.clients import make_consumer

    report.require_matplotlib()
    if args.since_ms is None:
        raise ConfigError("report: --since is required")
    until_ms = args.until_ms if args.until_ms is not None else int(_time.time() * 1000)
    if until_ms <= args.since_ms:
        raise ConfigError("report: --until is not after --since")
    runtime, source = None, ""
    if args.prometheus_url:
        from worker.ops.prometheus import PrometheusClient

        prometheus = PrometheusClient(args.prometheus_url)
        source = prometheus.shown_url
        runtime = report.runtime_panels(
            prometheus,
            args.since_ms,
            until_ms,
            args.prometheus_selector or "",
            scrape_interval_s=args.scrape_interval_s,
        )
    kafka, topics = _kafka(args), _topics(args)
    wait_for_cluster(kafka)
    consumer = make_consumer(
        kafka, "recommender-report", log, auto_commit=False, **{"enable.partition.eof": True}
    )
    try:
        read = report.read_accuracy(
            consumer,
            topics.accuracy,
            partition_count(kafka, topics.accuracy),
            report_codec(_registry(args), topics.accuracy),
            args.since_ms,
            until_ms,
            log=log,
            max_wait_s=args.max_wait_s,
        )
    finally:
        consumer.close()
    built = report.build_report(read, runtime, source=source)
    width, height = report.write_png(built, args.output)
    print(f"wrote {args.output} ({width}x{height} px)")
    for line in built.summary:
        print(line)
    log.info(
        "report_written",
        output=str(args.output),
        windows=len(read.windows.windows()),
        records=read.windows.records,
        undecodable=sum(read.windows.undecodable.values()),
        runtime_panels=len(built.runtime),
        seconds=round(read.seconds, 1),
    )
    return 0


def cmd_compile(args: argparse.Namespace, log: Any) -> int:
    """Precompile the artifact ``--models-dir`` serves (its LATEST, or the artifact itself); print
    the compiled object's path. Without lleaves there is nothing to compile: exit 0 all the same
    (workers without it score with LightGBM); a failed compile exits 1."""
    from worker.model.artifact import resolve_artifact_dir
    from worker.model.scoring import lleaves_available, precompile

    artifact_dir = resolve_artifact_dir(args.models_dir)
    if not lleaves_available():
        print(
            f"nothing compiled for {artifact_dir}: lleaves is not installed (the 'fast' extra); "
            "workers without it score with LightGBM"
        )
        return 0
    path = precompile(artifact_dir, log=log)
    if path is None:
        print(f"compiling {artifact_dir} failed (see the log)", file=sys.stderr)
        return 1
    print(path)
    return 0


def cmd_schemas(args: argparse.Namespace, log: Any) -> int:
    """The package's record schemas; with ``--fingerprints`` (and ``--canonical``) what a producer
    in another language must compute for single-object encoding. Pure: no Kafka."""
    from worker.wire.fingerprints import render, schema_fingerprints

    fingerprints = schema_fingerprints()
    if args.fingerprints or args.canonical:
        print(render(fingerprints, canonical=args.canonical), end="")
    else:
        for fp in fingerprints:
            print(f"{fp.full_name}\tschemas/{fp.file}")
    return 0


def cmd_models(args: argparse.Namespace, log: Any) -> int:
    """``worker models ...``: print what the action shows or did."""
    from worker.apps import models
    from worker.model import registry

    root: Path = args.models_dir
    action = args.action
    try:
        if action == "list":
            print(models.format_list(root))
        elif action == "show":
            print(models.format_show(root, args.version))
        elif action == "history":
            print(models.format_history(root))
        elif action == "compare":
            result = models.compare(
                root, args.version_a, args.version_b, args.dataset, since_ms=args.since
            )
            print(models.format_comparison(result))
        elif action == "challenger":
            if args.end == (args.version is not None):
                raise registry.RegistryError("challenger: name a VERSION with --share, or --end")
            if args.version is not None and args.share is None:
                raise registry.RegistryError("challenger: --share is required with a VERSION")
            state = registry.set_challenger(
                root, args.version, args.share or 0.0, by=args.by, why=args.why
            )
            print(_state_line(state))
        elif action == "promote":
            print(_state_line(registry.promote(root, args.version, by=args.by, why=args.why)))
        else:
            print(_state_line(registry.rollback(root, by=args.by, why=args.why)))
    except registry.RegistryError as exc:
        raise ConfigError(f"models {action}: {exc}") from None
    if action in ("challenger", "promote", "rollback"):
        log.info("serving_changed", action=action, **registry.serving_state(root).as_dict())
    return 0


def _state_line(state: Any) -> str:
    line = f"champion {state.champion}"
    if state.challenger:
        line += f"; challenger {state.challenger} for {state.share:.0%} of users"
    return line


COMMANDS = {
    "topics": cmd_topics,
    "simulate": cmd_simulate,
    "train": cmd_train,
    "dataset": cmd_dataset,
    "models": cmd_models,
    "retrain": cmd_retrain,
    "run": cmd_run,
    "monitor": cmd_monitor,
    "compile": cmd_compile,
    "schemas": cmd_schemas,
    "report": cmd_report,
}

if __name__ == "__main__":
    sys.exit(main())
