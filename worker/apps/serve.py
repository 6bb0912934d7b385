"""The worker loop (``worker run``): consume browsing events in micro-batches, answer each with
top-K suggestions, dead-letter what cannot be answered, and commit only what is durable.

One process is one member of the consumer group; partitions are the unit of parallelism.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaError, TopicPartition

from worker.config import WorkerSettings
from worker.core.errors import BrokerError, DataError
from worker.core.pipeline import Recommender
from worker.core.records import BrowsingEvent, SourceRef, to_browsing_event
from worker.core.session import SessionStore
from worker.kafka.admin import DLQ_MAX_MESSAGE_BYTES
from worker.kafka.changelog import (
    CHECKPOINT_KEY,
    ChangelogRestorer,
    changelog_topic,
    checkpoint_value,
)
from worker.kafka.checkpoint import (
    Checkpoint,
    TransactionAbandonedError,
    TransactionalCheckpoint,
)
from worker.kafka.clients import (
    assign_at,
    committed_offsets,
    make_consumer,
    make_producer,
    start_at,
)
from worker.kafka.dead_letter import dead_letter
from worker.kafka.watches import FetchWatch
from worker.model.artifact import ModelArtifact
from worker.model.scoring import make_scorer
from worker.ops.health import Health, rss_mib, serve_http
from worker.ops.metrics import WorkerMetrics
from worker.wire.codec import codec_for
from worker.wire.registry import HttpSchemaRegistry
from worker.wire.session_codec import encode_session
from worker.wire.suggestion_writer import SuggestionWriter

PROGRESS_LOG_INTERVAL_S = 10.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class BatchOutcome:
    answered: int
    dead_lettered: int


class Worker:
    """The streaming inference loop of one process."""

    def __init__(self, settings: WorkerSettings, artifact: ModelArtifact, log: Any) -> None:
        self.settings = settings
        self.artifact = artifact
        self.log = log.bind(model_version=artifact.version)
        registry = (
            HttpSchemaRegistry(settings.schema_registry_url)
            if settings.schema_registry_url
            else None
        )
        topics = settings.topics
        self.event_codec = codec_for(
            "BrowsingEvent",
            registry=registry,
            topic=topics.events,
            max_record_bytes=settings.max_event_bytes,
        )
        self.suggestion_codec = codec_for(
            "ProductSuggestion", registry=registry, topic=topics.suggestions
        )
        self.suggestion_writer = SuggestionWriter(
            self.suggestion_codec.header(),
            artifact.tables.product_ids.tolist(),
            topics.events,
            artifact.version,
        )
        self.sessions = SessionStore(
            max_users=settings.max_sessions, idle_ttl_ms=int(settings.session_idle_ttl_s * 1000)
        )
        self.recommender = Recommender(
            artifact.tables,
            make_scorer(
                artifact.path,
                artifact.booster,
                backend=settings.scoring_backend,
                num_threads=settings.scoring_threads,
                log=self.log,
            ),
            self.sessions,
            n_candidates=settings.n_candidates,
            top_k=settings.top_k,
        )
        self.metrics = WorkerMetrics()
        self.metrics.model_info.labels(version=artifact.version).set(1)
        self.health = Health()
        self.health.model_loaded = True
        self.fetch_watch = FetchWatch()
        self._stop = threading.Event()
        self._assigned: set[tuple[str, int]] = set()
        self._answered = 0
        self._dead = 0
        self._consumed = 0
        kafka = settings.kafka
        self.changelog = changelog_topic(settings.group_id) if settings.state_changelog else None
        self.restorer = ChangelogRestorer(kafka, self.changelog, log) if self.changelog else None
        producer_overrides: dict[str, Any] = {}
        if settings.exactly_once:
            producer_overrides = {
                "transactional.id": settings.transactional_id
                or f"{settings.group_id}-{socket.gethostname()}-{os.getpid()}",
                # Long enough to ride out a broker restart; a killed worker restarted with the
                # same transactional id fences its open transaction at once anyway.
                "transaction.timeout.ms": 60000,
            }

        producer_overrides["queue.buffering.max.kbytes"] = settings.produce_buffer_mb * 1024

        def new_producer() -> Any:
            return make_producer(kafka, self.log, **producer_overrides)

        self.consumer: Consumer = make_consumer(
            kafka,
            settings.group_id,
            self.log,
            auto_commit=not settings.exactly_once,
            **{
                "partition.assignment.strategy": "cooperative-sticky",
                "queued.max.messages.kbytes": settings.fetch_buffer_mb * 1024,
                # One fetch response is at most a quarter of the buffer: it arrives compressed
                # and is decompressed next to it, several times its size.
                "fetch.max.bytes": max(1, settings.fetch_buffer_mb // 4) * 1024 * 1024,
                "statistics.interval.ms": 5000,
                "stats_cb": self._on_stats,
            },
        )
        self.checkpoint: Checkpoint
        if settings.exactly_once:
            self.checkpoint = TransactionalCheckpoint(
                new_producer, self.consumer, on_wait=self._waiting_for_broker, log=self.log
            )
        else:
            self.checkpoint = Checkpoint(
                new_producer(),
                self.consumer,
                on_wait=self._waiting_for_broker,
                on_stuck=self._outputs_stuck,
                replacement=new_producer,
                log=self.log,
            )
        self._product_id_of = artifact.tables.product_ids.__getitem__
        self._index_of = artifact.tables._index.get  # type: ignore[attr-defined]

    # -- lifecycle -----------------------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        """Signal handler: finish the in-flight batch, flush, commit, leave the group."""
        if not self._stop.is_set():
            self.log.info("shutdown_requested", timeout_s=self.settings.shutdown_timeout_s)
            self._stop.set()
            self.health.stopping = True
            self.checkpoint.hurry()
            watchdog = threading.Timer(self.settings.shutdown_timeout_s, self._shutdown_overdue)
            watchdog.daemon = True
            watchdog.start()

    def _shutdown_overdue(self) -> None:
        import os

        self.log.error("shutdown_timeout", timeout_s=self.settings.shutdown_timeout_s)
        os._exit(3)  # offsets not committed are redelivered: at-least-once holds

    def run(self, *, install_signal_handlers: bool = True, max_idle_s: float | None = None) -> int:
        """Run until SIGTERM/SIGINT (or ``max_idle_s`` without input); return the exit code."""
        if install_signal_handlers:
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        server = serve_http(self.settings.metrics_port, self.metrics.registry, self.health)
        topics = self.settings.topics
        self.consumer.subscribe(
            [topics.events],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self.log.info(
            "worker_started",
            topic=topics.events,
            group_id=self.settings.group_id,
            top_k=self.settings.top_k,
            n_candidates=self.settings.n_candidates,
            max_batch_size=self.settings.max_batch_size,
            max_batch_wait_ms=self.settings.max_batch_wait_ms,
            scoring_backend=getattr(self.recommender.scorer, "name", "lightgbm"),
            exactly_once=self.settings.exactly_once,
            kafka=repr(self.settings.kafka),
        )
        last_progress = last_input = time.monotonic()
        wait_s = self.settings.max_batch_wait_ms / 1000.0
        try:
            while not self._stop.is_set():
                messages = self.consumer.consume(
                    self.settings.max_batch_size, timeout=max(wait_s, 0.001)
                )
                self.health.beat()
                if messages:
                    last_input = time.monotonic()
                    self.process(messages)
                elif max_idle_s is not None and time.monotonic() - last_input > max_idle_s:
                    self.log.info("idle_exit", idle_s=max_idle_s)
                    break
                if time.monotonic() - last_progress > PROGRESS_LOG_INTERVAL_S:
                    last_progress = time.monotonic()
                    self._housekeeping()
        finally:
            self._close()
            if server is not None:
                server.shutdown()
        return 0

    def _close(self) -> None:
        self.checkpoint.producer.flush(10)
        try:
            self.consumer.close()  # commits stored offsets and leaves the group
        except Exception as exc:  # the consumer may already be closed after a fatal error
            self.log.warning("consumer_close_failed", error=str(exc))
        if self.restorer is not None:
            self.restorer.close()
        self.log.info(
            "worker_stopped",
            consumed=self._consumed,
            answered=self._answered,
            dead_lettered=self._dead,
            sessions=len(self.sessions),
        )

    def _housekeeping(self) -> None:
        expired = self.sessions.expire_idle()
        self.metrics.sessions.set(len(self.sessions))
        self.log.info(
            "worker_progress",
            consumed=self._consumed,
            answered=self._answered,
            dead_lettered=self._dead,
            sessions=len(self.sessions),
            expired=expired,
            partitions=len(self._assigned),
            rss_mib=rss_mib(),
        )

    # -- rebalance -----------------------------------------------------------------------------

    def _waiting_for_broker(self, waited_s: float) -> None:
        """Called every second or so while a batch waits for the broker (backpressure; the
        checkpoint logs ``waiting_for_broker`` every 10 s)."""
        self.health.beat()
        self.health.backpressure = True

    def _outputs_stuck(self, reason: str | None) -> None:
        """At-least-once: outputs unacknowledged though the broker answers (``reason``), or no
        longer (None). Liveness fails meanwhile, so the kubelet restarts a worker that stays so."""
        self.health.outputs_stuck = reason is not None
        self.metrics.outputs_stuck.set(1 if reason is not None else 0)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        committed = committed_offsets(consumer, partitions)
        if self.restorer is not None and partitions:
            # Sessions of the gained partitions are restored before their next event is scored.
            # Exactly-once: until the changelog has caught up with the committed offsets, which
            # are where fetching starts. At-least-once: to the changelog's end, waiting for
            # nothing (state may be ahead of the committed offsets, which are sent a second
            # later; a redelivered event is recognised by its session's last offset).
            self.restorer.restore(
                [p.partition for p in partitions],
                self.sessions,
                self._index_of,
                self.log,
                committed={p: o for (_, p), o in committed.items()}
                if self.settings.exactly_once
                else {},
            )
        assign_at(consumer, partitions, committed, incremental=True)
        self._assigned |= {(p.topic, p.partition) for p in partitions}
        self.health.assigned_partitions = len(self._assigned)
        self.metrics.assigned.set(len(self._assigned))
        self.log.info(
            "partitions_assigned",
            partitions=sorted(p.partition for p in partitions),
            rss_mib=rss_mib(),
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Batches are processed synchronously, so nothing is in flight here: every stored offset
        # belongs to an acknowledged batch. Commit them before the partitions move.
        self.checkpoint.commit_stored()
        self._forget(partitions, "partitions_revoked")

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._forget(partitions, "partitions_lost")

    def _forget(self, partitions: list[TopicPartition], event: str) -> None:
        self._assigned -= {(p.topic, p.partition) for p in partitions}
        self.health.assigned_partitions = len(self._assigned)
        self.metrics.assigned.set(len(self._assigned))
        dropped = self.sessions.drop_partitions({p.partition for p in partitions})
        self.log.info(
            event, partitions=sorted(p.partition for p in partitions), sessions_dropped=dropped
        )

    def _on_stats(self, stats_json: str) -> None:
        try:
            stats = json.loads(stats_json)
        except ValueError:
            return
        lag = 0
        for topic in stats.get("topics", {}).values():
            for p in topic.get("partitions", {}).values():
                if p.get("partition", -1) >= 0 and p.get("consumer_lag", -1) >= 0:
                    lag += p["consumer_lag"]
        self.metrics.lag.set(lag)
        self.fetch_watch.update(stats, self.health, self.metrics.fetch_stalled, self.log)

    # -- the batch -----------------------------------------------------------------------------

    def process(self, messages: list[Any]) -> BatchOutcome:
        """Answer one micro-batch and store its offsets once every output is acknowledged."""
        t0 = time.perf_counter()
        clock_ms = now_ms()
        events: list[BrowsingEvent] = []
        items: list[int] = []
        sources: list[SourceRef] = []
        partitions: list[int] = []
        dead = []
        next_offsets: dict[tuple[str, int], int] = {}
        tables = self.artifact.tables
        for msg in messages:
            err = msg.error()
            if err is not None:
                self._on_consume_error(err)
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            next_offsets[(topic, partition)] = offset + 1
            try:
                event = to_browsing_event(self.event_codec.decode(msg.value()), msg.key(), clock_ms)
                item = tables.index_of(event.product_id)
            except DataError as exc:
                dead.append(
                    dead_letter(
                        error=exc,
                        topic=topic,
                        partition=partition,
                        offset=offset,
                        timestamp_ms=msg.timestamp()[1],
                        key=msg.key(),
                        value=msg.value(),
                        original_headers=msg.headers(),
                        max_value_bytes=DLQ_MAX_MESSAGE_BYTES - 64 * 1024,
                    )
                )
                self.metrics.dead_letters.labels(error_class=type(exc).__name__).inc()
                self.log.debug(
                    "record_dead_lettered",
                    error_class=type(exc).__name__,
                    error=str(exc),
                    partition=partition,
                    offset=offset,
                )
                continue
            events.append(event)
            items.append(item)
            sources.append(SourceRef(topic, partition, offset))
            partitions.append(partition)
        t1 = time.perf_counter()
        ranked = self.recommender.recommend(
            events,
            np.asarray(items, dtype=np.int32),
            partitions,
            [s.offset for s in sources],
        )
        t2 = time.perf_counter()
        produced_ms = now_ms()
        topics = self.settings.topics
        offsets = [s.offset for s in sources]
        values = self.suggestion_writer.encode_batch(
            events, partitions, offsets, ranked.items, ranked.scores, produced_ms
        )
        for event, value in zip(events, values, strict=True):
            self.checkpoint.produce(
                topics.suggestions,
                key=event.user_id.encode("utf-8"),
                value=value,
                timestamp_ms=produced_ms,
            )
        dlq_topic = topics.dead_letter(topics.events)
        for d in dead:
            self.checkpoint.produce(dlq_topic, key=d.key, value=d.value, headers=d.headers)
        if self.changelog is not None:
            self._write_changelog(events, partitions, next_offsets)
        t3 = time.perf_counter()
        replaced_before = self.checkpoint.replaced
        try:
            self.checkpoint.complete(next_offsets)
        except TransactionAbandonedError as exc:
            if self._stop.is_set():
                # Shutting down: nothing of the batch was committed; the partitions' next owner
                # (or this worker restarted) resumes from the committed offsets and state.
                self.log.warning("batch_abandoned_at_shutdown", reason=str(exc))
            else:
                self._rewind(str(exc))
            return BatchOutcome(answered=0, dead_lettered=0)
        finally:
            self.metrics.producer_replacements.inc(self.checkpoint.replaced - replaced_before)
        self.health.backpressure = False
        t4 = time.perf_counter()
        acked_ms = now_ms()
        self._record_batch(
            len(messages),
            events,
            len(dead),
            acked_ms,
            {
                "decode": t1 - t0,
                "state": ranked.timings.state_s,
                "candidates": ranked.timings.candidates_s,
                "features": ranked.timings.features_s,
                "scoring": ranked.timings.scoring_s,
                "encode": (t3 - t2) + ranked.timings.ranking_s,
                "produce": t4 - t3,
            },
        )
        return BatchOutcome(answered=len(events), dead_lettered=len(dead))

    def _rewind(self, reason: str) -> None:
        """After an abandoned transaction: back to the last committed offsets and the session
        state committed with them, so the batch is answered again, exactly once."""
        partitions = [TopicPartition(t, p) for t, p in sorted(self._assigned)]
        committed = committed_offsets(self.consumer, partitions)
        for (topic, partition), offset in committed.items():
            self.consumer.seek(start_at(topic, partition, offset))
        numbers = {tp.partition for tp in partitions}
        self.sessions.drop_partitions(numbers)
        self.sessions.drain_forgotten()
        if self.restorer is not None:
            self.restorer.restore(
                sorted(numbers),
                self.sessions,
                self._index_of,
                self.log,
                committed={p: o for (_, p), o in committed.items()},
            )
        self.health.backpressure = False
        self.log.warning(
            "batch_rewound", reason=reason, partitions=sorted(numbers), rss_mib=rss_mib()
        )

    def _write_changelog(
        self,
        events: list[BrowsingEvent],
        partitions: list[int],
        next_offsets: dict[tuple[str, int], int],
    ) -> None:
        """The new session of every user of the batch, tombstones of forgotten users, and per
        input partition a checkpoint record with the offset this state is consistent with."""
        touched = dict(zip((e.user_id for e in events), partitions, strict=True))
        for user_id, partition in touched.items():
            session = self.sessions.get(user_id)
            if session is None:  # evicted within this very batch: its tombstone follows
                continue
            self.checkpoint.produce(
                self.changelog,  # type: ignore[arg-type]
                key=user_id.encode("utf-8"),
                value=encode_session(session, self._product_id_of),
                partition=partition,
            )
        owned = {p for _, p in self._assigned}
        for user_id, partition in self.sessions.drain_forgotten():
            if partition in owned and user_id not in self.sessions:
                self.checkpoint.produce(
                    self.changelog,  # type: ignore[arg-type]
                    key=user_id.encode("utf-8"),
                    value=None,
                    partition=partition,
                )
        for (_, partition), offset in next_offsets.items():
            self.checkpoint.produce(
                self.changelog,  # type: ignore[arg-type]
                key=CHECKPOINT_KEY,
                value=checkpoint_value(offset),
                partition=partition,
            )

    def _record_batch(
        self,
        n_messages: int,
        events: list[BrowsingEvent],
        n_dead: int,
        acked_ms: int,
        stages: dict[str, float],
    ) -> None:
        m = self.metrics
        self._consumed += n_messages
        self._answered += len(events)
        self._dead += n_dead
        m.events_in.inc(n_messages)
        m.suggestions_out.inc(len(events))
        m.batches.inc()
        m.batch_size.observe(n_messages)
        for stage, seconds in stages.items():
            m.stage_seconds.labels(stage=stage).observe(seconds)
        for event in events:
            m.latency.observe(max(0, acked_ms - event.event_time_ms) / 1000.0)
        self.log.debug(
            "batch_scored",
            events=n_messages,
            answered=len(events),
            dead_lettered=n_dead,
            **{f"{k}_ms": round(v * 1000, 3) for k, v in stages.items()},
        )

    def _on_consume_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.fatal():
            raise BrokerError(f"fatal consumer error: {err.name()}: {err.str()}")
        self.log.warning("consume_error", error=err.name(), retriable=err.retriable())
