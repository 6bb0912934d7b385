"""``worker dataset export``: a dataset directory from the browsing-events and purchases topics.

What is read, and where reading stops, per partition of each topic:

* The consumer reads ``read_committed`` (records of aborted or open transactions never reach the
  dataset), takes its partitions by direct assignment and commits nothing: an export joins no
  consumer group and moves nobody's offsets.
* It starts at the offset ``offsets_for_times`` finds for ``since - grace`` (Kafka timestamps),
  so a partition is not read from its beginning.
* It stops at whichever comes first: the end offset (high watermark) captured when the export
  started (records produced meanwhile belong to the next export), or the first record whose Kafka
  timestamp is later than ``until + grace``. The grace covers records that reach Kafka late or
  out of order (the Kafka timestamp and the event time differ).
* A partition that delivers nothing for ``max_wait_s`` (an open transaction holds back a
  ``read_committed`` reader) is given up with stop reason ``max_wait``, said in the summary.

What is written: the records whose **event time** is in ``[since, until)``; the others are
skipped as ``outside_window``. Undecodable records (either Avro framing, see
:mod:`worker.wire.codec`) and records the worker would dead-letter (a key that is not the user
id, empty ids, ...; :mod:`worker.core.records`) are skipped and counted by error class, never
fatal. The records stream into the dataset files (:func:`worker.apps.dataset.write_dataset`) as
they are read: memory holds one fetch buffer, the products seen (for ``catalogue.csv``: each
product's latest category and price from the records, popularity = its share of the views) and
the distinct sessions and users that ``dataset.json`` counts; not the records.

``dataset.json`` gets a ``source`` block: bootstrap servers, window, grace, export time, and per
partition the offsets read ``[start_offset, next_offset)``, the first and last offsets of the
records read, counts and the stop reason; ``worker train`` copies it into the artifact's
metadata, so a model says which records it was trained on.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, KafkaError, TopicPartition

from worker.apps import dataset
from worker.core.clickstream import Catalogue
from worker.core.errors import BrokerError, ConfigError, DataError
from worker.core.records import to_browsing_event, to_purchase
from worker.wire.codec import AvroCodec

__all__ = [
    "STOP_END",
    "STOP_EMPTY",
    "STOP_IDLE",
    "STOP_UNTIL",
    "OUTSIDE_WINDOW",
    "EmptyExportError",
    "Export",
    "PartitionRange",
    "Window",
    "export_dataset",
    "ExportResult",
    "format_summary",
]

#: Stop reasons of a partition.
STOP_END = "end_offset"  # reached the end offset captured at the start
STOP_UNTIL = "passed_until"  # a record stamped later than until + grace
STOP_EMPTY = "nothing_after_since"  # no record stamped at or after since - grace
STOP_IDLE = "max_wait"  # nothing delivered for max_wait_s (an open transaction?)
#: Skip reason of a decodable, valid record whose event time is not in the window.
OUTSIDE_WINDOW = "outside_window"

KIND_EVENT = "event"
KIND_PURCHASE = "purchase"
_VALIDATORS: dict[str, Callable[[dict[str, Any], bytes | None, int], Any]] = {
    KIND_EVENT: to_browsing_event,
    KIND_PURCHASE: to_purchase,
}


class EmptyExportError(DataError):
    """No record of the window could be written: there is no dataset to make."""


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).isoformat()


@dataclass(frozen=True)
class Window:
    """The event-time window ``[since_ms, until_ms)`` and the grace on Kafka timestamps."""

    since_ms: int
    until_ms: int
    grace_ms: int = 0

    def __post_init__(self) -> None:
        if self.until_ms <= self.since_ms:
            raise ValueError(
                f"the window is empty: until ({_iso(self.until_ms)}) is not after since "
                f"({_iso(self.since_ms)})"
            )
        if self.grace_ms < 0:
            raise ValueError("the grace is negative")

    @property
    def seek_ms(self) -> int:
        """The Kafka timestamp reading starts from (``offsets_for_times``)."""
        return max(0, self.since_ms - self.grace_ms)

    def contains(self, event_time_ms: int) -> bool:
        """Whether a record of this event time belongs to the dataset."""
        return self.since_ms <= event_time_ms < self.until_ms

    def passed(self, timestamp_ms: int) -> bool:
        """Whether a record of this Kafka timestamp ends its partition's reading."""
        return timestamp_ms > self.until_ms + self.grace_ms


