"""``worker dataset export`` without a broker: the window, where each partition starts and
stops, what is written and skipped, the summary, and the directory it leaves (FakeConsumer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from worker import cli
from worker.apps import dataset, export
from worker.apps.export import (
    OUTSIDE_WINDOW,
    STOP_EMPTY,
    STOP_END,
    STOP_IDLE,
    STOP_UNTIL,
    EmptyExportError,
    Export,
    Window,
)
from worker.config import as_instant
from worker.core.errors import ConfigError
from worker.testing import FakeBroker, FakeClock, FakeConsumer
from worker.wire.codec import codec_for

EVENTS, PURCHASES = "ev", "pu"
T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z
MIN = 60_000
WINDOW = Window(T0, T0 + 60 * MIN, grace_ms=5 * MIN)
EVENT_CODEC = codec_for("BrowsingEvent")
PURCHASE_CODEC = codec_for("PurchaseOutcome")


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def _record(self, event: str, **kw: Any) -> None:
        self.lines.append((event, kw))

    info = warning = error = debug = _record

    def events(self, name: str) -> list[dict[str, Any]]:
        return [kw for event, kw in self.lines if event == name]


def _event(i: int, t: int, *, user: str = "u1", product: str = "p1", etype: str = "VIEW"):
    return {
        "event_id": f"e{i}",
        "user_id": user,
        "session_id": f"s-{user}",
        "event_type": etype,
        "product_id": product,
        "category_id": "c1",
        "price": 9.5,
        "event_time": t,
    }


def _purchase(order: str, t: int, *, user: str = "u1", product: str = "p1"):
    return {
        "order_id": order,
        "user_id": user,
        "session_id": f"s-{user}",
        "product_id": product,
        "quantity": 1,
        "price": 9.0,
        "event_time": t,
    }


def _add_event(broker: FakeBroker, partition: int, record: dict, ts: int | None = None) -> None:
    broker.add(
        EVENTS,
        partition,
        record["user_id"].encode(),
        EVENT_CODEC.encode(record),
        timestamp_ms=record["event_time"] if ts is None else ts,
    )


def _export(broker: FakeBroker, log: _Log, clock: FakeClock | None = None, **kw: Any) -> Export:
    consumer = FakeConsumer(
        broker,
        config={"enable.auto.commit": False, "enable.partition.eof": True},
        clock=clock,
    )
    return Export(
        consumer,
        {EVENTS: ("event", EVENT_CODEC), PURCHASES: ("purchase", PURCHASE_CODEC)},
        WINDOW,
        log=log,
        clock=clock or FakeClock(tick_s=0.001),
        now_ms=lambda: T0 + 10**9,
        **kw,
    )


def _shop() -> FakeBroker:
    """Events on 3 partitions, purchases on 1, with every case of the window's edges."""
    broker = FakeBroker(topic_partitions={EVENTS: 3, PURCHASES: 1})
    # Partition 0: two records before since - grace (not read), one in the grace before since
    # (read, outside the window), three in it, a bad payload and a wrong key (skipped), one after
    # until but inside the grace (read, outside), one stamped after until + grace (stop), and one
    # more after it (never read).
    _add_event(broker, 0, _event(0, T0 - 20 * MIN))  # offset 0
    _add_event(broker, 0, _event(1, T0 - 6 * MIN))  # 1
    _add_event(broker, 0, _event(2, T0 - 1 * MIN))  # 2: read, outside
    _add_event(broker, 0, _event(3, T0, product="p1"))  # 3: written (since is included)
    _add_event(broker, 0, _event(4, T0 + MIN, product="p2", etype="ADD_TO_CART"))  # 4
    broker.add(EVENTS, 0, b"u1", b"not avro", timestamp_ms=T0 + 2 * MIN)  # 5: undecodable
    bad_key = _event(6, T0 + 3 * MIN)
    broker.add(EVENTS, 0, b"someone-else", EVENT_CODEC.encode(bad_key), timestamp_ms=T0 + 3 * MIN)
    _add_event(broker, 0, _event(7, T0 + 59 * MIN, product="p2"))  # 7: written
    _add_event(broker, 0, _event(8, T0 + 60 * MIN))  # 8: until is excluded: outside
    _add_event(broker, 0, _event(9, T0 + 66 * MIN))  # 9: stamped after until + grace: stop
    _add_event(broker, 0, _event(10, T0 + 30 * MIN))  # 10: never read
    # Partition 1: only old records: nothing after since - grace.
    _add_event(broker, 1, _event(20, T0 - 60 * MIN, user="u2"))
    # Partition 2: in the window up to its end; a late record (event time in the window, Kafka
    # timestamp later but inside the grace) is written.
    _add_event(broker, 2, _event(30, T0 + 10 * MIN, user="u3", product="p3"))
    _add_event(broker, 2, _event(31, T0 + 20 * MIN, user="u3", product="p3"), ts=T0 + 62 * MIN)
    # Purchases: one in the window, one before it.
    for record in (_purchase("o0", T0 - 2 * MIN), _purchase("o1", T0 + 30 * MIN, product="p4")):
        broker.add(
            PURCHASES, 0, b"u1", PURCHASE_CODEC.encode(record), timestamp_ms=record["event_time"]
        )
    return broker


