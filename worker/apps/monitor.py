"""The monitor loop (``worker monitor``): join suggestions with later purchases and report rolling
accuracy per event-time window to the accuracy topic, the logs and ``/metrics``.

Suggestions and purchases are keyed by ``user_id`` and have the same partition count, so with the
range assignor partition ``p`` of both topics goes to the same monitor instance and every user's
suggestions and purchases meet in one process. The metric definitions are in
:mod:`worker.core.accuracy`.

Watermarks: a partition's watermark is the newest event time read from it; a partition that is
caught up (end of partition) counts as caught up to ``now - idle_partition_grace_s``. A purchase
is evaluated once the suggestion watermark of its partition reaches its time plus the allowed
lateness; a window closes once every purchase partition's watermark has passed its end.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import deque
from typing import Any

from confluent_kafka import KafkaError, TopicPartition

from worker.config import MonitorSettings
from worker.core.accuracy import AccuracyTracker, PurchaseLine, ShownSuggestion, WindowReport
from worker.core.errors import BrokerError, DataError
from worker.core.records import to_purchase, validate_key
from worker.kafka.admin import DLQ_MAX_MESSAGE_BYTES
from worker.kafka.checkpoint import Checkpoint
from worker.kafka.clients import assign_at, committed_offsets, make_consumer, make_producer
from worker.kafka.dead_letter import dead_letter_of
from worker.kafka.watches import FetchWatch
from worker.model.artifact import read_metadata
from worker.ops.health import Health, serve_http
from worker.ops.metrics import MonitorMetrics
from worker.wire.codec import codec_for
from worker.wire.registry import HttpSchemaRegistry

NEVER = -(1 << 62)
PRUNE_INTERVAL_S = 5.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Monitor:
    def __init__(self, settings: MonitorSettings, log: Any) -> None:
        self.settings = settings
        self.log = log
        metadata = read_metadata(settings.models_dir)
        self.baseline = list(metadata.get("popular_top", []))[: settings.k]
        self.tracker = AccuracyTracker(
            k=settings.k,
            attribution_window_ms=int(settings.attribution_window_s * 1000),
            window_ms=int(settings.window_s * 1000),
            baseline=self.baseline,
        )
        registry = (
            HttpSchemaRegistry(settings.schema_registry_url)
            if settings.schema_registry_url
            else None
        )
        topics = settings.topics
        self.suggestion_codec = codec_for(
            "ProductSuggestion", registry=registry, topic=topics.suggestions
        )
        self.purchase_codec = codec_for(
            "PurchaseOutcome", registry=registry, topic=topics.purchases
        )
        self.report_codec = codec_for("AccuracyReport", registry=registry, topic=topics.accuracy)
        self.metrics = MonitorMetrics()
        self.health = Health()
        self.health.model_loaded = True  # the baseline list is loaded
        self.fetch_watch = FetchWatch()
        self._stop = threading.Event()
        self._marks: dict[tuple[str, int], int] = {}  # newest event time per partition
        self._at_end: dict[tuple[str, int], bool] = {}
        # Per partition, (event time, offset) of the records the join may still need.
        self._replay: dict[tuple[str, int], deque[tuple[int, int]]] = {}
        self._next: dict[tuple[str, int], int] = {}
        self._stored: dict[tuple[str, int], int] = {}
        self.reports: list[WindowReport] = []
        # librdkafka properties: strings, numbers, booleans and callbacks.
        consumer_overrides: dict[str, Any] = {
            "partition.assignment.strategy": "range",
            "enable.partition.eof": True,
            "statistics.interval.ms": 5000,
            "stats_cb": self._on_stats,
        }
        self.consumer = make_consumer(
            settings.kafka,
            settings.group_id,
            log,
            **consumer_overrides,
        )
        # Like the worker's at-least-once checkpoint: the loop stays live while the broker is
        # away, a stuck producer's queued outputs are re-sent through a fresh one, and a second
        # stuck producer fails liveness.
        self.checkpoint = Checkpoint(
            make_producer(settings.kafka, log),
            self.consumer,
            on_wait=self._waiting_for_broker,
            on_stuck=self._outputs_stuck,
            replacement=lambda: make_producer(settings.kafka, log),
            log=log,
        )

    def _waiting_for_broker(self, _waited_s: float) -> None:
        self.health.beat()

    def _outputs_stuck(self, reason: str | None) -> None:
        self.health.outputs_stuck = reason is not None
        self.metrics.outputs_stuck.set(1 if reason is not None else 0)

    def _on_stats(self, stats_json: str) -> None:
        try:
            stats = json.loads(stats_json)
        except ValueError:
            return
        self.fetch_watch.update(stats, self.health, self.metrics.fetch_stalled, self.log)

    def request_stop(self, *_: Any) -> None:
        self._stop.set()
        self.health.stopping = True

    def run(self, *, install_signal_handlers: bool = True) -> int:
        if install_signal_handlers:
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        server = serve_http(self.settings.metrics_port, self.metrics.registry, self.health)
        topics = self.settings.topics
        self._resume_from_last_report()
        self.consumer.subscribe(
            [topics.suggestions, topics.purchases],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
        )
        self.log.info(
            "monitor_started",
            suggestions=topics.suggestions,
            purchases=topics.purchases,
            k=self.settings.k,
            attribution_window_s=self.settings.attribution_window_s,
            window_s=self.settings.window_s,
            baseline_size=len(self.baseline),
        )
        last_prune = time.monotonic()
        try:
            while not self._stop.is_set():
                messages = self.consumer.consume(1000, timeout=0.2)
                self.health.beat()
                next_offsets = self._ingest(messages)
                self._advance(next_offsets)
                if self.settings.exit_at_end and self._all_at_end():
                    self._emit(self.tracker.flush(), {})
                    self.log.info("monitor_reached_end")
                    break
                if time.monotonic() - last_prune > PRUNE_INTERVAL_S:
                    last_prune = time.monotonic()
                    self._prune()
        finally:
            self.checkpoint.producer.flush(10)
            try:
                self.consumer.close()
            except Exception as exc:
                self.log.warning("consumer_close_failed", error=str(exc))
            if server is not None:
                server.shutdown()
            self.log.info(
                "monitor_stopped", reports=len(self.reports), pending_purchases=self.tracker.pending
            )
        return 0

    # -- input ---------------------------------------------------------------------------------

    def _ingest(self, messages: list[Any]) -> dict[tuple[str, int], int]:
        topics = self.settings.topics
        clock = now_ms()
        next_offsets: dict[tuple[str, int], int] = {}
        dead = []
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._at_end[(msg.topic(), msg.partition())] = True
                    continue
                if err.fatal():
                    raise BrokerError(f"fatal consumer error: {err.name()}")
                self.log.warning("consume_error", error=err.name())
                continue
            tp = (msg.topic(), msg.partition())
            self._at_end[tp] = False
            next_offsets[tp] = msg.offset() + 1
            try:
                if msg.topic() == topics.suggestions:
                    event_time = self._add_suggestion(msg)
                else:
                    event_time = self._add_purchase(msg, clock)
                self._replay.setdefault(tp, deque()).append((event_time, msg.offset()))
            except DataError as exc:
                self.metrics.dead_letters.labels(error_class=type(exc).__name__).inc()
                dead.append(dead_letter_of(exc, msg, DLQ_MAX_MESSAGE_BYTES - 64 * 1024))
        for d in dead:
            # The dead-letter topic of the topic the record came from.
            source = dict(d.headers)["dlq.source.topic"].decode()
            self.checkpoint.produce(
                topics.dead_letter(source), key=d.key, value=d.value, headers=d.headers
            )
        return next_offsets

    def _add_suggestion(self, msg: Any) -> int:
        record = self.suggestion_codec.decode(msg.value())
        validate_key(msg.key(), record["user_id"])
        shown = ShownSuggestion(
            event_time_ms=record["event_time"],
            suggestion_id=record["suggestion_id"],
            model_version=record["model_version"],
            products=tuple(
                p["product_id"] for p in sorted(record["products"], key=lambda p: p["rank"])
            ),
        )
        self.metrics.suggestions_in.inc()
        if not self.tracker.add_suggestion(record["user_id"], shown):
            self.metrics.duplicates.inc()
        tp = (msg.topic(), msg.partition())
        self._marks[tp] = max(self._marks.get(tp, NEVER), shown.event_time_ms)
        return shown.event_time_ms

    def _add_purchase(self, msg: Any, clock: int) -> int:
        purchase = to_purchase(self.purchase_codec.decode(msg.value()), msg.key(), clock)
        self.metrics.purchases_in.inc()
        line = PurchaseLine(
            purchase.user_id, purchase.product_id, purchase.event_time_ms, msg.partition()
        )
        if not self.tracker.add_purchase(line):
            self.metrics.late.inc()
        tp = (msg.topic(), msg.partition())
        self._marks[tp] = max(self._marks.get(tp, NEVER), purchase.event_time_ms)
        return purchase.event_time_ms

    # -- progress ------------------------------------------------------------------------------

    def _watermark(self, tp: tuple[str, int], clock: int) -> int:
        mark = self._marks.get(tp, NEVER)
        if self._at_end.get(tp):
            mark = max(mark, clock - int(self.settings.idle_partition_grace_s * 1000))
        return mark

    def _advance(self, next_offsets: dict[tuple[str, int], int]) -> None:
        topics = self.settings.topics
        clock = now_ms()
        lateness = int(self.settings.allowed_lateness_s * 1000)
        assigned = list(self._at_end)
        suggestion_marks = {
            p: self._watermark((t, p), clock) - lateness
            for t, p in assigned
            if t == topics.suggestions
        }
        self.tracker.evaluate_ready(suggestion_marks)
        purchase_marks = [
            self._watermark(tp, clock) for tp in assigned if tp[0] == topics.purchases
        ]
        reports = (
            self.tracker.close_windows(min(purchase_marks) - lateness) if purchase_marks else []
        )
        self._emit(reports, next_offsets)
        self.metrics.pending.set(self.tracker.pending)

    def _emit(self, reports: list[WindowReport], next_offsets: dict[tuple[str, int], int]) -> None:
        topic = self.settings.topics.accuracy
        emitted = now_ms()
        for report in reports:
            value = self.report_codec.encode(report.to_avro(emitted))
            self.checkpoint.produce(
                topic, key=str(report.window_start_ms).encode(), value=value, timestamp_ms=emitted
            )
            self._log_report(report)
        self.reports.extend(reports)
        # Offsets are stored after the reports are acknowledged, and only up to the records the
        # join still needs (see _replay_offsets), so a restarted monitor reads them again.
        replaced_before = self.checkpoint.replaced
        try:
            self.checkpoint.complete(self._replay_offsets(next_offsets))
        finally:
            self.metrics.producer_replacements.inc(self.checkpoint.replaced - replaced_before)

    def _replay_offsets(
        self, next_offsets: dict[tuple[str, int], int]
    ) -> dict[tuple[str, int], int]:
        """Per partition, the offset a restarted monitor must read from to rebuild its state:
        the first suggestion that may still be attributed, the first purchase of a window not
        yet reported (or the next offset when nothing is needed)."""
        self._next.update(next_offsets)
        lateness = int(self.settings.allowed_lateness_s * 1000)
        horizons = {
            self.settings.topics.suggestions: self.tracker.suggestions_needed_from_ms() - lateness,
            self.settings.topics.purchases: self.tracker.closed_before_ms,
        }
        out = {}
        for tp, records in self._replay.items():
            horizon = horizons[tp[0]]
            while records and records[0][0] < horizon:
                records.popleft()
            offset = records[0][1] if records else self._next.get(tp)
            if offset is not None and offset != self._stored.get(tp):
                out[tp] = offset
                self._stored[tp] = offset
        return out

    def _resume_from_last_report(self) -> None:
        """Continue the cumulative figures and skip the windows already on the accuracy topic."""
        topic = self.settings.topics.accuracy
        # Through make_consumer: its librdkafka log lines go to the JSON log, not raw stderr.
        reader = make_consumer(
            self.settings.kafka, f"{self.settings.group_id}-resume", self.log, auto_commit=False
        )
        try:
            low, high = reader.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
            if high <= low:
                return
            reader.assign([TopicPartition(topic, 0, high - 1)])
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                msg = reader.poll(0.5)
                if msg is None or msg.error() is not None:
                    continue
                last = self.report_codec.decode(msg.value())
                attributed = last["cumulative_attributed"]
                self.tracker.resume(
                    closed_before_ms=last["window_end"],
                    attributed=attributed,
                    hits=round((last["cumulative_hit_rate_at_k"] or 0.0) * attributed),
                    baseline_hits=round(
                        (last["cumulative_baseline_hit_rate_at_k"] or 0.0) * attributed
                    ),
                )
                self.log.info(
                    "monitor_resumed",
                    reported_before=last["window_end"],
                    cumulative_attributed=attributed,
                )
                return
        finally:
            reader.close()

    def _log_report(self, r: WindowReport) -> None:
        m = self.metrics
        m.reports.inc()
        if r.hit_rate_at_k is not None:
            m.hit_rate.set(r.hit_rate_at_k)
        if r.baseline_hit_rate_at_k is not None:
            m.baseline_hit_rate.set(r.baseline_hit_rate_at_k)
        if r.precision_at_k is not None:
            m.precision.set(r.precision_at_k)
        if r.cumulative_hit_rate_at_k is not None:
            m.cumulative_hit_rate.set(r.cumulative_hit_rate_at_k)
        self.log.info(
            "accuracy_window",
            window_start=r.window_start_ms,
            window_end=r.window_end_ms,
            k=r.k,
            purchases=r.purchases,
            attributed=r.attributed,
            hits=r.hits,
            hit_rate_at_k=r.hit_rate_at_k,
            precision_at_k=r.precision_at_k,
            mrr_at_k=r.mrr_at_k,
            baseline_hit_rate_at_k=r.baseline_hit_rate_at_k,
            cumulative_hit_rate_at_k=r.cumulative_hit_rate_at_k,
            model_versions=list(r.model_versions),
        )

    def _prune(self) -> None:
        topics = self.settings.topics
        clock = now_ms()
        marks = [self._watermark(tp, clock) for tp in self._at_end if tp[0] == topics.purchases]
        if marks and self.tracker.pending == 0:
            self.tracker.prune(min(marks) - int(self.settings.allowed_lateness_s * 1000))

    def _all_at_end(self) -> bool:
        return bool(self._at_end) and all(self._at_end.values()) and len(self._at_end) >= 2

    # -- rebalance -----------------------------------------------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        assign_at(consumer, partitions, committed_offsets(consumer, partitions), incremental=False)
        for p in partitions:
            self._at_end.setdefault((p.topic, p.partition), False)
        self.health.assigned_partitions = len(self._at_end)
        self.log.info(
            "partitions_assigned", partitions=[f"{p.topic}/{p.partition}" for p in partitions]
        )

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self.checkpoint.commit_stored()
        for p in partitions:
            for state in (self._replay, self._next, self._stored):
                state.pop((p.topic, p.partition), None)
            self._at_end.pop((p.topic, p.partition), None)
            self._marks.pop((p.topic, p.partition), None)
        self.health.assigned_partitions = len(self._at_end)
