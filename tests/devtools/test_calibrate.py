"""``worker-dev calibrate``: the band, the side-by-side table and the exit status (pure logic;
the full calibration builds two datasets and takes about a minute, so it is not run here)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devtools import calibrate
from devtools.calibrate import ABS_TOLERANCE, COLUMNS, REL_FACTOR, Row, compare, in_band

RANKERS = ("popularity", "recency")


@pytest.mark.parametrize(
    ("simulated", "real", "expected"),
    [
        (0.10, 0.10, True),
        (0.15, 0.10, True),  # 0.05 apart: the absolute tolerance
        (0.16, 0.10, False),  # 0.06 apart, x1.6
        (0.60, 0.40, True),  # x1.5: the relative factor
        (0.61, 0.40, False),
        (0.45, 0.696, False),  # 0.246 apart, /1.55
        (0.47, 0.696, True),  # /1.48
        (0.0, 0.0, True),
        (0.04, 0.0, True),
        (0.06, 0.0, False),
        (math.nan, 0.1, False),
    ],
)
def test_band(simulated: float, real: float, expected: bool) -> None:
    assert in_band(simulated, real) is expected


@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_band_is_symmetric_and_contains_the_tolerances(a: float, b: float) -> None:
    assert in_band(a, b) == in_band(b, a)
    if abs(a - b) <= ABS_TOLERANCE:
        assert in_band(a, b)
    if a > 0 and b > 0 and 1 / REL_FACTOR <= a / b <= REL_FACTOR:
        assert in_band(a, b)
    if abs(a - b) > ABS_TOLERANCE and (min(a, b) == 0 or max(a, b) / min(a, b) > REL_FACTOR):
        assert not in_band(a, b)


def _result(hit_rate: float, events: int = 100) -> dict[str, Any]:
    metrics = {"events": events, "hit_rate": hit_rate, "discovery": {"events": events // 2}}
    metrics["discovery"]["hit_rate"] = hit_rate / 2
    return {
        "k": 10,
        "rankers": list(RANKERS),
        "events": 1000,
        "next_item": {r: metrics for r in RANKERS},
        "purchase": {r: metrics for r in RANKERS},
    }


def test_compare_and_table() -> None:
    rows = compare(_result(0.30), _result(0.10), RANKERS)
    assert [r.ranker for r in rows] == list(RANKERS)
    assert rows[0].simulated == (0.30, 0.30, 0.15, 0.15)
    assert rows[0].real == (0.10, 0.10, 0.05, 0.05)
    assert rows[0].in_band == (False, False, False, False)
    counts = {
        "simulated": calibrate.event_counts(_result(0.3), "recency"),
        "real": calibrate.event_counts(_result(0.1, 40), "recency"),
    }
    table = calibrate.format_table(rows, 10, counts)
    assert "0.300 / 0.100 OUT" in table
    assert "8 of 8 figures out of band" in table
    assert f"x/÷{REL_FACTOR:g}" in table
    for label, _, _ in COLUMNS:
        assert label in table.splitlines()[0]
    # a ranker with no event on a target is not in band (nothing to compare)
    empty = _result(0.1, events=0)
    assert not any(compare(empty, _result(0.1), RANKERS)[0].in_band)


def test_row_in_band_per_figure() -> None:
    row = Row("x", (0.1, 0.5, 0.0, 0.2), (0.12, 0.2, 0.0, 0.2))
    assert row.in_band == (True, False, True, True)


def _args(tmp_path: Path, **over: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    calibrate.add_arguments(parser)
    args = parser.parse_args(["--diginetica", str(tmp_path), "--work-dir", str(tmp_path)])
    for key, value in over.items():
        setattr(args, key, value)
    return args


@pytest.mark.parametrize(("simulated", "status"), [(0.12, 0), (0.40, 1)])
def test_exit_status_says_whether_every_figure_is_in_band(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    simulated: float,
    status: int,
) -> None:
    dirs = (tmp_path / "simulated", tmp_path / "diginetica")
    monkeypatch.setattr(calibrate, "build_datasets", lambda args, work_dir: dirs)
    results = {dirs[0]: _result(simulated), dirs[1]: _result(0.10)}
    monkeypatch.setattr(calibrate, "evaluate_baselines", lambda d: results[d])
    assert calibrate.run(_args(tmp_path)) == status
    out = capsys.readouterr().out
    assert "popularity" in out and "band:" in out


def test_simulator_settings_scale_the_users_and_keep_the_catalogue(tmp_path: Path) -> None:
    from worker.apps.simulate import SimulatorSettings

    default = calibrate.simulator_settings(_args(tmp_path))
    assert default.n_users == 10_000  # 200k events over 2 days at ~10 events per user and day
    assert default.n_products == SimulatorSettings().n_products
    sized = calibrate.simulator_settings(_args(tmp_path, products=1000, categories=20, days=1.0))
    assert (sized.n_products, sized.n_categories, sized.n_users) == (1000, 20, 20_000)


def test_registered_in_worker_dev() -> None:
    from devtools.cli import COMMANDS, build_parser

    assert "calibrate" in COMMANDS
    args = build_parser().parse_args(["calibrate", "--events", "1000"])
    assert args.command == "calibrate" and args.events == 1000
