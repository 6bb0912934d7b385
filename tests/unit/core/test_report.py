"""The series of ``worker report`` (pure): which records count, the panels' lines equal the
records' figures, the pooled summary, and the runtime queries (the dashboard's own)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.report_records import MIN, T0, comparison, version, window
from worker.core import report
from worker.core.report import AccuracyWindows, Line, Panel, Query

DASHBOARD = (
    Path(__file__).parents[3] / "deploy/k8s/components/grafana-dashboard/recommender-dashboard.json"
)


def _windows(*reports, since=T0, until=T0 + 60 * MIN) -> AccuracyWindows:
    acc = AccuracyWindows(since, until)
    for r in reports:
        acc.add(r.to_avro(r.window_end_ms + 3000))
    return acc


def _panel(panels, title_start: str) -> Panel:
    (found,) = [p for p in panels if p.title.startswith(title_start)]
    return found


def _line(panel: Panel, label: str) -> Line:
    (found,) = [line for line in panel.lines if line.label == label]
    return found


def test_windows_of_the_period_one_per_start_last_kept() -> None:
    first = window(T0, (version("m1", 10, 4, 2, 3),))
    again = window(T0, (version("m1", 10, 6, 2, 3),))  # re-sent, other figures: the later wins
    before = window(T0 - MIN, (version("m1", 10, 1, 1, 1),))
    after = window(T0 + 60 * MIN, (version("m1", 10, 1, 1, 1),))
    acc = _windows(first, before, again, after)
    acc.skip("CorruptPayloadError")
    acc.skip("CorruptPayloadError")
    assert [w.window_start_ms for w in acc.windows()] == [T0]
    assert acc.windows()[0].hits == 6
    assert (acc.records, acc.duplicates, acc.outside) == (4, 1, 2)
    assert dict(acc.undecodable) == {"CorruptPayloadError": 2}


def test_hit_rate_panels_plot_each_window_and_each_version_apart() -> None:
    reports = [
        window(T0, (version("m1", 10, 5, 2, 4), version("m2", 4, 1, 1, 2))),
        window(T0 + MIN, (version("m1", 20, 8, 4, 6),)),  # m2 has no lines here: a gap
        window(T0 + 2 * MIN, (version("m1", 8, 2, 2, 2), version("m2", 5, 3, 0, 1))),
    ]
    panels = report.accuracy_panels(_windows(*reports).windows())
    times = (T0, T0 + MIN, T0 + 2 * MIN)
    pooled = _panel(panels, "Hit rate@10 against baselines")
    assert _line(pooled, "model").times_ms == times
    assert _line(pooled, "model").values == tuple(r.hit_rate_at_k for r in reports)
    assert _line(pooled, "popularity baseline").values == tuple(
        r.baseline_hit_rate_at_k for r in reports
    )
    assert _line(pooled, "recency heuristic").values == tuple(
        r.heuristic_hit_rate_at_k for r in reports
    )
    per_version = _panel(panels, "Hit rate@10 per model version")
    assert _line(per_version, "m1").values == (0.5, 0.4, 0.25)
    assert _line(per_version, "m2").values == (0.25, None, 0.6)
    assert _line(per_version, "m2 popularity").values == (0.25, None, 0.0)
    assert _line(per_version, "m1 heuristic").values == (0.4, 0.3, 0.25)
    assert {line.group for line in per_version.lines} == {"m1", "m2"}
    attributed = _panel(panels, "Purchase lines attributed")
    assert _line(attributed, "attributed").values == (14.0, 20.0, 13.0)
    assert _line(attributed, "attributed m2").values == (4, None, 5)
    # No discovery lines, no comparison: no such panels.
    assert not [p for p in panels if p.title.startswith(("Discovery", "Challenger"))]


def test_discovery_and_comparison_panels_when_the_reports_carry_them() -> None:
    reports = [
        window(T0, (version("m1", 10, 5, 2, 4, 4, 1),), comparison=comparison("m1", "m2", -0.05)),
        window(T0 + MIN, (version("m1", 10, 5, 2, 4, 5, 2),)),
        window(
            T0 + 2 * MIN,
            (version("m1", 10, 5, 2, 4, 0, 0),),
            comparison=comparison("m1", "m2", 0.02),
        ),
    ]
    panels = report.accuracy_panels(_windows(*reports).windows())
    discovery = _panel(panels, "Discovery hit rate@10")
    assert _line(discovery, "all versions").values == (0.25, 0.4, None)
    difference = _panel(panels, "Challenger minus champion")
    assert _line(difference, "m2 - m1").times_ms == (T0, T0 + 2 * MIN)
    assert _line(difference, "m2 - m1").values == (-0.05, 0.02)


def test_no_window_in_the_period_is_said_not_drawn() -> None:
    (panel,) = report.accuracy_panels([])
    assert panel.empty and "no accuracy report" in panel.note


def test_reports_without_per_version_figures_get_a_note() -> None:
    old = window(T0, (version("m1", 10, 5, 2, 4),))
    record = old.to_avro(T0 + MIN)
    record["versions"] = []  # a report written before the per-version figures
    acc = AccuracyWindows(T0, T0 + MIN)
    acc.add(record)
    panel = _panel(report.accuracy_panels(acc.windows()), "Hit rate@10 per model version")
    assert not panel.lines and "no per-version" in panel.note


def test_summary_pools_the_counts_of_the_period() -> None:
    acc = _windows(
        window(T0, (version("m1", 10, 5, 2, 4, 4, 1), version("m2", 4, 1, 1, 2))),
        window(
            T0 + MIN, (version("m1", 20, 8, 4, 6, 6, 3),), comparison=comparison("m1", "m2", 0.05)
        ),
    )
    acc.skip("UnknownFramingError")
    lines = report.accuracy_summary(acc)
    assert lines[0] == (
        "accuracy reports: 2 read, 2 windows in the period, 0 duplicate, 0 outside the period, "
        "1 undecodable (1 UnknownFramingError)"
    )
    assert lines[1] == (
        "windows 2023-11-14T22:13:20Z .. 2023-11-14T22:15:20Z, K=10: 40 purchase lines, "
        "34 attributed"
    )
    assert lines[2] == (
        "hit rate: model 41.2% (14/34); popularity 20.6% (7/34); recency heuristic 35.3% "
        "(12/34); discovery 40.0% (4/10)"
    )
    assert lines[3].startswith(
        "version m1: 34 purchase lines, 30 attributed; hit rate 43.3% (13/30)"
    )
    assert lines[4].startswith("version m2: 6 purchase lines, 4 attributed; hit rate 25.0% (1/4)")
    assert lines[5] == "last comparison: m2 - m1 = +0.050 (95% CI -0.050 .. +0.150)"


# -- runtime ---------------------------------------------------------------------------------------


def _dashboard_exprs() -> set[str]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    found = set()

    def walk(panels):
        for p in panels:
            found.update(t["expr"] for t in p.get("targets", []))
            walk(p.get("panels", []))

    walk(data["panels"])
    return found


def test_runtime_queries_are_the_dashboards() -> None:
    """Each runtime query is one of the dashboard's targets once its selector and rate window
    are the dashboard's variables: the image shows what Grafana shows."""
    exprs = _dashboard_exprs()
    for spec in report.RUNTIME_PANELS:
        for q in spec.queries:
            as_grafana = q.promql.replace("{sel}", '{namespace=~"$namespace"}').replace(
                "{rate}", "$__rate_interval"
            )
            assert as_grafana in exprs, f"{spec.title}: {as_grafana}"
    titles = {spec.title for spec in report.RUNTIME_PANELS}
    assert {"Dead letters by error class", "Input drift (PSI) by quantity"} <= titles


