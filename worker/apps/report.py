"""``worker report``: a PNG of the dashboard's main panels, for people without Grafana.

Two sources, two thin edges; everything between is pure (:mod:`worker.core.report` makes the
series, :mod:`worker.apps.report_figure` draws them):

* **The accuracy topic** (always). The reader takes the topic's partitions by direct assignment
  (no group, nothing committed), reads ``read_committed``, starts at the offset
  ``offsets_for_times`` finds for ``since`` minus :data:`SEEK_MARGIN_MS` (a report's Kafka
  timestamp is when the monitor wrote it, after its window ended, so nothing of the period is
  before that), and stops at the end offsets captured when it started. Memory holds the figures
  of one window per window start, not the records. Undecodable records are counted by error
  class and skipped. A partition that delivers nothing for ``max_wait_s`` (an open transaction
  holds back read_committed) is given up, and the summary says so.
* **Prometheus** (``--prometheus-url``). ``/metrics`` holds only the present; its history exists
  only in the Prometheus that scraped it, so the runtime panels (throughput, lag, batch size,
  latency, stage times, dead letters, sessions, memory, replicas, input drift) are range queries
  there over the same period. Without a URL the image and the printed summary say that those
  panels need one; nothing is made up.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, TopicPartition

from worker.core import report as series
from worker.core.errors import BrokerError, ConfigError, DataError
from worker.core.report import AccuracyWindows, Panel, Report
from worker.wire.codec import AvroCodec

#: Reading starts this long before ``since`` (Kafka timestamps): covers a monitor whose clock
#: runs a little behind the event times it reports on.
SEEK_MARGIN_MS = 3_600_000
INSTALL_HINT = (
    "worker report draws with matplotlib, the optional 'report' extra: "
    "pip install 'worker[report]' (or pip install 'matplotlib>=3.8')"
)


class ReportDependencyError(ConfigError):
    """matplotlib, the ``report`` extra, is not installed."""


def require_matplotlib() -> None:
    """Fail before reading anything when the figure cannot be drawn.

    Raises:
        ReportDependencyError: matplotlib is missing (the message says how to install it).
    """
    if importlib.util.find_spec("matplotlib") is None:
        raise ReportDependencyError(INSTALL_HINT)


@dataclass
class PartitionRead:
    """What was read of one partition: offsets ``[start, next)`` of ``[start, end)``."""

    partition: int
    start: int
    end: int  # high watermark when the report started
    next: int = -1
    stop: str | None = None

    def __post_init__(self) -> None:
        if self.next < 0:
            self.next = self.start
        if self.start >= self.end and self.stop is None:
            self.stop = "end_offset"


@dataclass
class AccuracyRead:
    topic: str
    windows: AccuracyWindows
    partitions: list[PartitionRead] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return all(p.stop != "max_wait" for p in self.partitions)


def read_accuracy(
    consumer: Any,
    topic: str,
    partitions: int,
    codec: AvroCodec,
    since_ms: int,
    until_ms: int,
    *,
    log: Any,
    max_wait_s: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
) -> AccuracyRead:
    """The accuracy reports of windows starting in ``[since_ms, until_ms)`` (module docstring).

    Args:
        consumer: a ``read_committed`` consumer without group offsets, ``enable.partition.eof``
            on (``make_consumer(..., auto_commit=False)``).

    Raises:
        BrokerError: an offset lookup failed, or the consumer failed fatally.
    """
    started = clock()
    read = AccuracyRead(topic, AccuracyWindows(since_ms, until_ms))
    seek = max(0, since_ms - SEEK_MARGIN_MS)
    try:
        found = consumer.offsets_for_times(
            [TopicPartition(topic, p, seek) for p in range(partitions)], timeout=30
        )
    except Exception as exc:  # KafkaException
        raise BrokerError(f"cannot look up offsets by timestamp in {topic}: {exc}") from exc
    for tp in found:
        if tp.error is not None:
            raise BrokerError(f"offsets_for_times {topic}[{tp.partition}]: {tp.error}")
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), 30)
        except Exception as exc:
            raise BrokerError(f"cannot read the end offset of {topic}: {exc}") from exc
        start = high if tp.offset < 0 else max(tp.offset, low)
        read.partitions.append(PartitionRead(tp.partition, start, high))
    by_partition = {p.partition: p for p in read.partitions}
    todo = [TopicPartition(topic, p.partition, p.start) for p in read.partitions if not p.stop]
    if todo:
        consumer.assign(todo)
    last_delivery = clock()
    while not all(p.stop for p in read.partitions):
        messages = consumer.consume(500, timeout=0.5)
        now = clock()
        if messages:
            last_delivery = now
        for msg in messages:
            p = by_partition.get(msg.partition())
            if p is None or p.stop:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if msg.offset() >= p.end:
                        p.stop = "end_offset"
                    continue
                if err.fatal():
                    raise BrokerError(f"consumer failed: {err.name()}")
                log.warning("report_consumer_error", error=err.name(), topic=topic)
                continue
            if msg.offset() >= p.end:
                p.stop = "end_offset"
                continue
            p.next = msg.offset() + 1
            if p.next >= p.end:
                p.stop = "end_offset"
            try:
                read.windows.add(codec.decode(msg.value()))
            except DataError as exc:
                read.windows.skip(type(exc).__name__)
            except (KeyError, TypeError, ValueError):  # decodes, but not as a report
                read.windows.skip("NotAnAccuracyReport")
        if now - last_delivery > max_wait_s:
            waiting = [p for p in read.partitions if not p.stop]
            for p in waiting:
                p.stop = "max_wait"
            log.warning(
                "report_gave_up_waiting",
                max_wait_s=max_wait_s,
                partitions=[f"{topic}[{p.partition}]@{p.next}" for p in waiting],
                hint="an open transaction holds back a read_committed reader, or the broker is "
                "away",
            )
    read.seconds = clock() - started
    return read


def runtime_panels(
    prometheus: Any,
    since_ms: int,
    until_ms: int,
    selector: str = "",
    *,
    scrape_interval_s: int = series.SCRAPE_INTERVAL_S,
) -> tuple[Panel, ...]:
    """The runtime panels from Prometheus range queries over the period.

    Args:
        prometheus: a :class:`~worker.ops.prometheus.PrometheusClient` (``query_range``).
        scrape_interval_s: how often Prometheus scrapes the pods: the finest step, and the
            rate window's unit (:func:`worker.core.report.rate_window_s`).

    Raises:
        PrometheusError: Prometheus is unreachable or refused a query.
    """
    step = series.step_s(since_ms, until_ms, floor_s=scrape_interval_s)
    rate = series.rate_window_s(step, scrape_interval_s)
    panels = []
    for spec in series.RUNTIME_PANELS:
        results = [
            prometheus.query_range(
                series.render_query(q, selector, rate), since_ms / 1000, until_ms / 1000, step
            )
            for q in spec.queries
        ]
        panels.append(series.runtime_panel(spec, results))
    return tuple(panels)


def build_report(
    read: AccuracyRead, runtime: tuple[Panel, ...] | None, *, source: str = ""
) -> Report:
    """The report of what was read; ``runtime`` None: no Prometheus URL was given."""
    windows = read.windows
    summary = series.accuracy_summary(windows)
    if not read.complete:
        given_up = [p.partition for p in read.partitions if p.stop == "max_wait"]
        summary.append(f"INCOMPLETE: partitions {given_up} of {read.topic} were given up")
    drift = next((p for p in runtime or () if p.title.startswith("Input drift")), None)
    if runtime is None:
        summary.append("runtime: " + series.RUNTIME_NEEDS_PROMETHEUS)
    else:
        summary.append(f"runtime: {len(runtime)} panels from {source}")
        summary.append(series.drift_summary(drift))
    return Report(
        title=series.period_title(windows.since_ms, windows.until_ms),
        since_ms=windows.since_ms,
        until_ms=windows.until_ms,
        accuracy=series.accuracy_panels(windows.windows()),
        runtime=runtime or (),
        summary=tuple(summary),
        runtime_note="" if runtime is not None else series.RUNTIME_NEEDS_PROMETHEUS,
    )


def write_png(report: Report, output: Path) -> tuple[int, int]:
    """Draw the report into ``output`` (PNG; written beside it, then renamed); its pixel size.

    Raises:
        ReportDependencyError: matplotlib is missing.
    """
    require_matplotlib()
    from worker.apps.report_figure import DPI, draw_report

    figure = draw_report(report)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    figure.savefig(partial, format="png", dpi=DPI)
    partial.replace(output)
    width, height = figure.get_size_inches()
    return round(width * DPI), round(height * DPI)
