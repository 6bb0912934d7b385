"""The worker loop (``worker run``): consume browsing events in micro-batches, answer each with
top-K suggestions, dead-letter what cannot be answered, and commit only what is durable.

One process is one member of the consumer group; partitions are the unit of parallelism.

The served model versions (champion, optional challenger) come from the models directory's
``LATEST`` and ``CHALLENGER`` and are reloaded without a restart (:mod:`worker.apps.model_set`):
a change is loaded and smoke-checked on a background thread and swapped in on the loop thread
between two micro-batches, so in exactly-once mode between two transactions. A batch is answered
by one version per user (a stable hash of the user id against the challenger's share), with one
model call per version. A batch redone after an abandoned transaction, or a batch redelivered
after a crash, may be answered by a newer version than the one whose outputs were aborted: those
outputs were never visible, so every input still has exactly one visible answer. ``--model-version``
pins one version and turns the polling off.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from worker.apps.batch import STEP_STAGES, BatchResult, BatchStep, InputRecord, Lane, now_ms
from worker.apps.model_set import (
    Loaded,
    ModelRejected,
    ModelSet,
    ModelWatcher,
    Prepared,
    routing_of,
    smoke_check,
)
from worker.config import WorkerSettings
from worker.core.drift import PSI_SIGNIFICANT, DriftTracker, ReferenceProfile, crossings
from worker.core.errors import BrokerError, ModelLoadError
from worker.core.features import FEATURE_NAMES
from worker.core.pipeline import Recommender
from worker.core.routing import Routing
from worker.core.session import SessionStore
from worker.kafka.changelog import ChangelogRestorer, changelog_topic
from worker.kafka.checkpoint import (
    Checkpoint,
    DeliveryError,
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
from worker.kafka.schema_registry import open_schema_registry
from worker.kafka.watches import FetchWatch, RejoinWatch
from worker.model.artifact import LATEST_FILE, ModelArtifact, load_artifact
from worker.model.registry import ServingState
from worker.model.scoring import make_scorer
from worker.ops.health import Health, rss_mib, serve_http
from worker.ops.heap import Heap
from worker.ops.metrics import WorkerMetrics
from worker.wire.codec import codec_for
from worker.wire.suggestion_writer import SuggestionWriter

PROGRESS_LOG_INTERVAL_S = 10.0
#: Bound of the metadata request that asks whether the broker answers while the consumer
#: waits to rejoin its group (see ``RejoinWatch``).
REJOIN_PROBE_TIMEOUT_S = 5.0
#: Closing the consumer at shutdown may take the shutdown budget less this margin (the rest is
#: for the final log line and the HTTP server).
CLOSE_MARGIN_S = 5.0
#: Stages of a batch in ``worker_stage_seconds{stage}`` and the ``batch_scored`` log line: the
#: step's (:data:`worker.apps.batch.STEP_STAGES`), then handing the outputs to the producer
#: (``produce``) and the commit protocol's flush, verify and store or commit (``checkpoint``).
LOOP_STAGES = ("produce", "checkpoint")
STAGES = STEP_STAGES + LOOP_STAGES
#: Seconds between updates of ``worker_input_drift_psi`` (the drift window rolls then too).
DRIFT_UPDATE_INTERVAL_S = 5.0


@dataclass
class BatchOutcome:
    answered: int
    dead_lettered: int


def batch_step(settings: WorkerSettings, changelog: str | None) -> tuple[BatchStep, bytes]:
    """The worker's :class:`BatchStep` (its codecs, through the schema registry when one is
    configured, and topics; the lanes are given per batch) and the suggestions' framing
    header (for each version's :class:`SuggestionWriter`)."""
    registry = open_schema_registry(settings)
    topics = settings.topics
    suggestion_codec = codec_for("ProductSuggestion", registry=registry, topic=topics.suggestions)
    step = BatchStep(
        event_codec=codec_for(
            "BrowsingEvent",
            registry=registry,
            topic=topics.events,
            max_record_bytes=settings.max_event_bytes,
        ),
        suggestions_topic=topics.suggestions,
        dead_letter_topic=topics.dead_letter(topics.events),
        changelog_topic=changelog,
        max_sessions=settings.max_sessions,
    )
    return step, suggestion_codec.header()


def consumer_overrides(settings: WorkerSettings) -> dict[str, Any]:
    """librdkafka properties of the worker's input consumer (on top of make_consumer's)."""
    return {
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": round(settings.session_timeout_s * 1000),
        # At least three heartbeats per session, at most one a second.
        "heartbeat.interval.ms": min(1000, round(settings.session_timeout_s * 1000 / 3)),
        "queued.max.messages.kbytes": settings.fetch_buffer_mb * 1024,
        # One fetch response is at most a quarter of the buffer: it arrives compressed and is
        # decompressed next to it, several times its size.
        "fetch.max.bytes": max(1, settings.fetch_buffer_mb // 4) * 1024 * 1024,
        "statistics.interval.ms": 5000,
    }


def producer_overrides(settings: WorkerSettings) -> dict[str, Any]:
    """librdkafka properties of the worker's producers (on top of make_producer's)."""
    overrides: dict[str, Any] = {}
    if settings.exactly_once:
        overrides = {
            "transactional.id": settings.transactional_id
            or f"{settings.group_id}-{socket.gethostname()}-{os.getpid()}",
            # Short (Kafka Streams' exactly-once-v2 default): a worker replaced under a new
            # transactional id (a new pod name) cannot fence its predecessor, whose open
            # transaction then holds read_committed readers back until the broker aborts it.
            # A batch's transaction lasts milliseconds; one that outlives this is abandoned
            # and redone (TransactionalCheckpoint). Zombies are fenced by the group
            # generation sent with the offsets (KIP-447), not by the id.
            "transaction.timeout.ms": round(settings.transaction_timeout_s * 1000),
        }
    overrides["queue.buffering.max.kbytes"] = settings.produce_buffer_mb * 1024
    return overrides


class Worker:
    """The streaming inference loop of one process."""

    def __init__(
        self,
        settings: WorkerSettings,
        artifact: ModelArtifact,
        log: Any,
        *,
        consumer_factory: Callable[..., Consumer] = make_consumer,
        producer_factory: Callable[..., Any] = make_producer,
        clock: Callable[[], float] = time.monotonic,
        loader: Callable[[str], ModelArtifact] | None = None,
    ) -> None:
        """Args:
        settings: the worker's settings.
        artifact: the model to serve first (the champion; with ``--model-version``, the pinned
            version).
        log: a structlog-style logger.
        consumer_factory / producer_factory: make the Kafka clients, with
            :func:`~worker.kafka.clients.make_consumer`'s and
            :func:`~worker.kafka.clients.make_producer`'s signatures (fakes in tests).
        clock: monotonic seconds of the commit protocol's waits and of the model polling (a
            fake clock in tests).
        loader: loads a version of the models directory (hot reload); default
            :func:`~worker.model.artifact.load_artifact` of ``<models_dir>/<version>``.
        """
        self.settings = settings
        self._base_log = log
        self.log = log.bind(model_version=artifact.version)
        self._loader = loader or self._load_version
        self.changelog = changelog_topic(settings.group_id) if settings.state_changelog else None
        self.step, self._suggestion_header = batch_step(settings, self.changelog)
        # The served versions, each with its recommender (model, serving catalogue: the model's
        # plus the products it does not know) and its session store. The worker owns the
        # session state: the step advances it, rebalances drop and restore it, housekeeping
        # expires it.
        first = self._build(artifact, self.log, smoke=False)
        self.models = ModelSet(Routing(artifact.version), {artifact.version: first})
        self._drift_psi: dict[str, float] = {}
        self._drift_updated_at: float | None = None
        # Input drift against the champion's training window, when its artifact has a reference.
        self.drift = first.drift
        first.lane.recommender.drift = self.drift
        self._new_products_counted: dict[int, int] = {}  # by id() of a lane's catalogue
        self._migrated_counted = 0
        self.metrics = WorkerMetrics()
        pauses = [self.metrics.gc_pause.labels(generation=str(g)) for g in range(3)]
        self.heap = Heap(lambda generation, seconds: pauses[generation].observe(seconds))
        self._model_info: set[tuple[str, str]] = set()
        self._show_models()
        self._clock = clock
        self.watcher: ModelWatcher | None = None
        pinned = settings.model_version is not None
        if not pinned and settings.model_poll_s > 0:
            if (settings.models_dir / LATEST_FILE).is_file():
                self.watcher = ModelWatcher(
                    settings.models_dir, settings.model_poll_s, self._prepare, self.log, clock
                )
                self.watcher.served(ServingState(artifact.version))
                # The challenger (or a newer champion) of the files now, before the first batch:
                # a user must not start on one version and move to another a second later.
                self._check_models(wait=True)
            else:
                self.log.info(
                    "model_watch_off",
                    reason=f"{settings.models_dir} has no {LATEST_FILE} (one artifact directory)",
                )
        self.health = Health()
        self.health.model_loaded = True
        self.fetch_watch = FetchWatch()
        self.rejoin_watch = RejoinWatch()
        self._stop = threading.Event()
        self._stop_requested_at: float | None = None
        self._assigned: set[tuple[str, int]] = set()
        self._restore_started = 0.0  # when the latest restore began (for its log line)
        self._answered = 0
        self._dead = 0
        self._consumed = 0
        self.restorer = (
            ChangelogRestorer(settings.kafka, self.changelog, log, consumer_factory, clock=clock)
            if self.changelog
            else None
        )

        def new_consumer() -> Consumer:
            return consumer_factory(
                settings.kafka,
                settings.group_id,
                self.log,
                auto_commit=not settings.exactly_once,
                **consumer_overrides(settings),
                stats_cb=self._on_stats,
            )

        self._new_consumer = new_consumer
        self.consumer: Consumer = new_consumer()
        self.checkpoint = self._make_checkpoint(producer_factory, clock)
        #: At-least-once overlaps a batch's acknowledgement wait with the next batch's work
        #: (``Checkpoint.defer``); exactly-once completes each transaction before the next.
        self._overlap = not settings.exactly_once

    # -- the served versions -------------------------------------------------------------------

    @property
    def artifact(self) -> ModelArtifact:
        """The champion's artifact."""
        return self.models.champion.artifact

    @property
    def recommender(self) -> Recommender:
        """The champion's recommender."""
        return self.models.champion.lane.recommender

    @property
    def live(self) -> Any:
        """The champion's serving catalogue."""
        return self.recommender.live

    @property
    def sessions(self) -> SessionStore:
        """The champion's session store (restored sessions go there; see ``ModelSet``)."""
        return self.models.champion.lane.sessions

    def _index_of(self, product_id: str) -> int | None:
        # Restored sessions name their products by id; new products join the live catalogue.
        # They go to the champion's store: a challenger's user moves on its next event.
        return self.models.champion.lane.recommender.live.index_of(product_id)

    def _load_version(self, version: str) -> ModelArtifact:
        return load_artifact(self.settings.models_dir / version, expected_features=FEATURE_NAMES)

    def _build(self, artifact: ModelArtifact, log: Any, *, smoke: bool) -> Loaded:
        """A lane for ``artifact`` (compiling or loading its scorer), smoke-checked if asked.

        Raises:
            ModelRejected: the smoke check failed.
        """
        settings = self.settings
        scorer = make_scorer(
            artifact.path,
            artifact.booster,
            backend=settings.scoring_backend,
            num_threads=settings.scoring_threads,
            log=log,
        )
        if smoke:
            smoke_check(
                artifact.version,
                artifact,
                scorer,
                n_candidates=settings.n_candidates,
                top_k=settings.top_k,
            )
        recommender = Recommender(
            artifact.tables,
            scorer,
            n_candidates=settings.n_candidates,
            top_k=settings.top_k,
            max_new_products=settings.max_new_products,
            trending_half_life_s=settings.trending_half_life_s,
            trending=settings.proposes_trending,
        )
        writer = SuggestionWriter(
            self._suggestion_header,
            artifact.tables.product_ids.tolist(),
            settings.topics.events,
            artifact.version,
        )
        sessions = SessionStore(
            max_users=settings.max_sessions, idle_ttl_ms=int(settings.session_idle_ttl_s * 1000)
        )
        lane = Lane(artifact.version, recommender, writer, sessions)
        return Loaded(artifact, lane, drift_tracker(artifact, log))

    def _prepare(self, state: ServingState, loaded: frozenset[str]) -> dict[str, Loaded]:
        """Load and smoke-check the versions of ``state`` not in ``loaded`` (on the watcher's
        background thread: nothing of the serving state is touched).

        Raises:
            ModelRejected: a version cannot serve.
        """
        try:
            routing = routing_of(state)
        except ModelLoadError as exc:
            raise ModelRejected("?", str(exc)) from exc
        out: dict[str, Loaded] = {}
        for version in routing.versions:
            if version in loaded:
                continue
            log = self._base_log.bind(model_version=version)
            started = time.perf_counter()
            try:
                artifact = self._loader(version)
            except ModelLoadError as exc:
                raise ModelRejected(version, str(exc)) from exc
            if artifact.version != version:
                raise ModelRejected(version, f"its metadata names version {artifact.version}")
            out[version] = self._build(artifact, log, smoke=True)
            log.info("model_prepared", seconds=round(time.perf_counter() - started, 3))
        return out

    def _check_models(self, *, wait: bool = False) -> None:
        """Between micro-batches: poll the models directory (every ``--model-poll-s``) and swap
        in a version prepared meanwhile. ``wait``: wait for the preparation (at start)."""
        watcher = self.watcher
        if watcher is None:
            return
        problem = watcher.poll(frozenset(self.models.loaded))
        if problem is not None:
            self._rejected(problem, None)
        prepared = watcher.wait() if wait else watcher.take()
        if prepared is not None:
            self._apply(prepared)

    def _rejected(self, rejected: ModelRejected, state: ServingState | None) -> None:
        self.metrics.model_reloads.labels(outcome="rejected").inc()
        serving = self.models.state
        self.log.warning(
            "model_rejected",
            version=rejected.version,
            reason=rejected.reason,
            wanted=state.as_dict() if state is not None else None,
            serving=serving.as_dict(),
        )

    def _apply(self, prepared: Prepared) -> None:
        """Swap a prepared state in (on the loop thread, between micro-batches)."""
        if prepared.rejected is not None:
            self._rejected(prepared.rejected, prepared.state)
            return
        before = self.models.state
        started = time.perf_counter()
        try:
            self.models.swap(routing_of(prepared.state), prepared.loaded)
        except (ValueError, ModelLoadError) as exc:  # a reused version was dropped meanwhile
            self.log.info("model_swap_retry", reason=str(exc))
            if self.watcher is not None:
                self.watcher.retry()
            return
        after = self.models.state
        self.heap.freeze()  # the new version's objects: out of the full collections' walk
        champion = self.models.champion
        if champion.drift is not self.drift:
            for item in self.models.loaded.values():
                item.lane.recommender.drift = None
            self.drift = champion.drift
            champion.lane.recommender.drift = self.drift
            self._drift_updated_at = None
        self.log = self._base_log.bind(model_version=after.champion)
        self._show_models()
        self.metrics.model_reloads.labels(outcome="swapped").inc()
        self.log.info(
            "model_swapped",
            before=before.as_dict(),
            after=after.as_dict(),
            loaded=sorted(prepared.loaded),
            prepare_s=round(prepared.seconds, 3),
            # The loop thread's share of the swap (the rest happened in the background).
            swap_ms=round((time.perf_counter() - started) * 1000, 3),
            draining={
                v: n
                for v, n in self.models.sessions_by_version().items()
                if v not in self.models.routing.versions
            },
        )

    def _show_models(self) -> None:
        """``worker_model_info{version,role}``: one series per serving version."""
        routing = self.models.routing
        now = {(v, routing.role_of(v)) for v in routing.versions}
        gauge = self.metrics.model_info
        for version, role in self._model_info - now:
            gauge.remove(version, role)
        for version, role in now:
            gauge.labels(version=version, role=role).set(1)
        self._model_info = now

    def _make_checkpoint(
        self, producer_factory: Callable[..., Any], clock: Callable[[], float]
    ) -> Checkpoint:
        """The commit protocol of the configured mode, with its producers."""
        overrides = producer_overrides(self.settings)

        def new_producer() -> Any:
            return producer_factory(self.settings.kafka, self.log, **overrides)

        if self.settings.exactly_once:
            return TransactionalCheckpoint(
                new_producer,
                self.consumer,
                transaction_timeout_s=self.settings.transaction_timeout_s,
                on_wait=self._waiting_for_broker,
                log=self.log,
                clock=clock,
            )
        return Checkpoint(
            new_producer(),
            self.consumer,
            on_wait=self._waiting_for_broker,
            on_stuck=self._outputs_stuck,
            replacement=new_producer,
            log=self.log,
            clock=clock,
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        """Signal handler: finish the in-flight batch, flush, commit, leave the group."""
        if not self._stop.is_set():
            self.log.info("shutdown_requested", timeout_s=self.settings.shutdown_timeout_s)
            self._stop.set()
            self._stop_requested_at = time.monotonic()
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
        self._subscribe()
        self.heap.start()
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
            serving=self.models.state.as_dict(),
            model_pinned=self.settings.model_version,
            model_poll_s=self.settings.model_poll_s if self.watcher is not None else 0,
            gc_frozen_objects=self.heap.frozen(),
        )
        if self.settings.model_version is not None:
            self.log.info(
                "model_pinned",
                version=self.settings.model_version,
                note="LATEST and CHALLENGER are ignored: no polling, no challenger",
            )
        last_progress = last_input = time.monotonic()
        wait_s = self.settings.max_batch_wait_ms / 1000.0
        try:
            while not self._stop.is_set():
                # A batch is what has arrived, never waited for: with records queued, all of
                # them (up to the batch size) at once; with none, the first one as soon as it
                # comes. Under load batches grow by themselves (more arrives while one is
                # answered); at low load no record waits for others to fill its batch.
                messages = self.consumer.consume(self.settings.max_batch_size, timeout=0)
                if not messages:
                    messages = self.consumer.consume(1, timeout=max(wait_s, 0.001))
                self.health.beat()
                if messages:
                    last_input = time.monotonic()
                    self.process(messages)
                else:
                    # Nothing came: the last batch's acknowledgements are all there is to wait
                    # for (as long as the broker is away, like any batch's).
                    self._settle()
                    if self.rejoin_watch.watching:
                        self._check_rejoin()  # lost its partitions: rejoining, or wedged?
                    restoring = self.restorer is not None and self.restorer.restoring
                    if (
                        max_idle_s is not None
                        and not restoring
                        and time.monotonic() - last_input > max_idle_s
                    ):
                        self.log.info("idle_exit", idle_s=max_idle_s)
                        break
                self._step_restore()
                self._check_models()  # between batches (and transactions): swaps happen here
                self._update_drift(time.monotonic())
                if time.monotonic() - last_progress > PROGRESS_LOG_INTERVAL_S:
                    last_progress = time.monotonic()
                    self._housekeeping()
        finally:
            self._close()
            if server is not None:
                server.shutdown()
        return 0

    def _step_restore(self) -> None:
        """Read the changelog of the partitions being restored for a moment (longer when they
        are all this worker holds), install the sessions of those done and resume them."""
        if self.restorer is None or not self.restorer.restoring:
            return
        idle = not (self._assigned_numbers() - self.restorer.restoring)
        done = self.restorer.step(self._index_of, self.log, budget_s=0.25 if idle else 0.02)
        if done:
            self.restorer.install(done, self.sessions, self.log, self._restore_started)
            topic = self.settings.topics.events
            self.consumer.resume([TopicPartition(topic, p) for p in sorted(done)])
            self.metrics.restoring.set(len(self.restorer.restoring))

    def _assigned_numbers(self) -> set[int]:
        return {p for _, p in self._assigned}

    def _subscribe(self) -> None:
        self.consumer.subscribe(
            [self.settings.topics.events],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def _close(self) -> None:
        self._settle_last_batch(self._close_budget_s())
        self.checkpoint.producer.flush(10)
        self._close_consumer_within(self._close_budget_s())
        if self.restorer is not None:
            self.restorer.close()
        self.heap.stop()
        self.log.info(
            "worker_stopped",
            consumed=self._consumed,
            answered=self._answered,
            dead_lettered=self._dead,
            sessions=len(self.models),
        )

    def _settle_last_batch(self, within_s: float) -> None:
        """Store the offsets of the batch still waiting for its acknowledgements (overlapped) if
        they come within ``within_s``; otherwise nothing of it is stored and its events are
        redelivered to the partitions' next owner (at-least-once)."""
        try:
            self._settle(within_s)
        except DeliveryError as exc:
            self.log.warning("last_batch_not_acknowledged", reason=str(exc))

    def _close_budget_s(self) -> float:
        """What is left of the shutdown budget for closing the consumer."""
        budget = self.settings.shutdown_timeout_s - CLOSE_MARGIN_S
        if self._stop_requested_at is not None:
            budget -= time.monotonic() - self._stop_requested_at
        return max(budget, 1.0)

    def _close_consumer_within(self, budget_s: float) -> None:
        """Close the consumer (commit stored offsets, leave the group), giving up after
        ``budget_s``: a consumer that librdkafka keeps waiting for commits that will never
        complete (see ``RejoinWatch``) must not hold the process until the shutdown watchdog
        kills it. Offsets not committed are redelivered: at-least-once holds."""
        closer = threading.Thread(
            target=_close_quietly,
            args=(self.consumer, self.log),
            name="consumer-close",
            daemon=True,
        )
        closer.start()
        closer.join(budget_s)
        if closer.is_alive():
            self.log.warning("consumer_close_timeout", waited_s=round(budget_s, 1))

    def _check_rejoin(self) -> None:
        """While the consumer waits to rejoin after a loss: probe the broker when the watch asks,
        and replace a consumer that the watch finds wedged."""
        watch = self.rejoin_watch
        if watch.wants_probe(self._clock()):
            watch.probed(self._clock(), self._broker_answers())
        if watch.wedged(self._clock()):
            self._replace_consumer(watch.waiting_for(self._clock()))

    def _broker_answers(self) -> bool:
        try:
            self.consumer.list_topics(
                topic=self.settings.topics.events, timeout=REJOIN_PROBE_TIMEOUT_S
            )
        except KafkaException:
            return False
        return True

    def _replace_consumer(self, waited_s: float) -> None:
        """Give the wedged consumer up (closed in the background, its rebalance callbacks
        ignored from now on) and join the group with a fresh one. Its partitions were lost, so
        it holds nothing to commit; their new owners answer from the committed offsets."""
        old = self.consumer
        self.log.error(
            "consumer_wedged",
            waited_s=round(waited_s, 1),
            action="replacing the consumer",
            rejoin_s=self.rejoin_watch.rejoin_s,
        )
        self.consumer = self._new_consumer()
        self.checkpoint.use_consumer(self.consumer)
        self._subscribe()
        self.metrics.consumer_replacements.inc()
        self.rejoin_watch = RejoinWatch(self.rejoin_watch.rejoin_s, self.rejoin_watch.probe_every_s)
        self.rejoin_watch.lost(self._clock())  # the fresh one must join within the bound too
        threading.Thread(
            target=_close_quietly, args=(old, self.log), name="wedged-close", daemon=True
        ).start()

    def _update_drift(self, now_s: float, *, force: bool = False) -> None:
        """Every :data:`DRIFT_UPDATE_INTERVAL_S`: roll the drift window to ``now_s``, export
        each quantity's PSI (none while the window holds too few events) and log
        ``input_drift`` when one crosses :data:`~worker.core.drift.PSI_SIGNIFICANT`."""
        drift = self.drift
        if drift is None:
            return
        if (
            not force
            and self._drift_updated_at is not None
            and now_s - self._drift_updated_at < DRIFT_UPDATE_INTERVAL_S
        ):
            return
        self._drift_updated_at = now_s
        drift.advance(now_s)
        current = drift.psi()
        gauge = self.metrics.input_drift
        for name in self._drift_psi.keys() - current.keys():
            gauge.remove(name)
        for name, value in current.items():
            gauge.labels(quantity=name).set(value)
        for name, value, above in crossings(self._drift_psi, current, PSI_SIGNIFICANT):
            (self.log.warning if above else self.log.info)(
                "input_drift",
                quantity=name,
                psi=round(value, 3),
                threshold=PSI_SIGNIFICANT,
                above=above,
                window_events=drift.window_events,
            )
        self._drift_psi = current

    def _drop_drained(self) -> None:
        """Drop the versions no routing names and no session holds any more."""
        dropped = self.models.prune()
        if dropped:
            # A retired version's reference cycles sit in the frozen generation: one full
            # collection returns them (a pause of tens of ms, once per retired version).
            reclaim_s = self.heap.reclaim()
            self.log.info(
                "model_drained", versions=dropped, gc_reclaim_ms=round(reclaim_s * 1e3, 1)
            )

    def _housekeeping(self) -> None:
        expired = self.models.expire_idle()
        self._drop_drained()
        self.metrics.sessions.set(len(self.models))
        self.metrics.trending_products.set(self.live.trending.active_products())
        self.log.info(
            "worker_progress",
            consumed=self._consumed,
            answered=self._answered,
            dead_lettered=self._dead,
            sessions=len(self.models),
            sessions_by_version=self.models.sessions_by_version(),
            sessions_migrated=self.models.migrated,
            expired=expired,
            new_products=len(self.live),
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
        if consumer is not self.consumer:
            return  # a consumer given up (see _replace_consumer) calls back while it closes
        self.rejoin_watch.rejoined()
        committed = committed_offsets(consumer, partitions)
        assign_at(consumer, partitions, committed, incremental=True)
        if self.restorer is not None and partitions:
            # Sessions of the gained partitions are restored before their next event is scored:
            # the partitions stay paused meanwhile while the others are answered (the main loop
            # reads the changelog between batches, _step_restore). Exactly-once: until the
            # changelog has caught up with the committed offsets, which are where fetching
            # starts. At-least-once: to the changelog's end, waiting for nothing (state may be
            # ahead of the committed offsets, which are sent a second later; a redelivered event
            # is recognised by its session's last offset).
            consumer.pause(partitions)
            self._restore_started = self._clock()
            self.restorer.begin(
                [p.partition for p in partitions],
                committed={p: o for (_, p), o in committed.items()}
                if self.settings.exactly_once
                else {},
            )
            self.metrics.restoring.set(len(self.restorer.restoring))
        self._assigned |= {(p.topic, p.partition) for p in partitions}
        self.health.assigned_partitions = len(self._assigned)
        self.metrics.assigned.set(len(self._assigned))
        self.log.info(
            "partitions_assigned",
            partitions=sorted(p.partition for p in partitions),
            rss_mib=rss_mib(),
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if consumer is not self.consumer:
            return
        # The last batch may still wait for its acknowledgements (overlapped): settle it, so
        # every stored offset belongs to an acknowledged batch, and commit them before the
        # partitions move.
        self._settle()
        self.checkpoint.commit_stored()
        self._forget(partitions, "partitions_revoked")

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if consumer is not self.consumer:
            return
        self.rejoin_watch.lost(self._clock())
        self._forget(partitions, "partitions_lost")

    def _forget(self, partitions: list[TopicPartition], event: str) -> None:
        self._assigned -= {(p.topic, p.partition) for p in partitions}
        if self.restorer is not None:
            self.restorer.cancel(p.partition for p in partitions)
            self.metrics.restoring.set(len(self.restorer.restoring))
        self.health.assigned_partitions = len(self._assigned)
        self.metrics.assigned.set(len(self._assigned))
        dropped = self.models.drop_partitions({p.partition for p in partitions})
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

    def process(self, messages: Sequence[Any]) -> BatchOutcome:
        """Answer one micro-batch and store its offsets once every output is acknowledged.

        Consumer error events among ``messages`` are handled here, before the step.

        Raises:
            BrokerError: a fatal consumer error.
            DeliveryError: an output failed (nothing stored; the process exits and the batch is
                redelivered).
        """
        records = self._records(messages)
        batch = self.step.run(records, self.models, self._assigned_numbers())
        for version, n in batch.answered_by.items():
            self.metrics.events_routed.labels(model_version=version).inc(n)
        self._count_rejections(batch)
        if self._overlap:
            return self._answer_overlapped(len(messages), batch)
        t0 = time.perf_counter()
        self.checkpoint.send_all(batch.outputs())
        t1 = time.perf_counter()
        replaced_before = self.checkpoint.replaced
        try:
            self.checkpoint.complete(batch.next_offsets)
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
        t2 = time.perf_counter()
        stages = {**batch.stages_s, "produce": t1 - t0, "checkpoint": t2 - t1}
        self._record_batch(len(messages), batch, now_ms(), stages)
        return BatchOutcome(answered=len(batch.entries), dead_lettered=len(batch.rejections))

    def _answer_overlapped(self, n_messages: int, batch: BatchResult) -> BatchOutcome:
        """At-least-once: complete the previous batch (its outputs were acknowledged while
        this one was computed, mostly), produce this one's and leave them to be acknowledged
        while the next batch is consumed and computed (``Checkpoint.defer``). The ``checkpoint``
        stage is the wait for the previous batch."""
        self._settle()
        t0 = time.perf_counter()
        self.checkpoint.send_all(batch.outputs())
        self.checkpoint.defer(batch.next_offsets, (n_messages, batch, time.perf_counter() - t0))
        return BatchOutcome(answered=len(batch.entries), dead_lettered=len(batch.rejections))

    def _settle(self, within_s: float | None = None) -> None:
        """``Checkpoint.settle``, counting producer replacements, then the settled batch's
        metrics (its ``checkpoint`` stage: this wait)."""
        started = time.perf_counter()
        replaced_before = self.checkpoint.replaced
        try:
            settled = self.checkpoint.settle(within_s)
        finally:
            self.metrics.producer_replacements.inc(self.checkpoint.replaced - replaced_before)
        self.health.backpressure = False
        waited_s = time.perf_counter() - started
        for n_messages, batch, produce_s in settled:
            stages = {**batch.stages_s, "produce": produce_s, "checkpoint": waited_s}
            self._record_batch(n_messages, batch, now_ms(), stages)

    def _records(self, messages: Sequence[Any]) -> list[InputRecord]:
        """The records among ``messages``; consumer error events are handled on the way.

        Raises:
            BrokerError: a fatal consumer error.
        """
        records = []
        for msg in messages:
            err = msg.error()
            if err is None:
                records.append(msg)
            else:
                self._on_consume_error(err)
        return records

    def _count_rejections(self, batch: BatchResult) -> None:
        for rejection in batch.rejections:
            self.metrics.dead_letters.labels(error_class=rejection.error_class).inc()
            self.log.debug(
                "record_dead_lettered",
                error_class=rejection.error_class,
                error=rejection.error,
                partition=rejection.partition,
                offset=rejection.offset,
            )

    def _rewind(self, reason: str) -> None:
        """After an abandoned transaction: back to the last committed offsets and the session
        state committed with them, so the batch is answered again, exactly once."""
        partitions = [TopicPartition(t, p) for t, p in sorted(self._assigned)]
        committed = committed_offsets(self.consumer, partitions)
        for (topic, partition), offset in committed.items():
            try:
                self.consumer.seek(start_at(topic, partition, offset))
            except KafkaException as exc:
                # Not in the consumer's assignment any more: its session expired while the
                # batch waited (a frozen process), the loss is served by the next consume, and a
                # partition not assigned is never fetched from its old position.
                if exc.args[0].code() != KafkaError._STATE:
                    raise
                self.log.warning("seek_skipped", partition=partition, reason=str(exc))
        numbers = {tp.partition for tp in partitions}
        self.models.drop_partitions(numbers)
        self.models.drain_forgotten()
        if self.restorer is not None:
            # Every partition at once, those whose restore was under way included (paused).
            self.restorer.restore(
                sorted(numbers),
                self.sessions,
                self._index_of,
                self.log,
                committed={p: o for (_, p), o in committed.items()},
            )
            self.consumer.resume(partitions)
            self.metrics.restoring.set(0)
        self.health.backpressure = False
        self.log.warning(
            "batch_rewound", reason=reason, partitions=sorted(numbers), rss_mib=rss_mib()
        )

    def _record_batch(
        self, n_messages: int, batch: BatchResult, acked_ms: int, stages: dict[str, float]
    ) -> None:
        m = self.metrics
        answered, n_dead = len(batch.entries), len(batch.rejections)
        self._consumed += n_messages
        self._answered += answered
        self._dead += n_dead
        m.events_in.inc(n_messages)
        m.suggestions_out.inc(answered)
        for version, n in batch.answered_by.items():
            m.suggestions_by_version.labels(model_version=version).inc(n)
        migrated = self.models.migrated
        m.sessions_migrated.inc(migrated - self._migrated_counted)
        self._migrated_counted = migrated
        if len(self.models.lanes()) > len(self.models.routing.versions):
            self._drop_drained()  # a drained version is dropped once its last user left
        m.cold_start_events.inc(batch.cold_start_events)
        # New products per lane's serving catalogue, each counted from its own total: a swap
        # changes which catalogue is the champion's, and a new lane starts from zero.
        counted: dict[int, int] = {}
        for lane in self.models.lanes():
            catalogue = lane.recommender.live
            before = self._new_products_counted.get(id(catalogue), 0)
            m.new_products.inc(max(0, catalogue.added_total - before))
            counted[id(catalogue)] = catalogue.added_total
        self._new_products_counted = counted
        live = self.live
        m.live_products.set(len(live))
        m.batches.inc()
        m.batch_size.observe(n_messages)
        for stage, seconds in stages.items():
            m.stage_seconds.labels(stage=stage).observe(seconds)
        for entry in batch.entries:
            m.latency.observe(max(0, acked_ms - entry.event.event_time_ms) / 1000.0)
        self.log.debug(
            "batch_scored",
            events=n_messages,
            answered=answered,
            dead_lettered=n_dead,
            cold_starts=batch.cold_start_events,
            **{f"{k}_ms": round(v * 1000, 3) for k, v in stages.items()},
        )

    def _on_consume_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.fatal():
            raise BrokerError(f"fatal consumer error: {err.name()}: {err.str()}")
        self.log.warning("consume_error", error=err.name(), retriable=err.retriable())


def drift_tracker(artifact: ModelArtifact, log: Any) -> DriftTracker | None:
    """The input drift tracker of the artifact's ``drift_reference``; None without one (no
    drift metric), or with one this worker cannot read (logged)."""
    reference = artifact.metadata.get("drift_reference")
    if reference is None:
        return None
    try:
        return DriftTracker(ReferenceProfile.from_json(reference))
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("drift_reference_unreadable", error=str(exc))
        return None


def _close_quietly(consumer: Consumer, log: Any) -> None:
    try:
        consumer.close()  # commits stored offsets and leaves the group
    except Exception as exc:  # the consumer may already be closed after a fatal error
        log.warning("consumer_close_failed", error=str(exc))
