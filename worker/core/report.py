"""The series of ``worker report`` (pure): accuracy windows from the accuracy topic's records,
runtime series from Prometheus ``query_range`` answers, and the summary lines.

Nothing here reads Kafka, HTTP or a clock, and nothing draws: :mod:`worker.apps.report` reads
the topic and Prometheus (through :mod:`worker.ops.prometheus`) and hands the decoded records
and JSON answers to these functions; :mod:`worker.apps.report_figure` draws the
:class:`Report` they make.

Which accuracy reports belong to a report over ``[since, until)``: those whose window *starts*
in it (event time, the window the figures are about). A window reported twice (a monitor that
re-sent it) counts once, its last record (highest partition offset) kept; the duplicates are
counted in the summary.

The runtime panels are the dashboard's main ones (``deploy/k8s/components/grafana-dashboard``),
with the same PromQL: Grafana's ``$__rate_interval`` becomes :func:`rate_window_s` of the step,
and the dashboard's ``namespace=~"$namespace"`` an optional label selector.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: The input drift PSI levels (worker.core.drift): moderate, significant.
PSI_LEVELS = ((0.1, "moderate"), (0.25, "significant"))

#: What the runtime area says without a Prometheus URL: /metrics holds only the present, so a
#: history exists only where something scraped it.
RUNTIME_NEEDS_PROMETHEUS = (
    "runtime panels (throughput, lag, latency, dead letters, memory, drift) need "
    "--prometheus-url: /metrics holds only the current values, their history is in the "
    "Prometheus that scrapes them"
)


# -- the figure's data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One plotted line: ``values[i]`` at ``times_ms[i]``; None is a gap (a window without
    attributed lines has no hit rate).

    Attributes:
        style: ``solid``, ``dashed`` or ``dotted``.
        group: lines of one group share a colour (a model version and its baselines).
    """

    label: str
    times_ms: tuple[int, ...]
    values: tuple[float | None, ...]
    style: str = "solid"
    group: str = ""

    def __post_init__(self) -> None:
        if len(self.times_ms) != len(self.values):
            raise ValueError(f"line {self.label!r}: {len(self.times_ms)} times, {len(self.values)}")


@dataclass(frozen=True)
class Panel:
    """One chart: its lines, the y-axis unit, horizontal reference levels, and a note shown in
    the chart (why it is empty, or a remark)."""

    title: str
    unit: str
    lines: tuple[Line, ...] = ()
    note: str = ""
    levels: tuple[tuple[float, str], ...] = ()

    @property
    def empty(self) -> bool:
        return not any(v is not None for line in self.lines for v in line.values)


@dataclass(frozen=True)
class Report:
    """What the image shows: the accuracy panels (from the accuracy topic), the runtime panels
    (from Prometheus; none without it, and ``runtime_note`` says why) and the summary lines."""

    title: str
    since_ms: int
    until_ms: int
    accuracy: tuple[Panel, ...]
    runtime: tuple[Panel, ...]
    summary: tuple[str, ...]
    runtime_note: str = ""


# -- accuracy windows ----------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionWindow:
    """One model version's figures in one window (the record's ``versions`` entry)."""

    model_version: str
    purchases: int
    attributed: int
    hits: int
    hit_rate: float | None
    baseline_hits: int
    baseline_hit_rate: float | None
    heuristic_hits: int
    heuristic_hit_rate: float | None
    discovery_lines: int
    discovery_hits: int
    discovery_hit_rate: float | None


@dataclass(frozen=True)
class Comparison:
    """The record's ``version_comparison``: challenger minus champion, cumulative hit rate."""

    champion: str
    challenger: str
    difference: float
    ci95_low: float
    ci95_high: float


