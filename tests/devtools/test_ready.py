"""``worker-dev ready``: its arguments, what it reads from a worker, and its tables (pure parts;
the measurement itself starts a broker and workers, and is run by hand)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from devtools import cli as dev
from devtools import ready
from devtools.ready import SizeResult, Start
from worker.config import TRAIN_LEAVES, TRAIN_TREES


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "WORKER_LOG_LEVEL", "WORKER_LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)


def test_sizes_accept_commas_thousands_and_underscores() -> None:
    assert ready.parse_sizes("5000,50k, 200_000") == [5000, 50_000, 200_000]
    assert ready.parse_sizes("7") == [7]
    for bad in ("", "5000,,", "abc", "0", "-5", "1.5k"):
        with pytest.raises(argparse.ArgumentTypeError):
            ready.parse_sizes(bad)


def test_modes_run_in_a_fixed_order_and_unknown_ones_are_refused() -> None:
    assert ready.parse_modes("fresh,precompiled") == ["precompiled", "fresh"]
    assert ready.parse_modes("fresh, lightgbm") == ["lightgbm", "fresh"]
    for bad in ("", "warm", "fresh,cold"):
        with pytest.raises(argparse.ArgumentTypeError):
            ready.parse_modes(bad)


def test_worker_dev_ready_arguments() -> None:
    args = dev.build_parser().parse_args(["ready"])
    assert args.command == "ready" and dev.COMMANDS["ready"] is dev.cmd_ready
    assert args.products == [5000, 50_000, 200_000]
    assert args.modes == ["lightgbm", "precompiled", "fresh"]
    # worker train's model, so the compile costs what a served model's does
    assert (args.trees, args.leaves) == (TRAIN_TREES.default, TRAIN_LEAVES.default)
    assert args.bootstrap_servers is None  # a broker of its own
    assert args.work_dir == Path("var/ready")
    args = dev.build_parser().parse_args(
        ["ready", "--products", "1k,2k", "--modes", "fresh", "--bootstrap-servers", "b:9092"]
    )
    assert (args.products, args.modes, args.bootstrap_servers) == (
        [1000, 2000],
        ["fresh"],
        "b:9092",
    )


def test_bad_sizes_end_the_command_with_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        dev.build_parser().parse_args(["ready", "--products", "many"])
    assert exited.value.code == 2
    assert "'many' is not a number" in capsys.readouterr().err


def test_memory_is_read_from_proc_status() -> None:
    status = "Name:\tpython\nVmPeak:\t 900000 kB\nVmHWM:\t  524288 kB\nVmRSS:\t  314572 kB\n"
    assert ready.proc_memory_mib(status) == (307.2, 512.0)
    assert ready.proc_memory_mib("") == (None, None)


def test_the_scoring_backend_line_is_found_among_the_workers_log_lines() -> None:
    record = {
        "event": "scoring_backend",
        "backend": "lleaves",
        "loaded_from_cache": False,
        "compiled_s": 41.5,
        "ready_s": 41.9,
    }
    log = "\n".join(
        [
            "not json at all",
            json.dumps({"event": "topics_created"}),
            json.dumps({"event": "scoring_backend_fallback", "reason": "scoring_backend"}),
            json.dumps(record),
        ]
    )
    assert ready.scorer_line(log) == record
    assert ready.scorer_line("") is None


def test_table_has_a_row_per_size_and_start_then_the_preparation() -> None:
    results = [
        SizeResult(
            products=5000,
            events=18_558,
            simulate_s=1.0,
            train_s=30.2,
            compile_s=48.0,
            starts={
                "fresh": Start("fresh", 52.3, 330.0, 520.4, "lleaves", False, 47.91),
                "precompiled": Start("precompiled", 3.06, 310.2, 312.0, "lleaves", True, 0.021),
                "lightgbm": Start("lightgbm", 2.9, 260.0, 262.0, "lightgbm"),
            },
        ),
        SizeResult(
            products=200_000,
            starts={"fresh": Start("fresh", error="not ready after 300 s")},
        ),
        SizeResult(products=1_000_000, error="`worker train` exited 1"),
    ]
    table = ready.format_table(results, trees=200, leaves=63).splitlines()
    assert table[:5] == [
        "| products | start | ready s | scorer | RSS at ready MiB | peak RSS MiB |",
        "|---:|---|---:|---|---:|---:|",
        "| 5,000 | LightGBM backend | 2.9 | lightgbm | 260 | 262 |",
        "| 5,000 | lleaves, precompiled | 3.1 | lleaves, loaded in 0.02 s | 310 | 312 |",
        "| 5,000 | lleaves, fresh cache | 52.3 | lleaves, compiled in 47.91 s | 330 | 520 |",
    ]
    assert table[5] == "| 200,000 | lleaves, fresh cache | failed: not ready after 300 s | | | |"
    assert table[6] == "| 1,000,000 | failed: `worker train` exited 1 | | | | |"
    assert table[8:] == [
        "| products | history events | simulate s | train s | `worker compile` s |",
        "|---:|---:|---:|---:|---:|",
        "| 5,000 | 18,558 | 1.0 | 30.2 | 48.0 |",
        "| 200,000 | – | – | – | – |",
        "| 1,000,000 | – | – | – | – |",
        "",
        "model: 200 trees x 63 leaves (LambdaRank, 20 features)",
    ]
