"""The report's figure: one axes per panel, titled as the panel, its lines the input data (a
model version's lines apart and in one colour), the runtime note when there are no runtime
panels, and a pixel size fixed by the panel count."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from matplotlib.dates import num2date

from tests.report_records import MIN, T0, version, window
from worker.apps.report_figure import DPI, draw_report, figure_size_in
from worker.core import report
from worker.core.report import AccuracyWindows, Line, Panel, Report


def _report(runtime: tuple[Panel, ...] = ()) -> Report:
    acc = AccuracyWindows(T0, T0 + 10 * MIN)
    for i, (a, b) in enumerate([(10, 4), (20, 0), (8, 5)]):
        versions = (version("m1", a, a // 2, 2, 3), version("m2", b, b // 2, 1, 1))
        acc.add(window(T0 + i * MIN, versions).to_avro(T0 + (i + 1) * MIN))
    return Report(
        title=report.period_title(T0, T0 + 10 * MIN),
        since_ms=T0,
        until_ms=T0 + 10 * MIN,
        accuracy=report.accuracy_panels(acc.windows()),
        runtime=runtime,
        summary=tuple(report.accuracy_summary(acc)),
        runtime_note="" if runtime else report.RUNTIME_NEEDS_PROMETHEUS,
    )


def _axes(fig):
    return {ax.get_title(loc="left"): ax for ax in fig.axes}


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.texts]


def test_each_panel_is_an_axes_with_the_input_data() -> None:
    rep = _report()
    fig = draw_report(rep)
    axes = _axes(fig)
    assert list(axes) == [p.title for p in rep.accuracy]
    for panel in rep.accuracy:
        drawn = {line.get_label(): line for line in axes[panel.title].get_lines()}
        for line in panel.lines:
            plotted = drawn[line.label]
            times = [round(d.timestamp() * 1000) for d in num2date(plotted.get_xdata())]
            assert times == list(line.times_ms)
            ys = [None if math.isnan(y) else y for y in plotted.get_ydata()]
            assert ys == list(line.values)


def test_versions_are_separate_lines_each_in_its_colour() -> None:
    rep = _report()
    ax = _axes(draw_report(rep))["Hit rate@10 per model version"]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert {"m1", "m2", "m1 popularity", "m2 popularity", "m1 heuristic", "m2 heuristic"} <= set(
        lines
    )
    assert [y for y in lines["m2"].get_ydata()][:1] == [0.5]
    assert math.isnan(lines["m2"].get_ydata()[1])  # no m2 lines in the second window: a gap
    assert lines["m1"].get_color() == lines["m1 popularity"].get_color()
    assert lines["m1"].get_color() != lines["m2"].get_color()
    assert lines["m1 popularity"].get_linestyle() == ":"


def test_without_runtime_panels_the_image_says_they_need_prometheus() -> None:
    fig = draw_report(_report())
    assert report.RUNTIME_NEEDS_PROMETHEUS in _texts(fig)
    assert any(t.startswith("accuracy reports: 3 read") for t in _texts(fig))


def test_runtime_panels_are_drawn_with_their_levels_and_notes() -> None:
    drift = Panel(
        "Input drift (PSI) by quantity",
        "PSI",
        (Line("event_type", (T0, T0 + MIN), (0.05, 0.3)),),
        levels=report.PSI_LEVELS,
    )
    empty = Panel("Dead letters by error class", "records/s", note="no samples in this period")
    rep = _report(runtime=(drift, empty))
    fig = draw_report(rep)
    axes = _axes(fig)
    ys = [list(line.get_ydata()) for line in axes[drift.title].get_lines()]
    assert [0.05, 0.3] in ys and [0.1, 0.1] in ys and [0.25, 0.25] in ys  # the PSI levels
    assert "no samples in this period" in [t.get_text() for t in axes[empty.title].texts]
    assert report.RUNTIME_NEEDS_PROMETHEUS not in _texts(fig)


@pytest.mark.parametrize("runtime_panels", [0, 3, 11])
def test_pixel_size_follows_the_panel_count(runtime_panels: int) -> None:
    runtime = tuple(Panel(f"p{i}", "x") for i in range(runtime_panels))
    rep = _report(runtime)
    fig = draw_report(rep)
    width, height = figure_size_in(rep)
    assert tuple(fig.get_size_inches()) == (width, height)
    assert fig.dpi == DPI and width * DPI == 1600
    assert len(fig.axes) == len(rep.accuracy) + runtime_panels


def test_times_are_utc() -> None:
    ax = _axes(draw_report(_report()))["Hit rate@10 against baselines, per window"]
    first = num2date(ax.get_lines()[0].get_xdata()[0])
    assert first == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.timezone.utc)


def test_a_version_has_one_colour_in_every_panel_and_every_axis_spans_the_period() -> None:
    rep = _report()
    axes = _axes(draw_report(rep))
    per_version = {
        line.get_label(): line.get_color() for line in axes[rep.accuracy[1].title].get_lines()
    }
    attributed = {
        line.get_label(): line.get_color()
        for line in axes["Purchase lines attributed per window"].get_lines()
    }
    assert attributed["attributed m1"] == per_version["m1"]
    assert attributed["attributed m2"] == per_version["m2"]
    assert attributed["purchase lines"] not in (per_version["m1"], per_version["m2"])
    for ax in axes.values():
        low, high = (round(d.timestamp() * 1000) for d in num2date(ax.get_xlim()))
        assert (low, high) == (rep.since_ms, rep.until_ms)