@dataclass(frozen=True)
class AccuracyWindow:
    """The figures of one accuracy report the report draws and sums."""

    window_start_ms: int
    window_end_ms: int
    k: int
    purchases: int
    attributed: int
    hits: int
    hit_rate: float | None
    baseline_hits: int
    baseline_hit_rate: float | None
    heuristic_hits: int
    heuristic_hit_rate: float | None
    cumulative_hit_rate: float | None
    discovery_lines: int
    discovery_hits: int
    discovery_hit_rate: float | None
    events: int
    events_answered: int
    purchase_coverage: float | None
    event_coverage: float | None
    versions: tuple[VersionWindow, ...] = ()
    comparison: Comparison | None = None

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> AccuracyWindow:
        """From a decoded ``AccuracyReport`` (any version the codec reads: fields added later
        carry their schema defaults)."""
        c = r.get("version_comparison")
        return cls(
            window_start_ms=int(r["window_start"]),
            window_end_ms=int(r["window_end"]),
            k=int(r["k"]),
            purchases=int(r["purchases"]),
            attributed=int(r["attributed"]),
            hits=int(r["hits"]),
            hit_rate=r["hit_rate_at_k"],
            baseline_hits=int(r["baseline_hits"]),
            baseline_hit_rate=r["baseline_hit_rate_at_k"],
            heuristic_hits=int(r.get("heuristic_hits", 0)),
            heuristic_hit_rate=r.get("heuristic_hit_rate_at_k"),
            cumulative_hit_rate=r["cumulative_hit_rate_at_k"],
            discovery_lines=int(r.get("discovery_lines", 0)),
            discovery_hits=int(r.get("discovery_hits", 0)),
            discovery_hit_rate=r.get("discovery_hit_rate_at_k"),
            events=int(r.get("events", 0)),
            events_answered=int(r.get("events_answered", 0)),
            purchase_coverage=r.get("purchase_coverage"),
            event_coverage=r.get("event_coverage"),
            versions=tuple(
                VersionWindow(
                    model_version=v["model_version"],
                    purchases=int(v["purchases"]),
                    attributed=int(v["attributed"]),
                    hits=int(v["hits"]),
                    hit_rate=v["hit_rate_at_k"],
                    baseline_hits=int(v["baseline_hits"]),
                    baseline_hit_rate=v["baseline_hit_rate_at_k"],
                    heuristic_hits=int(v["heuristic_hits"]),
                    heuristic_hit_rate=v["heuristic_hit_rate_at_k"],
                    discovery_lines=int(v["discovery_lines"]),
                    discovery_hits=int(v["discovery_hits"]),
                    discovery_hit_rate=v["discovery_hit_rate_at_k"],
                )
                for v in r.get("versions", ())
            ),
            comparison=None
            if c is None
            else Comparison(
                c["champion"], c["challenger"], c["difference"], c["ci95_low"], c["ci95_high"]
            ),
        )


@dataclass
class AccuracyWindows:
    """The windows of ``[since_ms, until_ms)`` as records arrive: one per window start, the
    last record read of each (records arrive in offset order per partition), and the counts
    the summary gives: records taken, windows reported twice, records outside the period, and
    records skipped because they do not decode (by error class)."""

    since_ms: int
    until_ms: int
    records: int = 0
    duplicates: int = 0
    outside: int = 0
    undecodable: Counter[str] = field(default_factory=Counter)
    _windows: dict[int, AccuracyWindow] = field(default_factory=dict)

    def add(self, record: Mapping[str, Any]) -> bool:
        """Take one decoded record; whether its window is in the period."""
        self.records += 1
        window = AccuracyWindow.from_record(record)
        if not self.since_ms <= window.window_start_ms < self.until_ms:
            self.outside += 1
            return False
        if window.window_start_ms in self._windows:
            self.duplicates += 1
        self._windows[window.window_start_ms] = window
        return True

    def skip(self, error_class: str) -> None:
        """A record that did not decode."""
        self.undecodable[error_class] += 1

    def windows(self) -> list[AccuracyWindow]:
        """The windows in time order."""
        return [self._windows[t] for t in sorted(self._windows)]


def _times(windows: Sequence[AccuracyWindow]) -> tuple[int, ...]:
    return tuple(w.window_start_ms for w in windows)


def _versions(windows: Sequence[AccuracyWindow]) -> list[str]:
    return sorted({v.model_version for w in windows for v in w.versions})


def _of_version(windows: Sequence[AccuracyWindow], name: str, attr: str) -> tuple[Any, ...]:
    """A version's figure per window; None where the version has no entry."""
    out = []
    for w in windows:
        found = [getattr(v, attr) for v in w.versions if v.model_version == name]
        out.append(found[0] if found else None)
    return tuple(out)