PARTITIONS = {EVENTS: 3, PURCHASES: 1}


# -- the window ------------------------------------------------------------------------------


def test_window_edges() -> None:
    w = Window(1000, 2000, grace_ms=100)
    assert (w.contains(999), w.contains(1000), w.contains(1999), w.contains(2000)) == (
        False,
        True,
        True,
        False,
    )
    assert (w.passed(2100), w.passed(2101)) == (False, True)
    assert w.seek_ms == 900
    assert Window(50, 60, grace_ms=100).seek_ms == 0
    with pytest.raises(ValueError, match="empty"):
        Window(2000, 2000)
    with pytest.raises(ValueError, match="negative"):
        Window(1, 2, grace_ms=-1)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2023-11-14T22:13:20Z", T0),
        ("2023-11-14T22:13:20", T0),
        ("2023-11-14T23:13:20+01:00", T0),
        ("2023-11-14 22:13:20.000Z", T0),
        (str(T0), T0),
    ],
)
def test_instants(text: str, ms: int) -> None:
    assert as_instant(text) == ms


def test_bad_instant() -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        as_instant("yesterday")


# -- reading ---------------------------------------------------------------------------------


def test_export_reads_the_window_and_stops_where_it_should() -> None:
    log = _Log()
    job = _export(_shop(), log)
    job.plan(PARTITIONS)
    written = list(job.records())

    assert [(k, r.get("event_id") or r["order_id"]) for k, r in written] == [
        ("event", "e3"),
        ("event", "e4"),
        ("event", "e7"),
        ("event", "e30"),
        ("event", "e31"),
        ("purchase", "o1"),
    ]
    source = job.source("broker:9092", "2024-01-01T00:00:00+00:00")
    by_partition = {(p["topic"], p["partition"]): p for p in source["partitions"]}
    assert by_partition[(EVENTS, 0)] == {
        "topic": EVENTS,
        "partition": 0,
        "start_offset": 2,  # the first stamped at or after since - grace
        "next_offset": 9,  # offset 9 (after until + grace) stopped it, unread
        "end_offset_at_start": 11,
        "first_offset": 2,
        "last_offset": 8,
        "records": 7,
        "written": 3,
        "skipped": {"InvalidRecordError": 1, OUTSIDE_WINDOW: 2, "UnknownFramingError": 1},
        "stop": STOP_UNTIL,
    }
    assert by_partition[(EVENTS, 1)] == {
        "topic": EVENTS,
        "partition": 1,
        "start_offset": 1,
        "next_offset": 1,
        "end_offset_at_start": 1,
        "first_offset": None,
        "last_offset": None,
        "records": 0,
        "written": 0,
        "skipped": {},
        "stop": STOP_EMPTY,
    }
    assert by_partition[(EVENTS, 2)]["stop"] == STOP_END
    assert (
        by_partition[(EVENTS, 2)]["start_offset"],
        by_partition[(EVENTS, 2)]["next_offset"],
    ) == (
        0,
        2,
    )
    assert by_partition[(PURCHASES, 0)]["skipped"] == {OUTSIDE_WINDOW: 1}
    assert by_partition[(PURCHASES, 0)]["stop"] == STOP_END
    assert source["read"] == 7 + 2 + 2
    assert source["written"] == 6
    assert source["skipped"] == {
        "InvalidRecordError": 1,
        OUTSIDE_WINDOW: 3,
        "UnknownFramingError": 1,
    }
    assert source["complete"] is True
    assert source["topics"] == {EVENTS: "event", PURCHASES: "purchase"}
    assert (source["since_ms"], source["until_ms"], source["grace_ms"]) == (
        T0,
        T0 + 60 * MIN,
        5 * MIN,
    )
    assert source["since"] == "2023-11-14T22:13:20+00:00"
    # Nothing is committed, and no group is joined: partitions are assigned directly.
    calls = [name for name, _ in job.consumer.calls]
    assert "commit" not in calls and "subscribe" not in calls
    assert job.consumer.broker.committed == {}
    (planned,) = log.events("export_planned")
    assert planned["partitions"] == 4 and planned["to_read"] == 3


