"""The monitor loop (``worker monitor``): join suggestions with later purchases (and the browsing
events before them) and report rolling accuracy per event-time window to the accuracy topic, the
logs and ``/metrics``.

Browsing events, suggestions and purchases are keyed by ``user_id`` and have the same partition
count, so with the range assignor partition ``p`` of the three topics goes to the same monitor
instance and every user's events, suggestions and purchases meet in one process (an assignment
where they do not line up is logged as ``partitions_not_aligned``). The metric definitions are in
:mod:`worker.core.accuracy`.

Watermarks: a partition's watermark is the newest event time read from it; a partition that is
caught up (end of partition) counts as caught up to ``now - idle_partition_grace_s``. A purchase
is evaluated once the suggestion and event watermarks of its partition reach its time plus the
allowed lateness; a window closes once every purchase, suggestion and event partition's watermark
has passed its end plus the allowed lateness (suggestions are written after their events, so an
event's answer is waited for).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import KafkaError, TopicPartition

from worker.config import MonitorSettings
from worker.core.accuracy import (
    AccuracyTracker,
    PurchaseLine,
    SessionEvent,
    ShownSuggestion,
    VersionComparison,
    VersionCounts,
    VersionReport,
    WindowReport,
)
from worker.core.errors import BrokerError, DataError, ModelLoadError
from worker.core.records import (
    BrowsingEvent,
    Purchase,
    to_browsing_events,
    to_purchases,
    validate_key,
)
from worker.kafka.admin import DLQ_MAX_MESSAGE_BYTES, admin_client
from worker.kafka.checkpoint import Checkpoint
from worker.kafka.clients import assign_at, committed_offsets, make_consumer, make_producer
from worker.kafka.dead_letter import dead_letter_of
from worker.kafka.group_lag import GroupLagProbe
from worker.kafka.schema_registry import open_schema_registry
from worker.kafka.watches import FetchWatch
from worker.model.artifact import read_metadata, resolve_artifact_dir
from worker.model.registry import serving_state
from worker.ops.health import Health, serve_http
from worker.ops.metrics import MonitorMetrics
from worker.wire.codec import AvroCodec, SchemaRegistry, codec_for

NEVER = -(1 << 62)
PRUNE_INTERVAL_S = 5.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def report_codec(registry: SchemaRegistry | None, topic: str) -> AvroCodec:
    """The accuracy report's codec, which also reads reports written by earlier versions
    (single-object encoding names its writer schema by fingerprint only): every released version
    of the schema, ``schemas/history/accuracy_report/`` (before the live figures, before the
    per-version figures, before the head-to-head comparison's ``windows``, today's)."""
    return codec_for("AccuracyReport", registry=registry, topic=topic)


def read_category_tables(artifact_dir: Path, k: int) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The served model's most viewed products per category (the first ``k``) and each
    product's category, read from its ``tables.npz`` (only these arrays: numpy loads the members
    of an ``.npz`` one by one, so the co-visitation tables are not read).

    Raises:
        ModelLoadError: the tables are missing or unreadable.
    """
    try:
        with np.load(artifact_dir / "tables.npz", allow_pickle=False) as data:
            product_ids = data["product_ids"]
            category_ids = data["category_ids"].tolist()
            category = data["category"]
            category_top = data["category_top"]
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"unreadable tables in {artifact_dir}: {exc}") from exc
    names = [str(c) for c in category_ids]
    tops = {
        names[c]: [str(product_ids[i]) for i in row if i >= 0]
        for c, row in enumerate(category_top[:, :k].tolist())
    }
    product_category = {
        str(p): names[c] for p, c in zip(product_ids.tolist(), category.tolist(), strict=True)
    }
    return tops, product_category


