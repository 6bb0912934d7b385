"""``worker report`` without a broker: which records are read (start by timestamp, stop at the
end offsets found at start), undecodable ones counted, the report built from them, the runtime
panels from a Prometheus stand-in, and the command's answer without matplotlib."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path
from typing import Any

import pytest

from tests.report_records import MIN, T0, version, window
from worker import cli
from worker.apps import report
from worker.apps.monitor import report_codec
from worker.core import report as series
from worker.testing import FakeBroker, FakeClock, FakeConsumer, RecordingLog

TOPIC = "acc"
CODEC = report_codec(None, TOPIC)


def _consumer(broker: FakeBroker) -> FakeConsumer:
    return FakeConsumer(broker, config={"enable.partition.eof": True, "enable.auto.commit": False})


def _put(broker: FakeBroker, partition: int, r: Any, emitted_ms: int | None = None) -> None:
    emitted = r.window_end_ms + 2000 if emitted_ms is None else emitted_ms
    broker.add(
        TOPIC,
        partition,
        str(r.window_start_ms).encode(),
        CODEC.encode(r.to_avro(emitted)),
        timestamp_ms=emitted,
    )


def test_reads_from_the_timestamp_to_the_end_found_at_start() -> None:
    broker = FakeBroker(topic_partitions={TOPIC: 2})
    old = window(T0 - 3 * 3_600_000, (version("m1", 5, 1, 1, 1),))
    _put(broker, 0, old)  # stamped more than an hour before since: never read
    in_period = [window(T0 + i * MIN, (version("m1", 10 + i, i, 1, 1),)) for i in range(4)]
    for i, r in enumerate(in_period):
        _put(broker, i % 2, r)
    broker.add(TOPIC, 1, b"x", b"not avro", timestamp_ms=T0 + 5 * MIN)
    _put(broker, 0, window(T0 + 30 * MIN, (version("m1", 3, 1, 1, 1),)))  # after until
    consumer = _consumer(broker)
    read = report.read_accuracy(
        consumer, TOPIC, 2, CODEC, T0, T0 + 10 * MIN, log=RecordingLog(), clock=FakeClock()
    )
    assert [w.window_start_ms for w in read.windows.windows()] == [
        r.window_start_ms for r in in_period
    ]
    assert read.windows.records == 5  # the four, and the one after until
    assert read.windows.outside == 1
    assert dict(read.windows.undecodable) == {"UnknownFramingError": 1}
    assert [(p.partition, p.start, p.next, p.end, p.stop) for p in read.partitions] == [
        (0, 1, 4, 4, "end_offset"),
        (1, 0, 3, 3, "end_offset"),
    ]
    # Records written after the start are the next report's.
    assert read.complete


def test_an_empty_topic_reads_nothing() -> None:
    read = report.read_accuracy(
        _consumer(FakeBroker()), TOPIC, 1, CODEC, T0, T0 + MIN, log=RecordingLog()
    )
    assert read.windows.records == 0 and read.partitions[0].stop == "end_offset"
    built = report.build_report(read, None)
    assert built.runtime == () and built.runtime_note == series.RUNTIME_NEEDS_PROMETHEUS
    assert built.summary[-1] == "runtime: " + series.RUNTIME_NEEDS_PROMETHEUS


class _Prometheus:
    """A Prometheus stand-in: answers each query with one series of two samples."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, float, float, float]] = []

    def query_range(self, query: str, start_s: float, end_s: float, step_s: float):
        self.asked.append((query, start_s, end_s, step_s))
        return [{"metric": {"quantity": "event_type"}, "values": [[start_s, "0.3"], [end_s, "1"]]}]


def test_runtime_panels_query_the_period_and_feed_the_drift_line() -> None:
    prometheus = _Prometheus()
    panels = report.runtime_panels(prometheus, T0, T0 + 60 * MIN, 'namespace="shop"')
    assert [p.title for p in panels] == [s.title for s in series.RUNTIME_PANELS]
    assert len(prometheus.asked) == sum(len(s.queries) for s in series.RUNTIME_PANELS)
    assert {(a[1], a[2], a[3]) for a in prometheus.asked} == {(T0 / 1000, T0 / 1000 + 3600, 30)}
    assert all('namespace="shop"' in a[0] for a in prometheus.asked)
    assert "[120s]" in prometheus.asked[0][0]  # four scrapes of 30 s
    prometheus.asked.clear()
    report.runtime_panels(prometheus, T0, T0 + 60 * MIN, scrape_interval_s=5)
    assert {a[3] for a in prometheus.asked} == {9} and "[20s]" in prometheus.asked[0][0]
    read = report.AccuracyRead(TOPIC, series.AccuracyWindows(T0, T0 + 60 * MIN))
    built = report.build_report(read, panels, source="http://prom:9090")
    assert built.summary[-2:] == (
        "runtime: 11 panels from http://prom:9090",
        "input drift: highest PSI 1.000 (event_type) over 1 quantities; at or above 0.25: "
        "event_type",
    )


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_write_png_writes_a_png_of_the_figure_size(tmp_path: Path) -> None:
    read = report.AccuracyRead(TOPIC, series.AccuracyWindows(T0, T0 + MIN))
    out = tmp_path / "sub" / "r.png"
    size = report.write_png(report.build_report(read, None), out)
    assert _png_size(out) == size and size[0] == 1600
    assert [p.name for p in out.parent.iterdir()] == ["r.png"]


def test_without_matplotlib_the_command_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "matplotlib" else real(name, *a),
    )
    # The broker is never asked: the check comes first.
    code = cli.main(["report", "--since", str(T0), "--bootstrap-servers", "127.0.0.1:1"])
    assert code == 2
    assert "pip install 'worker[report]'" in capsys.readouterr().err


def test_an_unreachable_prometheus_fails_before_the_topic_is_read(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.kafka_fixtures import free_port

    url = f"http://127.0.0.1:{free_port()}"
    # No broker at 127.0.0.1:1 either: the Prometheus error comes first, in a few ms.
    code = cli.main(
        [
            "report",
            "--since",
            str(T0),
            "--bootstrap-servers",
            "127.0.0.1:1",
            "--prometheus-url",
            url,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert f"Prometheus at {url}" in err and "PrometheusError" in err


def test_since_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert "--since is required" in capsys.readouterr().err


def test_the_worker_and_the_monitor_do_not_import_matplotlib() -> None:
    import subprocess
    import sys

    code = (
        "import sys, worker.cli, worker.apps.serve, worker.apps.monitor, worker.apps.report;"
        "sys.exit('matplotlib' in sys.modules)"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[3]).returncode == 0
    )