def accuracy_panels(windows: Sequence[AccuracyWindow]) -> tuple[Panel, ...]:
    """The accuracy panels: hit rate against the baselines, per model version, discovery hit
    rate (when any window has discovery lines), purchase lines attributed, and challenger minus
    champion (when a comparison was reported). One point per window, at its start."""
    k = windows[0].k if windows else None
    at_k = f"@{k}" if k is not None else "@K"
    t = _times(windows)
    if not windows:
        note = "no accuracy report of a window starting in this period"
        return (Panel(f"Hit rate{at_k} against baselines, per window", "hit rate", note=note),)
    panels = [
        Panel(
            f"Hit rate{at_k} against baselines, per window",
            "hit rate",
            (
                Line("model", t, tuple(w.hit_rate for w in windows)),
                Line(
                    "popularity baseline", t, tuple(w.baseline_hit_rate for w in windows), "dotted"
                ),
                Line(
                    "recency heuristic", t, tuple(w.heuristic_hit_rate for w in windows), "dashed"
                ),
                Line(
                    "model, since monitor start",
                    t,
                    tuple(w.cumulative_hit_rate for w in windows),
                    "dashdot",
                ),
            ),
        )
    ]
    versions = _versions(windows)
    if versions:
        lines = []
        for name in versions:
            lines += [
                Line(name, t, _of_version(windows, name, "hit_rate"), group=name),
                Line(
                    f"{name} popularity",
                    t,
                    _of_version(windows, name, "baseline_hit_rate"),
                    "dotted",
                    name,
                ),
                Line(
                    f"{name} heuristic",
                    t,
                    _of_version(windows, name, "heuristic_hit_rate"),
                    "dashed",
                    name,
                ),
            ]
        panels.append(Panel(f"Hit rate{at_k} per model version", "hit rate", tuple(lines)))
    else:
        panels.append(
            Panel(
                f"Hit rate{at_k} per model version",
                "hit rate",
                note="the reports carry no per-version figures (written before them)",
            )
        )
    if any(w.discovery_lines for w in windows):
        lines = [Line("all versions", t, tuple(w.discovery_hit_rate for w in windows))]
        lines += [
            Line(name, t, _of_version(windows, name, "discovery_hit_rate"), "dashed", name)
            for name in versions
        ]
        panels.append(
            Panel(
                f"Discovery hit rate{at_k} (products not viewed in the session)",
                "hit rate",
                tuple(lines),
            )
        )
    lines = [
        Line("purchase lines", t, tuple(float(w.purchases) for w in windows)),
        Line("attributed", t, tuple(float(w.attributed) for w in windows), "dashed"),
    ]
    lines += [
        Line(f"attributed {name}", t, _of_version(windows, name, "attributed"), "dotted", name)
        for name in versions
    ]
    panels.append(Panel("Purchase lines attributed per window", "lines", tuple(lines)))
    compared = [w for w in windows if w.comparison is not None]
    if compared:
        pairs = sorted(
            {(w.comparison.champion, w.comparison.challenger) for w in compared if w.comparison}
        )
        lines = []
        for champion, challenger in pairs:
            cs = [
                (w.window_start_ms, w.comparison)
                for w in compared
                if w.comparison
                and (w.comparison.champion, w.comparison.challenger) == (champion, challenger)
            ]
            ct = tuple(x for x, _ in cs)
            name = f"{challenger} - {champion}"
            lines += [
                Line(name, ct, tuple(c.difference for _, c in cs), group=name),
                Line("ci95 low", ct, tuple(c.ci95_low for _, c in cs), "dotted", name),
                Line("ci95 high", ct, tuple(c.ci95_high for _, c in cs), "dotted", name),
            ]
        panels.append(
            Panel(
                f"Challenger minus champion, cumulative hit rate{at_k}",
                "difference",
                tuple(lines),
                levels=((0.0, ""),),
            )
        )
    return tuple(panels)


def _rate(num: int, den: int) -> str:
    return f"{num / den:.1%} ({num}/{den})" if den else "n/a (0 lines)"


def accuracy_summary(acc: AccuracyWindows) -> list[str]:
    """The accuracy lines of the summary: what was read, and the period's pooled figures (sums
    of the windows' counts, so each rate is over every attributed line of the period)."""
    windows = acc.windows()
    skipped = ", ".join(f"{n} {cls}" for cls, n in sorted(acc.undecodable.items()))
    lines = [
        f"accuracy reports: {acc.records} read, {len(windows)} windows in the period, "
        f"{acc.duplicates} duplicate, {acc.outside} outside the period, "
        f"{sum(acc.undecodable.values())} undecodable" + (f" ({skipped})" if skipped else "")
    ]
    if not windows:
        return lines
    purchases = sum(w.purchases for w in windows)
    attributed = sum(w.attributed for w in windows)
    lines.append(
        f"windows {_iso(windows[0].window_start_ms)} .. {_iso(windows[-1].window_end_ms)}, "
        f"K={windows[-1].k}: {purchases} purchase lines, {attributed} attributed"
    )
    lines.append(
        "hit rate: model "
        + _rate(sum(w.hits for w in windows), attributed)
        + "; popularity "
        + _rate(sum(w.baseline_hits for w in windows), attributed)
        + "; recency heuristic "
        + _rate(sum(w.heuristic_hits for w in windows), attributed)
        + "; discovery "
        + _rate(sum(w.discovery_hits for w in windows), sum(w.discovery_lines for w in windows))
    )
    for name in _versions(windows):
        vs = [v for w in windows for v in w.versions if v.model_version == name]
        v_attributed = sum(v.attributed for v in vs)
        lines.append(
            f"version {name}: {sum(v.purchases for v in vs)} purchase lines, {v_attributed} "
            f"attributed; hit rate {_rate(sum(v.hits for v in vs), v_attributed)}; "
            f"popularity {_rate(sum(v.baseline_hits for v in vs), v_attributed)}; "
            f"heuristic {_rate(sum(v.heuristic_hits for v in vs), v_attributed)}"
        )
    last = next((w.comparison for w in reversed(windows) if w.comparison), None)
    if last is not None:
        lines.append(
            f"last comparison: {last.challenger} - {last.champion} = {last.difference:+.3f} "
            f"(95% CI {last.ci95_low:+.3f} .. {last.ci95_high:+.3f})"
        )
    return lines