def version_log_fields(v: VersionReport) -> dict[str, Any]:
    """A version's figures as the ``accuracy_window`` log line carries them (the lines behind
    each rate beside it)."""
    return {
        "model_version": v.model_version,
        "purchases": v.purchases,
        "attributed": v.attributed,
        "hits": v.hits,
        "hit_rate_at_k": v.hit_rate_at_k,
        "baseline_hit_rate_at_k": v.baseline_hit_rate_at_k,
        "heuristic_hit_rate_at_k": v.heuristic_hit_rate_at_k,
        "discovery_lines": v.discovery_lines,
        "discovery_hits": v.discovery_hits,
        "discovery_hit_rate_at_k": v.discovery_hit_rate_at_k,
        "purchase_coverage": v.purchase_coverage,
        "events_answered": v.events_answered,
        "cumulative_purchases": v.cumulative_purchases,
        "cumulative_attributed": v.cumulative_attributed,
        "cumulative_hits": v.cumulative_hits,
        "cumulative_hit_rate_at_k": v.cumulative_hit_rate_at_k,
        "cumulative_baseline_hit_rate_at_k": v.cumulative_baseline_hit_rate_at_k,
        "cumulative_heuristic_hit_rate_at_k": v.cumulative_heuristic_hit_rate_at_k,
        "cumulative_discovery_hit_rate_at_k": v.cumulative_discovery_hit_rate_at_k,
        "cumulative_purchase_coverage": v.cumulative_purchase_coverage,
    }