def test_query_rendering_step_and_rate_window() -> None:
    q = Query("sum(rate(worker_events_consumed_total{sel}[{rate}]))", "x")
    assert report.render_query(q, "", 75) == "sum(rate(worker_events_consumed_total[75s]))"
    assert (
        report.render_query(q, 'namespace="shop"', 60)
        == 'sum(rate(worker_events_consumed_total{namespace="shop"}[60s]))'
    )
    assert report.step_s(0, 3_600_000) == 30  # an hour: the scrape interval
    assert report.step_s(0, 3_600_000, floor_s=1) == 9  # about 400 points
    assert report.step_s(0, 7 * 86_400_000) == 1512  # a week: about 400 points
    assert report.rate_window_s(15, 15) == 60  # four scrapes
    assert report.rate_window_s(1512) == 1542  # a step and a scrape


def test_matrix_result_becomes_labelled_lines_with_gaps() -> None:
    result = [
        {"metric": {"pod": "w-1"}, "values": [[1700000000, "3"], [1700000015, "NaN"]]},
        {"metric": {"instance": "10.0.0.2:9100"}, "values": [[1700000000.5, "1.5e3"]]},
    ]
    lines = report.matrix_lines(result, Query("worker_active_sessions{sel}", "worker {{pod}}"))
    assert [(line.label, line.times_ms, line.values) for line in lines] == [
        ("worker 10.0.0.2:9100", (1_700_000_000_500,), (1500.0,)),  # no pod label: instance
        ("worker w-1", (1_700_000_000_000, 1_700_000_015_000), (3.0, None)),
    ]
    with pytest.raises(ValueError, match="not a matrix"):
        report.matrix_lines([{"metric": {}, "value": [1, "2"]}], Query("x", "x"))


def test_runtime_panel_without_samples_says_so() -> None:
    spec = report.RUNTIME_PANELS[0]
    panel = report.runtime_panel(spec, [[] for _ in spec.queries])
    assert panel.empty and "no samples" in panel.note


def test_drift_line_names_the_quantities_past_the_significant_level() -> None:
    drift = Panel(
        "Input drift (PSI) by quantity",
        "PSI",
        (
            Line("event_type", (1, 2), (0.01, 0.3)),
            Line("session_length", (1, 2), (0.05, None)),
        ),
    )
    assert report.drift_summary(drift) == (
        "input drift: highest PSI 0.300 (event_type) over 2 quantities; "
        "at or above 0.25: event_type"
    )
    assert "needs --prometheus-url" in report.drift_summary(None)
    assert "no PSI samples" in report.drift_summary(Panel("Input drift", "PSI"))