# -- runtime panels (Prometheus) -----------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One PromQL query of a panel. ``promql`` has ``{sel}`` where the label selector goes and
    ``{rate}`` for the rate window; ``legend`` names each series Grafana's way, ``{{label}}``."""

    promql: str
    legend: str
    style: str = "solid"


@dataclass(frozen=True)
class PanelQueries:
    title: str
    unit: str
    queries: tuple[Query, ...]
    levels: tuple[tuple[float, str], ...] = ()


def _hq(q: float, metric: str, by: str = "le") -> str:
    return f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket{{sel}}[{{rate}}])))"


#: The dashboard's main runtime panels, in drawing order.
RUNTIME_PANELS: tuple[PanelQueries, ...] = (
    PanelQueries(
        "Throughput: events in, suggestions out",
        "records/s",
        (
            Query("sum(rate(worker_events_consumed_total{sel}[{rate}]))", "events consumed"),
            Query(
                "sum(rate(worker_suggestions_produced_total{sel}[{rate}]))",
                "suggestions produced",
                "dashed",
            ),
        ),
    ),
    PanelQueries(
        "Consumer lag: workers vs broker",
        "messages",
        (
            Query("sum(worker_consumer_lag_messages{sel})", "workers (self-reported)"),
            Query("max(monitor_worker_group_lag_total{sel})", "broker (monitor probe)", "dashed"),
        ),
    ),
    PanelQueries(
        "Group lag per partition (broker)",
        "messages",
        (Query("max by (partition) (monitor_worker_group_lag{sel})", "partition {{partition}}"),),
    ),
    PanelQueries(
        "Batch size (events per micro-batch)",
        "events",
        tuple(
            Query(_hq(q, "worker_batch_size_events"), f"p{round(q * 100)}", s)
            for q, s in ((0.5, "solid"), (0.95, "dashed"), (0.99, "dotted"))
        ),
    ),
    PanelQueries(
        "Event-to-suggestion latency",
        "seconds",
        tuple(
            Query(_hq(q, "worker_event_to_suggestion_seconds"), f"p{round(q * 100)}", s)
            for q, s in ((0.5, "solid"), (0.95, "dashed"), (0.99, "dotted"))
        ),
    ),
    PanelQueries(
        "Stage time p95 by stage",
        "seconds",
        (Query(_hq(0.95, "worker_stage_seconds", "stage, le"), "{{stage}}"),),
    ),
    PanelQueries(
        "Dead letters by error class",
        "records/s",
        (
            Query(
                "sum by (error_class) (rate(worker_dead_letters_total{sel}[{rate}]))",
                "worker {{error_class}}",
            ),
            Query(
                "sum by (error_class) (rate(monitor_dead_letters_total{sel}[{rate}]))",
                "monitor {{error_class}}",
                "dashed",
            ),
        ),
    ),
    PanelQueries(
        "Active sessions per pod",
        "users",
        (Query("worker_active_sessions{sel}", "{{pod}}"),),
    ),
    PanelQueries(
        "Resident memory per pod",
        "bytes",
        (
            Query(
                "process_resident_memory_bytes{sel} and on (instance) worker_assigned_partitions",
                "worker {{pod}}",
            ),
            Query(
                "process_resident_memory_bytes{sel} and on (instance) monitor_pending_purchases",
                "monitor {{pod}}",
                "dashed",
            ),
        ),
    ),
    PanelQueries(
        "Replicas against partitions",
        "count",
        (
            Query("count(worker_assigned_partitions{sel})", "worker replicas"),
            Query("sum(worker_assigned_partitions{sel})", "partitions assigned", "dashed"),
            Query(
                "count(max by (partition) (monitor_worker_group_lag{sel}))",
                "partitions (broker)",
                "dotted",
            ),
        ),
    ),
    PanelQueries(
        "Input drift (PSI) by quantity",
        "PSI",
        (Query("max by (quantity) (worker_input_drift_psi{sel})", "{{quantity}}"),),
        levels=PSI_LEVELS,
    ),
)


