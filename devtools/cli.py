"""``worker-dev``: the development tooling of the repository, apart from the product.

Subcommands: ``kafka`` (local Apache Kafka without Docker), ``chaos`` (fault-injection harness),
``bench`` (benchmark with peers), ``demo`` (the whole system on the local broker for a minute),
``ready`` (a worker's seconds from start to ready and its memory, by catalogue size), ``calibrate``
(the simulator's baselines side by side with the DIGINETICA sample's), ``tradeoff`` (one
suggestion list for two targets: the model, a purchase-only booster and their blends against the
heuristics), ``schemas check`` (the schema compatibility gate: each schema against every
released version, backward and forward).
Installed from ``devtools/`` (``pip install -e devtools``); the production image has none of it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from devtools import calibrate, memory, ready, tradeoff
from devtools.bench import runner
from worker.cli import SettingsParser, run_command
from worker.config import BOOTSTRAP_SERVERS, LOGGING_SETTINGS, MODELS_DIR, Setting, as_path

#: The chaos harness's cluster: the product's declaration, but unset means "start our own".
CHAOS_BOOTSTRAP_SERVERS: Setting[str | None] = replace(
    BOOTSTRAP_SERVERS,
    default=None,
    help="an existing cluster (no broker restart scenario); default: own broker",
)
DEMO_DIR = Setting(
    "work_dir",
    "--work-dir",
    as_path,
    Path("var/demo"),
    env="WORKER_DEMO_DIR",
    help="where the demo keeps its dataset and logs",
)


def build_parser() -> SettingsParser:
    """The ``worker-dev`` command line; settings resolve as in ``worker`` (flag > env > default)."""
    parser = SettingsParser(prog="worker-dev", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "kafka",
        help="local Apache Kafka (no Docker): start|stop|status|wipe|classpath",
        add_help=False,
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)

    p = sub.add_parser("chaos", help="fault-injection harness: kills, broker restart, rebalances")
    p.add_argument(
        "--scenarios",
        default="kill9,broker,scale,sigterm,mixed,freeze,slow,soak",
        help="comma-separated subset of kill9,replace,killall,zombie,rebalancekill,broker,"
        "brokerkill,scale,sigterm,mixed,freeze,slow,soak",
    )
    p.add_argument("--modes", default="at-least-once,exactly-once")
    p.add_argument("--events", type=int, default=200_000, help="input events per scenario")
    p.add_argument(
        "--rate",
        type=float,
        default=2000.0,
        help="input events/s while faults are injected (a scenario lasts at least events/rate)",
    )
    p.add_argument(
        "--fault-s",
        type=float,
        default=30.0,
        help="how long the broker stays frozen (freeze) or the output throttled (slow)",
    )
    p.add_argument("--work-dir", type=Path, default=Path("var/chaos"))
    p.add_settings(CHAOS_BOOTSTRAP_SERVERS, MODELS_DIR)

    p = sub.add_parser("bench", help="throughput, latency and memory, side by side with peers")
    runner.add_arguments(p)

    p = sub.add_parser("demo", help="the whole system on the local broker for about a minute")
    p.add_argument(
        "--duration-s", type=float, default=None, help="simulated traffic (60 s; --lifecycle 180 s)"
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--lifecycle",
        action="store_true",
        help="the model lifecycle: the shop shifts, v2 is trained on the topics, goes live as a "
        "50 %% challenger by hot reload and is promoted, with per-version figures",
    )
    p.add_argument("--rate", type=float, default=1000.0, help="offered events/s (approximate)")
    p.add_settings(DEMO_DIR, MODELS_DIR)

    p = sub.add_parser(
        "ready",
        help="seconds from a worker's start to ready and its memory, by catalogue size, "
        "with a precompiled model and without",
    )
    ready.add_arguments(p)

    p = sub.add_parser(
        "memory",
        help="a real worker's memory with N users in session state, and while a fresh worker "
        "restores them from the changelog after a kill -9",
    )
    memory.add_arguments(p)

    p = sub.add_parser(
        "calibrate",
        help="the heuristics' HR@10 on simulated data side by side with DIGINETICA's; "
        "exit 1 if a figure is out of band",
    )
    calibrate.add_arguments(p)

    p = sub.add_parser(
        "tradeoff",
        help="one list for two targets: the model, a purchase-only booster, their blends and "
        "the heuristics on a dataset's held-out slice, against the 10 %% bar",
    )
    tradeoff.add_arguments(p)

    p = sub.add_parser(
        "schemas",
        help="check: each schema is backward and forward compatible with every released version "
        "(schemas/history/); prints each refused pair and why, exit 1 if any",
    )
    p.add_argument("action", choices=["check"])
    p.add_argument(
        "--schemas-dir",
        type=Path,
        default=None,
        help="the schemas and their history/ (default: this checkout's schemas/)",
    )

    for name, command in sub.choices.items():
        if name != "kafka":  # the launcher parses its own arguments
            command.add_settings(*LOGGING_SETTINGS)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "kafka":
        from devtools import localkafka

        return localkafka.main(argv[1:])
    return run_command(build_parser().parse_args(argv), COMMANDS)


def cmd_chaos(args: argparse.Namespace, log: Any) -> int:
    from devtools.chaos import format_memory, format_table, run_chaos

    results = run_chaos(
        scenarios=args.scenarios.split(","),
        modes=args.modes.split(","),
        n_events=args.events,
        rate=args.rate,
        fault_s=args.fault_s,
        models_dir=args.models_dir,
        work_dir=args.work_dir,
        bootstrap=args.bootstrap_servers,
        log=lambda line: print(line, flush=True),
    )
    print()
    print(format_table(results))
    memory = format_memory(results)
    if memory:
        print()
        print("worker memory (MiB; largest worker process)")
        print(memory)
    return 0 if all(r.passed for r in results) else 1


def cmd_bench(args: argparse.Namespace, log: Any) -> int:
    return runner.run(args, log)


def cmd_demo(args: argparse.Namespace, log: Any) -> int:
    from devtools.demo import run_demo

    if args.duration_s is None:
        args.duration_s = 180.0 if args.lifecycle else 60.0
    return run_demo(args, log)


def cmd_ready(args: argparse.Namespace, log: Any) -> int:
    return ready.run(args, log)


def cmd_memory(args: argparse.Namespace, log: Any) -> int:
    return memory.run(args, log)


def cmd_calibrate(args: argparse.Namespace, log: Any) -> int:
    return calibrate.run(args, log)


def cmd_tradeoff(args: argparse.Namespace, log: Any) -> int:
    return tradeoff.run(args, log)


def cmd_schemas(args: argparse.Namespace, log: Any) -> int:
    from devtools import schema_compat  # imports avro (the `dev` extra) only for this command

    return schema_compat.run(args.schemas_dir or schema_compat.SCHEMAS_DIR)


COMMANDS = {
    "chaos": cmd_chaos,
    "bench": cmd_bench,
    "demo": cmd_demo,
    "ready": cmd_ready,
    "memory": cmd_memory,
    "calibrate": cmd_calibrate,
    "tradeoff": cmd_tradeoff,
    "schemas": cmd_schemas,
}

if __name__ == "__main__":
    sys.exit(main())