def test_catalogue_from_the_records() -> None:
    job = _export(_shop(), _Log())
    job.plan(PARTITIONS)
    for _ in job.records():
        pass
    cat = job.products.catalogue()
    assert cat.product_ids == ("p1", "p2", "p3", "p4")
    assert cat.category_ids == ("c1", "c1", "c1", "")
    assert cat.prices.tolist() == [9.5, 9.5, 9.5, 9.0]  # p4 only bought: its purchase price
    # Views: p1 once (e3), p2 once (e7; e4 is a cart), p3 twice, p4 never.
    assert cat.popularity.tolist() == [0.25, 0.25, 0.5, 0.0]


def test_a_partition_held_back_is_given_up_after_max_wait() -> None:
    """An open transaction holds the last stable offset below the end captured at the start: the
    export waits max_wait_s for it, then gives the partition up and says so."""
    broker = FakeBroker(topic_partitions={EVENTS: 1, PURCHASES: 1})
    _add_event(broker, 0, _event(0, T0 + MIN))
    log = _Log()
    clock = FakeClock()
    job = _export(broker, log, clock, max_wait_s=10.0, progress_every_s=1000.0)
    real = job.consumer.get_watermark_offsets
    job.consumer.get_watermark_offsets = lambda tp, **kw: (0, real(tp)[1] + 3)  # type: ignore[method-assign]
    job.plan({EVENTS: 1, PURCHASES: 1})
    assert [r["event_id"] for _, r in job.records()] == ["e0"]
    source = job.source("b", "now")
    (ev,) = [p for p in source["partitions"] if p["topic"] == EVENTS]
    assert (ev["stop"], ev["next_offset"], ev["end_offset_at_start"]) == (STOP_IDLE, 1, 4)
    assert source["complete"] is False
    (gave_up,) = log.events("export_gave_up_waiting")
    assert gave_up["partitions"] == [f"{EVENTS}[0]@1"]


def test_progress_lines() -> None:
    log = _Log()
    job = _export(_shop(), log, FakeClock(tick_s=1.0), progress_every_s=2.0, batch_size=1)
    job.plan(PARTITIONS)
    list(job.records())
    lines = log.events("export_progress")
    assert lines, "no progress line"
    last = lines[-1]
    assert set(last) == {
        "read",
        "written",
        "skipped",
        "records_per_s",
        "per_topic",
        "partitions_done",
    }
    assert last["read"] <= 11 and last["partitions_done"].endswith("/4")