class GroupLagPoller:
    """Probes the workers' group lag at the broker every ``interval_s`` on a daemon thread (the
    admin calls can wait for an absent broker; the join loop must not) and exports it. A failed
    probe is counted and logged once until a probe succeeds again; the gauges keep their last
    values and the probe timestamp tells how old they are."""

    def __init__(self, probe: GroupLagProbe, metrics: MonitorMetrics, log: Any, interval_s: float):
        self.probe = probe
        self.metrics = metrics
        self.log = log
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="group-lag", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait_s: float = 5.0) -> None:
        """Stop polling; the probe's clients are closed once the thread has finished (a probe
        still waiting on an absent broker after ``wait_s`` leaves them to the process's exit)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(wait_s)
        if not self._thread.is_alive():
            self.probe.close()

    def poll_once(self) -> None:
        try:
            lag = self.probe.probe()
        except Exception as exc:  # a broker away, a refused request: report, keep polling
            self.metrics.group_lag_probe_failures.inc()
            if not self._failing:
                self.log.warning("worker_group_lag_unavailable", error=str(exc))
            self._failing = True
            return
        if self._failing:
            self.log.info("worker_group_lag_available", lag=lag.total, members=lag.members)
        self._failing = False
        for partition, value in lag.lag.items():
            self.metrics.group_lag.labels(partition=str(partition)).set(value)
        self.metrics.group_lag_total.set(lag.total)
        self.metrics.group_members.set(lag.members)
        self.metrics.group_lag_probe_time.set(time.time())

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.interval_s)


class Monitor:
    def __init__(self, settings: MonitorSettings, log: Any) -> None:
        self.settings = settings
        self.log = log
        artifact_dir = resolve_artifact_dir(settings.models_dir)
        metadata = read_metadata(artifact_dir)
        self.baseline = list(metadata.get("popular_top", []))[: settings.k]
        # The heuristic's category tops: in the tables, not in the metadata. Without them it
        # ranks recency then global popularity.
        try:
            self.category_top, self._product_category = read_category_tables(
                artifact_dir, settings.k
            )
        except ModelLoadError as exc:
            log.warning("category_tops_unavailable", error=str(exc))
            self.category_top, self._product_category = {}, {}
        self.tracker = AccuracyTracker(
            k=settings.k,
            attribution_window_ms=int(settings.attribution_window_s * 1000),
            window_ms=int(settings.window_s * 1000),
            baseline=self.baseline,
            category_top=self.category_top,
            session_lookback_ms=int(settings.session_lookback_s * 1000),
        )
        registry = open_schema_registry(settings)
        topics = settings.topics
        self.suggestion_codec = codec_for(
            "ProductSuggestion", registry=registry, topic=topics.suggestions
        )
        self.purchase_codec = codec_for(
            "PurchaseOutcome", registry=registry, topic=topics.purchases
        )
        self.event_codec = codec_for("BrowsingEvent", registry=registry, topic=topics.events)
        self.report_codec = report_codec(registry, topics.accuracy)
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

    def _refresh_serving_state(self) -> None:
        """The champion and challenger the version comparison names, from the models
        directory's ``LATEST`` and ``CHALLENGER`` (a plain artifact directory has neither: the
        comparison then takes the two versions with lines)."""
        try:
            state = serving_state(self.settings.models_dir)
        except (ModelLoadError, OSError, ValueError, KeyError, TypeError) as exc:
            self.log.debug("serving_state_unreadable", error=str(exc))
            return
        self.tracker.champion, self.tracker.challenger = state.champion, state.challenger

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
        poller = None
        if self.settings.group_lag_interval_s > 0:
            probe = GroupLagProbe(
                admin_client(self.settings.kafka, self.log),
                # Carries the workers' group id to read its committed offsets; never subscribes.
                make_consumer(
                    self.settings.kafka, self.settings.worker_group_id, self.log, auto_commit=False
                ),
                self.settings.worker_group_id,
                topics.events,
                timeout_s=min(10.0, max(1.0, self.settings.group_lag_interval_s)),
            )
            poller = GroupLagPoller(
                probe, self.metrics, self.log, self.settings.group_lag_interval_s
            )
            poller.start()
        self._resume_from_last_report()
        self._refresh_serving_state()
        self.consumer.subscribe(
            [topics.events, topics.suggestions, topics.purchases],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self.log.info(
            "monitor_started",
            events=topics.events,
            suggestions=topics.suggestions,
            purchases=topics.purchases,
            k=self.settings.k,
            attribution_window_s=self.settings.attribution_window_s,
            window_s=self.settings.window_s,
            baseline_size=len(self.baseline),
            categories_with_tops=len(self.category_top),
            session_lookback_s=self.settings.session_lookback_s,
            worker_group_id=self.settings.worker_group_id,
            group_lag_interval_s=self.settings.group_lag_interval_s,
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
                    self._refresh_serving_state()
        finally:
            if poller is not None:
                poller.stop()
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
        outcomes = self._decode(messages, clock)
        for msg, outcome in zip(messages, outcomes, strict=True):
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
                if isinstance(outcome, DataError):
                    raise outcome
                if msg.topic() == topics.suggestions:
                    event_time = self._add_suggestion(msg, outcome)
                elif msg.topic() == topics.events:
                    event_time = self._add_event(msg, outcome)
                else:
                    event_time = self._add_purchase(msg, outcome)
                self._replay.setdefault(tp, deque()).append((event_time, msg.offset()))
            except DataError as exc:
                if msg.topic() == topics.events:
                    # The worker dead-letters invalid events and never answers them: not counted,
                    # and not dead-lettered a second time.
                    self.metrics.invalid_events.inc()
                    continue
                self.metrics.dead_letters.labels(error_class=type(exc).__name__).inc()
                dead.append(dead_letter_of(exc, msg, DLQ_MAX_MESSAGE_BYTES - 64 * 1024))
        for d in dead:
            # The dead-letter topic of the topic the record came from.
            source = dict(d.headers)["dlq.source.topic"].decode()
            self.checkpoint.produce(
                topics.dead_letter(source), key=d.key, value=d.value, headers=d.headers
            )
        return next_offsets

    def _decode(self, messages: list[Any], clock: int) -> list[Any]:
        """Each message's record, decoded a topic at a time (:meth:`AvroCodec.decode_batch`),
        events and purchases validated too (:func:`to_browsing_events`,
        :func:`to_purchases`): a suggestion dict, a :class:`BrowsingEvent`, a
        :class:`Purchase`, or the :class:`DataError` decoding or validating it one by one
        raises; None for a consumer error event. Only decoding moves ahead of the loop in
        :meth:`_ingest`: the records still enter the tracker in consumption order."""
        topics = self.settings.topics
        rows: dict[str, list[int]] = {}
        for i, msg in enumerate(messages):
            if msg.error() is None:
                rows.setdefault(msg.topic(), []).append(i)
        outcomes: list[Any] = [None] * len(messages)
        validate: Callable[..., list[Any]] | None
        for topic, mine in rows.items():
            if topic == topics.suggestions:
                codec, validate = self.suggestion_codec, None
            elif topic == topics.events:
                codec, validate = self.event_codec, to_browsing_events
            else:
                codec, validate = self.purchase_codec, to_purchases
            decoded: list[Any] = codec.decode_batch([messages[i].value() for i in mine])
            if validate is not None:
                good = [j for j, d in enumerate(decoded) if not isinstance(d, DataError)]
                valid = validate(
                    [decoded[j] for j in good], [messages[mine[j]].key() for j in good], clock
                )
                for j, outcome in zip(good, valid, strict=True):
                    decoded[j] = outcome
            for i, outcome in zip(mine, decoded, strict=True):
                outcomes[i] = outcome
        return outcomes

    def _add_suggestion(self, msg: Any, record: dict[str, Any]) -> int:
        validate_key(msg.key(), record["user_id"])
        shown = ShownSuggestion(
            event_time_ms=record["event_time"],
            suggestion_id=record["suggestion_id"],
            model_version=record["model_version"],
            products=tuple(
                p["product_id"] for p in sorted(record["products"], key=lambda p: p["rank"])
            ),
            session_id=record["session_id"],
            event_id=record["event_id"],
        )
        self.metrics.suggestions_in.inc()
        if not self.tracker.add_suggestion(record["user_id"], shown):
            self.metrics.duplicates.inc()
        tp = (msg.topic(), msg.partition())
        self._marks[tp] = max(self._marks.get(tp, NEVER), shown.event_time_ms)
        return shown.event_time_ms

    def _add_event(self, msg: Any, event: BrowsingEvent) -> int:
        self.metrics.events_in.inc()
        # The category the worker ranks with: the model's for a product it knows, else the
        # event's own.
        category = self._product_category.get(event.product_id, event.category_id)
        kept = SessionEvent(
            event.event_time_ms, event.event_id, event.product_id, category, event.session_id
        )
        if not self.tracker.add_event(event.user_id, kept):
            self.metrics.late_events.inc()
        tp = (msg.topic(), msg.partition())
        self._marks[tp] = max(self._marks.get(tp, NEVER), event.event_time_ms)
        return event.event_time_ms

    def _add_purchase(self, msg: Any, purchase: Purchase) -> int:
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
        event_marks = {
            p: self._watermark((t, p), clock) - lateness for t, p in assigned if t == topics.events
        }
        # A line waits for the suggestions and the events of its partition (an events partition
        # not assigned here, after a misaligned assignment, is not waited for).
        self.tracker.evaluate_ready(
            {p: min(m, event_marks.get(p, m)) for p, m in suggestion_marks.items()}
        )
        purchase_marks = [
            self._watermark(tp, clock) - lateness for tp in assigned if tp[0] == topics.purchases
        ]
        # Events and their answers are counted in their window too: it closes once every
        # partition of the three topics has passed its end.
        limit = min(
            purchase_marks + list(suggestion_marks.values()) + list(event_marks.values()),
            default=NEVER,
        )
        reports = self.tracker.close_windows(limit) if purchase_marks else []
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
            self.settings.topics.suggestions: (
                self.tracker.suggestion_versions_needed_from_ms() - lateness
            ),
            self.settings.topics.events: self.tracker.events_needed_from_ms() - lateness,
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
                # A report written before the live figures reads them as 0 (schema defaults).
                self.tracker.resume(
                    closed_before_ms=last["window_end"],
                    attributed=attributed,
                    hits=round((last["cumulative_hit_rate_at_k"] or 0.0) * attributed),
                    baseline_hits=round(
                        (last["cumulative_baseline_hit_rate_at_k"] or 0.0) * attributed
                    ),
                    purchases=last["cumulative_purchases"],
                    discovery_lines=last["cumulative_discovery_lines"],
                    discovery_hits=last["cumulative_discovery_hits"],
                    heuristic_hits=last["cumulative_heuristic_hits"],
                    events=last["cumulative_events"],
                    events_answered=last["cumulative_events_answered"],
                    versions={
                        v["model_version"]: VersionCounts(
                            purchases=v["cumulative_purchases"],
                            attributed=v["cumulative_attributed"],
                            hits=v["cumulative_hits"],
                            baseline_hits=v["cumulative_baseline_hits"],
                            heuristic_hits=v["cumulative_heuristic_hits"],
                            discovery_lines=v["cumulative_discovery_lines"],
                            discovery_hits=v["cumulative_discovery_hits"],
                            events_answered=v["cumulative_events_answered"],
                        )
                        for v in last["versions"]
                    },
                    comparison=(
                        VersionComparison(**last["version_comparison"])
                        if last["version_comparison"] is not None
                        else None
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
        for gauge, value in (
            (m.discovery_hit_rate, r.discovery_hit_rate_at_k),
            (m.heuristic_hit_rate, r.heuristic_hit_rate_at_k),
            (m.purchase_coverage, r.purchase_coverage),
            (m.event_coverage, r.event_coverage),
            (m.cumulative_discovery_hit_rate, r.cumulative_discovery_hit_rate_at_k),
            (m.cumulative_heuristic_hit_rate, r.cumulative_heuristic_hit_rate_at_k),
            (m.cumulative_purchase_coverage, r.cumulative_purchase_coverage),
            (m.cumulative_event_coverage, r.cumulative_event_coverage),
        ):
            if value is not None:
                gauge.set(value)
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
            purchase_coverage=r.purchase_coverage,
            discovery_lines=r.discovery_lines,
            discovery_hits=r.discovery_hits,
            discovery_hit_rate_at_k=r.discovery_hit_rate_at_k,
            heuristic_hits=r.heuristic_hits,
            heuristic_hit_rate_at_k=r.heuristic_hit_rate_at_k,
            events=r.events,
            events_answered=r.events_answered,
            event_coverage=r.event_coverage,
            cumulative_purchase_coverage=r.cumulative_purchase_coverage,
            cumulative_discovery_hit_rate_at_k=r.cumulative_discovery_hit_rate_at_k,
            cumulative_heuristic_hit_rate_at_k=r.cumulative_heuristic_hit_rate_at_k,
            cumulative_event_coverage=r.cumulative_event_coverage,
            model_versions=list(r.model_versions),
            versions=[version_log_fields(v) for v in r.versions],
        )
        for v in r.versions:
            for field, gauge in m.version_window.items():
                value = getattr(v, field)
                if value is not None:
                    gauge.labels(model_version=v.model_version).set(value)
            for field, gauge in m.version_cumulative.items():
                value = getattr(v, f"cumulative_{field}")
                if value is not None:
                    gauge.labels(model_version=v.model_version).set(value)
        c = r.version_comparison
        for gauge in (
            m.version_comparison_difference,
            m.version_comparison_ci95_low,
            m.version_comparison_ci95_high,
            m.version_comparison_p_value,
        ):
            gauge.clear()  # only the pair compared now
        if c is not None:
            pair = {"champion": c.champion, "challenger": c.challenger}
            m.version_comparison_difference.labels(**pair).set(c.difference)
            m.version_comparison_ci95_low.labels(**pair).set(c.ci95_low)
            m.version_comparison_ci95_high.labels(**pair).set(c.ci95_high)
            m.version_comparison_p_value.labels(**pair).set(c.p_value)
            self.log.info(
                "version_comparison",
                window_end=r.window_end_ms,
                champion=c.champion,
                challenger=c.challenger,
                champion_lines=c.champion_attributed,
                champion_hits=c.champion_hits,
                challenger_lines=c.challenger_attributed,
                challenger_hits=c.challenger_hits,
                difference=c.difference,
                ci95_low=c.ci95_low,
                ci95_high=c.ci95_high,
                p_value=c.p_value,
                significant=c.significant,
                statement=c.statement,
            )

    def _prune(self) -> None:
        topics = self.settings.topics
        clock = now_ms()
        marks = [self._watermark(tp, clock) for tp in self._at_end if tp[0] == topics.purchases]
        if marks:  # the tracker keeps what its pending purchases need
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
        topics = self.settings.topics
        events, suggestions, purchases = (
            sorted(p for t, p in self._at_end if t == topic)
            for topic in (topics.events, topics.suggestions, topics.purchases)
        )
        if not events == suggestions == purchases:
            # Partition counts differ: a user's events, suggestions and purchases may be read
            # by different monitors, and the figures undercount.
            self.log.warning(
                "partitions_not_aligned",
                events=events,
                suggestions=suggestions,
                purchases=purchases,
            )

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self.checkpoint.commit_stored()
        self._forget(partitions)

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """The group gave the partitions away while this member was away (its session timed
        out, a freeze or a long pause): nothing can be committed for them any more; what was
        read since the last commit is read again by their next owner."""
        self.log.warning(
            "partitions_lost", partitions=[f"{p.topic}/{p.partition}" for p in partitions]
        )
        self._forget(partitions)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            for state in (self._replay, self._next, self._stored):
                state.pop((p.topic, p.partition), None)
            self._at_end.pop((p.topic, p.partition), None)
            self._marks.pop((p.topic, p.partition), None)
        self.health.assigned_partitions = len(self._at_end)
