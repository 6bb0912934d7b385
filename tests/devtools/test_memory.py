"""``worker-dev memory`` over the real broker, small: both workers hold every user (the second
restored from the changelog of the first, killed with SIGKILL) and report their memory. The
1,000,000-user figure is run by hand (deploy/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools import cli as dev
from devtools import memory

pytestmark = pytest.mark.kafka


def test_memory_probe_holds_and_restores_every_user(
    kafka_bootstrap: str, trained_models_dir: Path, tmp_path: Path, bench_env_root: Path, capsys
) -> None:
    args = dev.build_parser().parse_args(
        [
            "memory",
            "--users",
            "3000",
            "--models-dir",
            str(trained_models_dir),
            "--work-dir",
            str(tmp_path),
            "--bootstrap-servers",
            kafka_bootstrap,
            "--timeout-s",
            "180",
            "--env-root",
            str(bench_env_root),
        ]
    )
    assert memory.run(args, dev_log()) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    serve, restore = [
        line for line in out.splitlines() if line.startswith("| ") and "3,000" in line
    ]
    for row in (serve, restore):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2] == "3,000"
        rss, peak = float(cells[3]), float(cells[4])
        assert 50 < rss <= peak
    assert list(tmp_path.glob("memory-*.json")) and list(tmp_path.glob("restore-*.log"))
    assert "worker env runtime" in out  # measured as the image runs it, by default


def dev_log():
    from worker.ops.logging import configure_logging

    return configure_logging(level="warning", fmt="json", component="test")