@dataclass
class PartitionRange:
    """What was read of one partition: offsets ``[start_offset, next_offset)``, of which the
    records delivered were ``first_offset`` to ``last_offset`` (read_committed delivers no
    aborted record nor transaction marker, which take offsets too)."""

    topic: str
    partition: int
    kind: str  # "event" | "purchase"
    start_offset: int
    end_offset: int  # high watermark when the export started
    next_offset: int = -1  # offsets below it (from start_offset) were read
    first_offset: int | None = None
    last_offset: int | None = None
    records: int = 0  # delivered by the consumer (within the offsets read)
    written: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    stop: str | None = None

    def __post_init__(self) -> None:
        if self.next_offset < 0:
            self.next_offset = self.start_offset
        if self.start_offset >= self.end_offset and self.stop is None:
            self.stop = STOP_END

    @property
    def done(self) -> bool:
        return self.stop is not None

    def read(self, offset: int) -> None:
        """A record at ``offset`` was delivered and is taken (written or skipped)."""
        if self.first_offset is None:
            self.first_offset = offset
        self.last_offset = offset
        self.records += 1
        self.next_offset = offset + 1

    def finish(self, reason: str, next_offset: int | None = None) -> None:
        self.stop = reason
        if next_offset is not None:
            self.next_offset = max(self.next_offset, next_offset)

    def as_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "start_offset": self.start_offset,
            "next_offset": self.next_offset,
            "end_offset_at_start": self.end_offset,
            "first_offset": self.first_offset,
            "last_offset": self.last_offset,
            "records": self.records,
            "written": self.written,
            "skipped": dict(sorted(self.skipped.items())),
            "stop": self.stop,
        }


class _Products:
    """Each product seen: views, latest category and price (events first, then purchases)."""

    def __init__(self) -> None:
        self.views: Counter[str] = Counter()
        self.category: dict[str, str] = {}
        self.price: dict[str, float] = {}
        self._purchase_price: dict[str, float] = {}

    def add(self, kind: str, record: dict[str, Any]) -> None:
        pid = record["product_id"]
        price = record.get("price")
        if kind == KIND_EVENT:
            self.views[pid] += record["event_type"] == "VIEW"
            if record.get("category_id"):
                self.category[pid] = record["category_id"]
            if price is not None and math.isfinite(price):
                self.price[pid] = float(price)
        else:
            self.views[pid] += 0
            if price is not None and math.isfinite(price):
                self._purchase_price[pid] = float(price)

    def catalogue(self) -> Catalogue:
        products = sorted(self.views)
        if not products:
            raise EmptyExportError("no record of the window was written: nothing to export")
        counts = np.array([self.views[p] for p in products], dtype=np.float64)
        total = counts.sum()
        return Catalogue(
            product_ids=tuple(products),
            category_ids=tuple(self.category.get(p, "") for p in products),
            prices=np.array(
                [self.price.get(p, self._purchase_price.get(p, math.nan)) for p in products],
                dtype=np.float64,
            ),
            popularity=counts / total if total else counts,
        )