#: The scrape interval assumed of the Prometheus asked: deploy/'s PodMonitor scrapes every 30 s
#: (``worker report --scrape-interval-s`` for another).
SCRAPE_INTERVAL_S = 30


def step_s(
    since_ms: int, until_ms: int, points: int = 400, floor_s: int = SCRAPE_INTERVAL_S
) -> int:
    """The query_range step: about ``points`` points over the period, at least ``floor_s`` (the
    scrape interval: finer steps only repeat samples)."""
    return max(floor_s, -(-(until_ms - since_ms) // 1000 // points))


def rate_window_s(step: int, scrape_interval_s: int = SCRAPE_INTERVAL_S) -> int:
    """The range of ``rate()``, Grafana's ``$__rate_interval``: the step plus one scrape
    interval, and at least four scrape intervals (so that a window always holds two samples)."""
    return max(step + scrape_interval_s, 4 * scrape_interval_s)


def render_query(query: Query, selector: str, rate_s: int) -> str:
    """The PromQL to send: the selector (``namespace="shop"``, or empty) and rate window in."""
    sel = "{" + selector + "}" if selector.strip() else ""
    return query.promql.replace("{sel}", sel).replace("{rate}", f"{rate_s}s")


_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def legend(template: str, metric: Mapping[str, str]) -> str:
    """Grafana's legend format: ``{{label}}`` is the series' label value; ``{{pod}}`` falls back
    to ``instance`` (outside Kubernetes, scraped targets have no pod label)."""

    def value(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in metric:
            return metric[name]
        return metric.get("instance", "") if name == "pod" else ""

    return _LEGEND_LABEL.sub(value, template).strip() or "value"


def matrix_lines(result: Iterable[Mapping[str, Any]], query: Query) -> list[Line]:
    """The lines of one ``query_range`` matrix result (``data.result``): one per series, its
    samples in seconds turned to ms; NaN (a rate over no samples) is a gap.

    Raises:
        ValueError: the result is not a matrix of ``[time, "value"]`` pairs.
    """
    lines = []
    for series in result:
        metric = series.get("metric", {})
        samples = series.get("values")
        if not isinstance(samples, list):
            raise ValueError("not a matrix result: a series without values")
        times = tuple(round(float(t) * 1000) for t, _ in samples)
        values = tuple(_sample(v) for _, v in samples)
        lines.append(Line(legend(query.legend, metric), times, values, query.style))
    return sorted(lines, key=lambda line: line.label)


def _sample(text: str) -> float | None:
    value = float(text)
    return None if value != value or value in (float("inf"), float("-inf")) else value


def runtime_panel(spec: PanelQueries, results: Sequence[Sequence[Mapping[str, Any]]]) -> Panel:
    """A runtime panel from the matrix result of each of its queries (in order)."""
    lines = [
        line
        for q, result in zip(spec.queries, results, strict=True)
        for line in matrix_lines(result, q)
    ]
    panel = Panel(spec.title, spec.unit, tuple(lines), levels=spec.levels)
    if panel.empty:
        return Panel(
            spec.title,
            spec.unit,
            (),
            note="no samples in this period (not scraped, or not exported by this version)",
            levels=spec.levels,
        )
    return panel


def drift_summary(panel: Panel | None) -> str:
    """The summary's drift line: per quantity, the highest PSI of the period; the quantities at
    or above the significant level named."""
    if panel is None:
        return (
            "input drift: not in the accuracy reports (worker_input_drift_psi is a worker gauge); "
            "needs --prometheus-url"
        )
    peaks = {
        line.label: max(v for v in line.values if v is not None)
        for line in panel.lines
        if any(v is not None for v in line.values)
    }
    if not peaks:
        return "input drift: no PSI samples in this period (no drift reference in the model?)"
    significant = PSI_LEVELS[-1][0]
    above = sorted(name for name, peak in peaks.items() if peak >= significant)
    top = max(peaks, key=lambda name: peaks[name])
    return f"input drift: highest PSI {peaks[top]:.3f} ({top}) over {len(peaks)} quantities; " + (
        f"at or above {significant}: {', '.join(above)}"
        if above
        else f"none at or above {significant}"
    )


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def period_title(since_ms: int, until_ms: int) -> str:
    return f"Recommender report {_iso(since_ms)} .. {_iso(until_ms)}"
