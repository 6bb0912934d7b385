"""``worker report`` end to end over the real broker: accuracy reports written with the
monitor's codec to an accuracy topic (two partitions), around and inside the period, with a
re-sent window, undecodable values and an aborted transaction; the command writes a PNG of the
expected size and prints a summary that matches exactly the records written.
"""

from __future__ import annotations

import struct
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic

from tests.report_records import MIN, comparison, version, window
from worker import cli
from worker.apps.monitor import report_codec
from worker.apps.report_figure import DPI, figure_size_in
from worker.config import KafkaSettings
from worker.core import report as series
from worker.kafka.admin import admin_client

pytestmark = pytest.mark.kafka


def _create(bootstrap: str, topic: str, partitions: int) -> None:
    admin = admin_client(KafkaSettings(bootstrap))
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(30)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_of_the_period_from_the_accuracy_topic(kafka_bootstrap, tmp_path, capsys) -> None:
    topic = f"accuracy-report-{uuid.uuid4().hex[:8]}"
    _create(kafka_bootstrap, topic, 2)
    codec = report_codec(None, topic)
    now = int(time.time() * 1000)
    since = (now - 2 * 3_600_000) // MIN * MIN
    until = since + 30 * MIN

    in_period = []
    for i in range(6):
        versions = (version("m1", 20 + i, 8 + i, 5, 7, 6, 2),)
        if i >= 2:  # a challenger from the third window on
            versions += (version("m2", 5 + i, 3, 1, 2, 2, 1),)
        pair = comparison("m1", "m2", 0.01 * i) if i >= 2 else None
        in_period.append(window(since + i * 5 * MIN, versions, comparison=pair))
    resent = window(since + 5 * MIN, (version("m1", 99, 1, 1, 1),))  # same window, written later
    before = window(since - 10 * MIN, (version("m1", 50, 50, 1, 1),))  # read, outside
    long_before = window(since - 5 * 3_600_000, (version("m1", 7, 7, 1, 1),))  # never read
    aborted = window(since + 25 * MIN + 1, (version("m1", 1000, 1000, 1, 1),))

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})

    def send(r, partition: int, stamp: int | None = None) -> None:
        stamp = r.window_end_ms + 2000 if stamp is None else stamp
        value = codec.encode(r.to_avro(stamp))
        producer.produce(
            topic, value, key=str(r.window_start_ms).encode(), partition=partition, timestamp=stamp
        )

    send(long_before, 0)
    send(before, 0)
    for i, r in enumerate(in_period):
        send(r, i % 2)
        if i == 1:
            # The re-sent window replaces the first record of this window (read later).
            send(resent, 1)
            send(r, 1)
    producer.produce(topic, b"not a report", key=b"x", partition=0, timestamp=since + MIN)
    producer.produce(
        topic, b"\xc3\x01 unknown fingerprint", key=b"y", partition=1, timestamp=since + MIN
    )
    assert producer.flush(30) == 0

    txn = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"t-{topic}"})
    txn.init_transactions(30)
    txn.begin_transaction()
    txn.produce(topic, codec.encode(aborted.to_avro(until)), key=b"a", partition=0)
    txn.flush(30)
    txn.abort_transaction(30)

    out = tmp_path / "report.png"
    code = cli.main(
        [
            "report",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--accuracy-topic",
            topic,
            "--since",
            str(since),
            "--until",
            str(until),
            "--output",
            str(out),
            "--max-wait-s",
            "20",
        ]
    )
    printed = capsys.readouterr().out.splitlines()
    assert code == 0, printed

    # The summary: what the topic holds for the period, and nothing else.
    attributed = sum(r.attributed for r in in_period)
    hits = sum(r.hits for r in in_period)
    baseline = sum(r.baseline_hits for r in in_period)
    heuristic = sum(r.heuristic_hits for r in in_period)
    d_lines = sum(r.discovery_lines for r in in_period)
    d_hits = sum(r.discovery_hits for r in in_period)
    m2 = [v for r in in_period for v in r.versions if v.model_version == "m2"]
    m2_attr, m2_hits = sum(v.attributed for v in m2), sum(v.hits for v in m2)

    def pct(n: int, d: int) -> str:
        return f"{n / d:.1%} ({n}/{d})"

    assert printed[1:] == [
        # 6 in the period, the re-sent one and its repeat, the one before: 9 decoded.
        "accuracy reports: 9 read, 6 windows in the period, 2 duplicate, 1 outside the period, "
        "2 undecodable (1 UnknownFramingError, 1 UnknownSchemaError)",
        f"windows {series._iso(since)} .. {series._iso(since + 26 * MIN)}, K=10: "
        f"{sum(r.purchases for r in in_period)} purchase lines, {attributed} attributed",
        f"hit rate: model {pct(hits, attributed)}; popularity {pct(baseline, attributed)}; "
        f"recency heuristic {pct(heuristic, attributed)}; discovery {pct(d_hits, d_lines)}",
        printed[4],  # m1's line (checked below)
        f"version m2: {sum(v.purchases for v in m2)} purchase lines, {m2_attr} attributed; "
        f"hit rate {pct(m2_hits, m2_attr)}; "
        f"popularity {pct(sum(v.baseline_hits for v in m2), m2_attr)}; "
        f"heuristic {pct(sum(v.heuristic_hits for v in m2), m2_attr)}",
        "last comparison: m2 - m1 = +0.050 (95% CI -0.050 .. +0.150)",
        "runtime: " + series.RUNTIME_NEEDS_PROMETHEUS,
    ]
    m1_hits = sum(v.hits for r in in_period for v in r.versions if v.model_version == "m1")
    m1_attr = sum(v.attributed for r in in_period for v in r.versions if v.model_version == "m1")
    assert (
        printed[4].startswith("version m1: ") and f"hit rate {pct(m1_hits, m1_attr)}" in printed[4]
    )

    # The image: a PNG of the size the panels make (5 accuracy panels, the runtime note).
    size = _png_size(out)
    assert printed[0] == f"wrote {out} ({size[0]}x{size[1]} px)"
    accuracy_panels = series.accuracy_panels(
        [series.AccuracyWindow.from_record(r.to_avro(0)) for r in in_period]
    )
    assert [p.title for p in accuracy_panels] == [
        "Hit rate@10 against baselines, per window",
        "Hit rate@10 per model version",
        "Discovery hit rate@10 (products not viewed in the session)",
        "Purchase lines attributed per window",
        "Challenger minus champion, cumulative hit rate@10",
    ]
    expected = series.Report("", since, until, accuracy_panels, (), tuple(printed[1:]))
    width_in, height_in = figure_size_in(expected)
    assert size == (round(width_in * DPI), round(height_in * DPI)) == (1600, size[1])
    assert size[1] > 1000