# -- the directory ---------------------------------------------------------------------------


def test_export_dataset_writes_what_train_reads(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    result = export.export_dataset(
        _export(_shop(), _Log()), PARTITIONS, out, bootstrap_servers="broker:9092"
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "catalogue.csv",
        "dataset.json",
        "events.avro",
        "purchases.avro",
    ]
    assert [e["event_id"] for e in dataset.iter_events(out)] == ["e3", "e4", "e7", "e30", "e31"]
    assert [p["order_id"] for p in dataset.iter_purchases(out)] == ["o1"]
    assert dataset.read_catalogue(out).product_ids == ("p1", "p2", "p3", "p4")
    meta = json.loads((out / "dataset.json").read_text())
    assert meta == result.meta
    assert (meta["n_events"], meta["n_views"], meta["n_add_to_cart"], meta["n_purchases"]) == (
        5,
        4,
        1,
        1,
    )
    assert meta["generator"] == "worker dataset export"
    assert meta["source"]["kind"] == "kafka"
    assert meta["source"]["bootstrap_servers"] == "broker:9092"
    assert dataset.read_source(out) == meta["source"]
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no partial directory left
    text = export.format_summary(result)
    assert "5 events, 1 purchase lines, 4 products; 11 records read" in text
    assert "skipped: InvalidRecordError 1, UnknownFramingError 1, outside_window 3" in text
    assert f"{EVENTS}[0] offsets [2, 9) records 2..8: read 7, written 3, stop passed_until" in text


def test_an_empty_window_leaves_no_directory(tmp_path: Path) -> None:
    broker = FakeBroker(topic_partitions={EVENTS: 1, PURCHASES: 1})
    _add_event(broker, 0, _event(0, T0 - 60 * MIN))
    with pytest.raises(EmptyExportError):
        export.export_dataset(
            _export(broker, _Log()),
            PARTITIONS | {EVENTS: 1},
            tmp_path / "ds",
            bootstrap_servers="b",
        )
    assert list(tmp_path.iterdir()) == []


def test_a_non_empty_out_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "x").write_text("keep me")
    with pytest.raises(ConfigError, match="not an empty directory"):
        export.export_dataset(
            _export(_shop(), _Log()), PARTITIONS, tmp_path / "ds", bootstrap_servers="b"
        )
    assert (tmp_path / "ds" / "x").read_text() == "keep me"


def test_read_source_without_dataset_json(tmp_path: Path) -> None:
    assert dataset.read_source(tmp_path) is None


# -- command line ----------------------------------------------------------------------------


def test_cli_parses_dataset_export() -> None:
    args = cli.build_parser().parse_args(
        ["dataset", "export", "--out", "d", "--since", "2023-11-14T22:13:20Z"]
        + ["--until", str(T0 + MIN), "--grace-s", "10", "--events-topic", "e", "-X", "a=b"]
    )
    assert (args.command, args.action, args.out) == ("dataset", "export", Path("d"))
    assert (args.since_ms, args.until_ms, args.grace_s) == (T0, T0 + MIN, 10.0)
    assert (args.max_wait_s, args.progress_s) == (60.0, 5.0)
    assert (args.events, args.purchases, args.kafka_props) == ("e", "purchases", ["a=b"])


def test_cli_bad_time_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["dataset", "export", "--out", "d", "--since", "soon", "--until", "1"])
    assert exited.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--since: 'soon' is not an ISO 8601 time" in line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--since", "2023-11-14T00:00:00Z"], "--since and --until are required"),
        (["--since", "2023-11-14T00:00:00Z", "--until", "2023-11-13"], "the window is empty"),
    ],
)
def test_cli_export_refuses_a_missing_or_empty_window(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["dataset", "export", "--out", "d", *argv]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert message in line and "fatal" in line
