"""The image of ``worker report``: a :class:`~worker.core.report.Report` in, a matplotlib
:class:`~matplotlib.figure.Figure` out (pure: no file, no display, no global pyplot state).

matplotlib is the optional ``report`` extra (the worker's image does not carry it); only this
module imports it. The figure is built with the object API (``Figure()``), which renders PNG
through Agg without selecting a backend, so it works on a machine without a display.

Layout, top to bottom: the title and the summary lines; the accuracy panels, two per row; the
runtime panels, two per row, or the note that says why there are none. The size is fixed by the
number of panels (:func:`figure_size_in`), so a test can check the PNG's pixels.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
from matplotlib.figure import Figure

from worker.core.report import Panel, Report

WIDTH_IN = 16.0
DPI = 100
COLUMNS = 2
ROW_IN = 3.2
SECTION_IN = 0.45
TITLE_IN = 0.55
SUMMARY_LINE_IN = 0.2
NOTE_IN = 0.6
_STYLES = {"solid": "-", "dashed": "--", "dotted": ":", "dashdot": "-."}


def _rows(panels: Sequence[Panel]) -> int:
    return math.ceil(len(panels) / COLUMNS)


def figure_size_in(report: Report) -> tuple[float, float]:
    """(width, height) in inches: the header, then each section's rows of panels."""
    runtime = ROW_IN * _rows(report.runtime) if report.runtime else NOTE_IN
    height = (
        TITLE_IN
        + SUMMARY_LINE_IN * (len(report.summary) + 1)
        + SECTION_IN
        + ROW_IN * _rows(report.accuracy)
        + SECTION_IN
        + runtime
    )
    return WIDTH_IN, round(height, 2)


def draw_report(report: Report) -> Figure:
    """The report as one figure (see the module docstring for the layout)."""
    width, height = figure_size_in(report)
    fig = Figure(figsize=(width, height), dpi=DPI)
    y = height  # inches from the bottom, moving down

    def frac(inches: float) -> float:
        return inches / height

    y -= TITLE_IN
    fig.text(0.01, frac(y + 0.15), report.title, fontsize=16, weight="bold")
    for line in report.summary:
        y -= SUMMARY_LINE_IN
        fig.text(0.01, frac(y), line, fontsize=9, family="monospace")
    y -= SUMMARY_LINE_IN
    period = (report.since_ms, report.until_ms)
    y = _section(fig, report.accuracy, "Accuracy (the monitor's reports)", y, height, period)
    if report.runtime:
        _section(fig, report.runtime, "Runtime (Prometheus)", y, height, period)
    else:
        y -= SECTION_IN
        fig.text(0.01, frac(y + 0.1), "Runtime", fontsize=13, weight="bold")
        fig.text(0.01, frac(y - 0.25), report.runtime_note, fontsize=10, color="firebrick")
    return fig


def _section(
    fig: Figure,
    panels: Sequence[Panel],
    heading: str,
    y: float,
    height: float,
    period: tuple[int, int],
) -> float:
    """Draw a heading and its panels below ``y`` (inches); the new ``y``. A model version has
    one colour in every panel of the section."""
    groups = list(dict.fromkeys(line.group for p in panels for line in p.lines if line.group))
    y -= SECTION_IN
    fig.text(0.01, (y + 0.1) / height, heading, fontsize=13, weight="bold")
    cell_w = 1.0 / COLUMNS
    for i, panel in enumerate(panels):
        row, col = divmod(i, COLUMNS)
        top = y - row * ROW_IN
        bottom = top - ROW_IN + 0.55  # room for the tick labels
        ax = fig.add_axes(
            (col * cell_w + 0.05, bottom / height, cell_w - 0.08, (ROW_IN - 0.95) / height)
        )
        draw_panel(ax, panel, period, groups)
    return y - ROW_IN * _rows(panels)


def _as_datetime(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)


def draw_panel(
    ax: Axes, panel: Panel, period: tuple[int, int] | None = None, groups: Sequence[str] = ()
) -> None:
    """One panel over ``period`` (epoch ms): its lines, levels, legend and note. The lines of
    ``groups[i]`` take colour ``i``; the other lines the colours after those."""
    ax.set_title(panel.title, fontsize=10, loc="left")
    ax.set_ylabel(panel.unit, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.3)
    palette = [f"C{i}" for i in range(10)]
    colours = {name: palette[i % len(palette)] for i, name in enumerate(groups)}
    free = iter(palette[len(groups) :] + palette[: len(groups)])
    for line in panel.lines:
        key = line.group or line.label
        if key not in colours:
            colours[key] = next(free, "black")
        ax.plot(
            date2num([_as_datetime(t) for t in line.times_ms]),
            [math.nan if v is None else v for v in line.values],
            _STYLES.get(line.style, "-"),
            color=colours[key],
            label=line.label,
            linewidth=1.3,
            marker="." if len(line.times_ms) < 60 else None,
            markersize=4,
        )
    for level, name in panel.levels:
        ax.axhline(level, color="grey", linewidth=0.8, linestyle="--")
        if name:
            ax.annotate(
                name,
                (1.0, level),
                xycoords=("axes fraction", "data"),
                fontsize=7,
                ha="right",
                va="bottom",
                color="grey",
            )
    if period is not None:
        ax.set_xlim(date2num(_as_datetime(period[0])), date2num(_as_datetime(period[1])))
    if panel.lines or period is not None:
        locator = AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=dt.timezone.utc))
    if panel.lines:
        ax.legend(fontsize=7, loc="best", ncol=3 if len(panel.lines) > 6 else 1)
    if panel.note:
        ax.text(
            0.5,
            0.5,
            panel.note,
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=9,
            color="grey",
            wrap=True,
        )