class Export:
    """Reads the window's records from the topics through a consumer (confluent_kafka's or a
    fake): :meth:`plan` assigns the partitions, :meth:`records` yields what is written.

    Args:
        consumer: a ``read_committed`` consumer without group offsets (``make_consumer`` with
            ``auto_commit=False``), ``enable.partition.eof`` on.
        sources: topic -> (``"event"`` | ``"purchase"``, its codec).
        window: the event-time window and grace.
        log: structured logger (progress lines, warnings).
        clock: monotonic seconds (progress, waits).
        now_ms: wall clock in epoch ms, for the plausibility of event times.
        progress_every_s: seconds between ``export_progress`` lines.
        max_wait_s: a partition that delivers nothing this long is given up (``max_wait``).
    """

    def __init__(
        self,
        consumer: Any,
        sources: Mapping[str, tuple[str, AvroCodec]],
        window: Window,
        *,
        log: Any,
        clock: Callable[[], float] = time.monotonic,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        progress_every_s: float = 5.0,
        max_wait_s: float = 60.0,
        poll_s: float = 0.5,
        batch_size: int = 2000,
    ) -> None:
        self.consumer = consumer
        self.sources = dict(sources)
        self.window = window
        self.log = log
        self.clock = clock
        self.now_ms = now_ms
        self.progress_every_s = progress_every_s
        self.max_wait_s = max_wait_s
        self.poll_s = poll_s
        self.batch_size = batch_size
        self.ranges: dict[tuple[str, int], PartitionRange] = {}
        self.products = _Products()
        self.started_s = clock()
        self.seconds = 0.0

    # -- where to read -----------------------------------------------------------------------

    def plan(self, partitions: Mapping[str, int], timeout_s: float = 30.0) -> None:
        """Find each partition's start (by timestamp) and end (high watermark); assign those
        with something to read.

        Raises:
            BrokerError: a watermark or timestamp lookup failed.
        """
        asked = [
            TopicPartition(topic, p, self.window.seek_ms)
            for topic in self.sources
            for p in range(partitions[topic])
        ]
        try:
            found = self.consumer.offsets_for_times(asked, timeout=timeout_s)
        except Exception as exc:  # KafkaException
            raise BrokerError(f"cannot look up offsets by timestamp: {exc}") from exc
        to_read = []
        for tp in found:
            if tp.error is not None:
                raise BrokerError(f"offsets_for_times {tp.topic}[{tp.partition}]: {tp.error}")
            try:
                low, high = self.consumer.get_watermark_offsets(
                    TopicPartition(tp.topic, tp.partition), timeout=timeout_s
                )
            except Exception as exc:
                raise BrokerError(
                    f"cannot read the end offset of {tp.topic}[{tp.partition}]: {exc}"
                ) from exc
            kind = self.sources[tp.topic][0]
            if tp.offset < 0:  # no record stamped at or after seek_ms
                r = PartitionRange(tp.topic, tp.partition, kind, high, high, stop=STOP_EMPTY)
            else:
                start = max(tp.offset, low)
                r = PartitionRange(tp.topic, tp.partition, kind, start, high)
            self.ranges[(tp.topic, tp.partition)] = r
            if not r.done:
                to_read.append(TopicPartition(tp.topic, tp.partition, r.start_offset))
        if to_read:
            self.consumer.incremental_assign(to_read)
        self.log.info(
            "export_planned",
            since=_iso(self.window.since_ms),
            until=_iso(self.window.until_ms),
            partitions=len(self.ranges),
            to_read=len(to_read),
            offsets_to_read=sum(r.end_offset - r.start_offset for r in self.ranges.values()),
        )

    # -- reading -----------------------------------------------------------------------------

    def records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """The window's records, ``("event" | "purchase", dict)``, as they are read; stops once
        every partition is done."""
        started = last_delivery = next_progress = self.clock()
        next_progress += self.progress_every_s
        while not all(r.done for r in self.ranges.values()):
            messages = self.consumer.consume(self.batch_size, timeout=self.poll_s)
            now = self.clock()
            if messages:
                last_delivery = now
            for msg in messages:
                taken = self._take(msg)
                if taken is not None:
                    yield taken
            if now - last_delivery > self.max_wait_s:
                self._give_up()
            if now >= next_progress:
                self._progress(now - started)
                next_progress = now + self.progress_every_s
        self.seconds = self.clock() - started

    def _take(self, msg: Any) -> tuple[str, dict[str, Any]] | None:
        key = (msg.topic(), msg.partition())
        r = self.ranges.get(key)
        if r is None or r.done:
            return None
        err = msg.error()
        if err is not None:
            self._on_error(r, msg, err)
            return None
        offset = msg.offset()
        if offset >= r.end_offset:
            self._finish(r, STOP_END, r.end_offset)
            return None
        ts_type, ts = msg.timestamp()
        if ts_type != TIMESTAMP_NOT_AVAILABLE and self.window.passed(ts):
            self._finish(r, STOP_UNTIL, offset)
            return None
        r.read(offset)
        if offset + 1 >= r.end_offset:
            self._finish(r, STOP_END, r.end_offset)
        kind, codec = self.sources[r.topic]
        try:
            record = codec.decode(msg.value())
            _VALIDATORS[kind](record, msg.key(), self.now_ms())
        except DataError as exc:
            r.skipped[type(exc).__name__] += 1
            return None
        if not self.window.contains(record["event_time"]):
            r.skipped[OUTSIDE_WINDOW] += 1
            return None
        r.written += 1
        self.products.add(kind, record)
        return kind, record

    def _on_error(self, r: PartitionRange, msg: Any, err: Any) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            # The end as a read_committed reader sees it: the last stable offset. Below the end
            # captured at the start, an open transaction holds it back: wait for it.
            if msg.offset() >= r.end_offset:
                self._finish(r, STOP_END, r.end_offset)
            return
        if err.fatal():
            raise BrokerError(f"consumer failed: {err.name()}")
        self.log.warning("export_consumer_error", error=err.name(), topic=r.topic)

    def _finish(self, r: PartitionRange, reason: str, next_offset: int) -> None:
        r.finish(reason, next_offset)
        self.consumer.incremental_unassign([TopicPartition(r.topic, r.partition)])

    def _give_up(self) -> None:
        waiting = [r for r in self.ranges.values() if not r.done]
        for r in waiting:
            self._finish(r, STOP_IDLE, r.next_offset)
        self.log.warning(
            "export_gave_up_waiting",
            max_wait_s=self.max_wait_s,
            partitions=[f"{r.topic}[{r.partition}]@{r.next_offset}" for r in waiting],
            hint="an open transaction holds back a read_committed reader, or the broker is away",
        )

    def _progress(self, elapsed_s: float) -> None:
        totals = self.totals()
        per_topic: Counter[str] = Counter()
        for r in self.ranges.values():
            per_topic[r.topic] += r.records
        self.log.info(
            "export_progress",
            read=totals["read"],
            written=totals["written"],
            skipped=totals["skipped"],
            records_per_s=round(totals["read"] / elapsed_s) if elapsed_s > 0 else None,
            per_topic=dict(per_topic),
            partitions_done=f"{sum(r.done for r in self.ranges.values())}/{len(self.ranges)}",
        )

    # -- what was read -----------------------------------------------------------------------

    def totals(self) -> dict[str, Any]:
        """Records read, written and skipped (by reason) over every partition."""
        skipped: Counter[str] = Counter()
        for r in self.ranges.values():
            skipped.update(r.skipped)
        return {
            "read": sum(r.records for r in self.ranges.values()),
            "written": sum(r.written for r in self.ranges.values()),
            "skipped": dict(sorted(skipped.items())),
        }

    def source(self, bootstrap_servers: str, exported_at: str) -> dict[str, Any]:
        """The ``source`` block of ``dataset.json`` (and of a model trained on it)."""
        ranges = sorted(self.ranges.values(), key=lambda r: (r.topic, r.partition))
        return {
            "kind": "kafka",
            "bootstrap_servers": bootstrap_servers,
            "isolation_level": "read_committed",
            "topics": {topic: kind for topic, (kind, _) in self.sources.items()},
            "since": _iso(self.window.since_ms),
            "until": _iso(self.window.until_ms),
            "since_ms": self.window.since_ms,
            "until_ms": self.window.until_ms,
            "grace_ms": self.window.grace_ms,
            "exported_at": exported_at,
            "complete": all(r.stop != STOP_IDLE for r in ranges),
            **self.totals(),
            "partitions": [r.as_dict() for r in ranges],
        }


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    meta: dict[str, Any]  # dataset.json
    seconds: float


def export_dataset(
    export: Export,
    partitions: Mapping[str, int],
    out_dir: Path | str,
    *,
    bootstrap_servers: str,
) -> ExportResult:
    """Plan, read and write: a dataset directory at ``out_dir`` (written beside it first, then
    renamed, so that a failed export leaves no directory that looks complete).

    Raises:
        ConfigError: ``out_dir`` exists and is not an empty directory.
        EmptyExportError: no record of the window.
        BrokerError: the broker failed the lookups or the consumer failed fatally.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty directory")
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    exported_at = dt.datetime.now(dt.timezone.utc).isoformat()
    try:
        export.plan(partitions)
        dataset.write_dataset(
            partial,
            export.products.catalogue,
            export.records(),
            {"generator": "worker dataset export"},
        )
        meta_path = partial / dataset.META_FILE
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        meta["source"] = export.source(bootstrap_servers, exported_at)
        meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty, checked above
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return ExportResult(out, meta, export.seconds)


def format_summary(result: ExportResult) -> str:
    """Lines for the command line: counts, rate, skips by reason, offset ranges."""
    source = result.meta["source"]
    rate = source["read"] / result.seconds if result.seconds > 0 else float("nan")
    lines = [
        f"exported {source['since']} .. {source['until']} to {result.out_dir}: "
        f"{result.meta['n_events']} events, {result.meta['n_purchases']} purchase lines, "
        f"{result.meta['n_products']} products; {source['read']} records read in "
        f"{result.seconds:.1f} s ({rate:,.0f} records/s), {source['written']} written",
        "skipped: " + (", ".join(f"{k} {v}" for k, v in source["skipped"].items()) or "nothing"),
    ]
    if not source["complete"]:
        lines.append("INCOMPLETE: some partitions were given up (stop max_wait), see below")
    for p in source["partitions"]:
        seen = (
            f"records {p['first_offset']}..{p['last_offset']}"
            if p["first_offset"] is not None
            else "no record"
        )
        lines.append(
            f"  {p['topic']}[{p['partition']}] offsets [{p['start_offset']}, {p['next_offset']}) "
            f"{seen}: read {p['records']}, written {p['written']}, stop {p['stop']}"
        )
    return "\n".join(lines)
