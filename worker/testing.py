"""In-memory stand-ins for the product's outside world, for tests (here and in other teams'
projects): a schema registry; a tiny model (catalogue and a stand-in booster, built in
milliseconds); and fakes of the confluent-kafka consumer and producer, over a shared fake
broker, that the worker loop and the commit protocol are unit-tested against.

The Kafka fakes follow librdkafka where the worker depends on it (each class says where); they
are not a broker: no replication, no retention, no compaction, one group generation.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fastavro.schema
import numpy as np
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_INVALID,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from worker.core.catalogue import CatalogueTables
from worker.core.errors import UnknownSchemaError
from worker.core.features import FEATURE_NAMES, N_FEATURES
from worker.core.records import BrowsingEvent, RankedProduct, SourceRef
from worker.model.artifact import ModelArtifact


@dataclass
class InMemorySchemaRegistry:
    """A registry held in memory: ids start at 1 and identical schemas share an id."""

    _by_id: dict[int, Mapping[str, Any]] = field(default_factory=dict)
    _by_canonical: dict[str, int] = field(default_factory=dict)

    def register(self, subject: str, schema_json: Mapping[str, Any]) -> int:
        canonical = fastavro.schema.to_parsing_canonical_form(dict(schema_json))
        if canonical not in self._by_canonical:
            schema_id = len(self._by_id) + 1
            self._by_id[schema_id] = schema_json
            self._by_canonical[canonical] = schema_id
        return self._by_canonical[canonical]

    def schema_by_id(self, schema_id: int) -> Mapping[str, Any]:
        try:
            return self._by_id[schema_id]
        except KeyError:
            raise UnknownSchemaError(f"schema id {schema_id} is not registered") from None


# -- a tiny model ---------------------------------------------------------------------------------


def tiny_catalogue(n_products: int = 60, n_categories: int = 4, seed: int = 0) -> CatalogueTables:
    """A synthetic catalogue of ``n_products`` products (ids ``p000``...), deterministic for a
    seed: enough structure (categories, co-visitation, popularity) for every candidate source
    and feature to take part, built in milliseconds instead of training on a history."""
    rng = np.random.default_rng(seed)
    views = rng.integers(1, 1000, n_products)
    by_views = np.argsort(-views, kind="stable")
    global_rank = np.empty(n_products, dtype=np.int64)
    global_rank[by_views] = np.arange(n_products)
    category = (np.arange(n_products) % n_categories).astype(np.int32)
    category_rank = np.empty(n_products, dtype=np.int64)
    category_top = np.full((n_categories, 10), -1, dtype=np.int32)
    for c in range(n_categories):
        members = [int(i) for i in by_views if category[i] == c]
        category_rank[members] = np.arange(len(members))
        category_top[c, : min(10, len(members))] = members[:10]
    covis_items = np.full((n_products, 8), -1, dtype=np.int32)
    covis_scores = np.zeros((n_products, 8), dtype=np.float32)
    for i in range(n_products):
        others = rng.choice(np.delete(np.arange(n_products), i), size=6, replace=False)
        weights = rng.random(6)
        covis_items[i, :6] = others
        covis_scores[i, :6] = weights / weights.sum()
    prices = np.round(rng.uniform(1.0, 200.0, n_products), 2)
    return CatalogueTables(
        product_ids=np.array([f"p{i:03d}" for i in range(n_products)]),
        category_ids=np.array([f"c{c}" for c in range(n_categories)]),
        category=category,
        log_price=np.log1p(prices).astype(np.float32),
        log_pop=np.log1p(views).astype(np.float32),
        cart_rate=rng.uniform(0.0, 0.3, n_products).astype(np.float32),
        global_rank=np.log1p(global_rank).astype(np.float32),
        category_rank=np.log1p(category_rank).astype(np.float32),
        covis_items=covis_items,
        covis_scores=covis_scores,
        category_top=category_top,
        global_top=by_views[:20].astype(np.int32),
    )


class LinearBooster:
    """Stands in for ``lightgbm.Booster``: the score of a row is a fixed weighted sum of its
    features, summed column by column in float64 (elementwise operations only, so the scores,
    and the suggestion bytes that carry them, are the same on every machine)."""

    def __init__(self, n_features: int = N_FEATURES, seed: int = 1) -> None:
        self.weights = np.random.default_rng(seed).uniform(-1.0, 1.0, n_features).tolist()

    def num_feature(self) -> int:
        return len(self.weights)

    def predict(self, features: np.ndarray, num_threads: int = 1) -> np.ndarray:
        scores = np.zeros(features.shape[0], dtype=np.float64)
        for column, weight in enumerate(self.weights):
            scores += features[:, column].astype(np.float64) * weight
        return scores


def tiny_artifact(path: Path, version: str = "tiny-1", seed: int = 0) -> ModelArtifact:
    """A model artifact made of :func:`tiny_catalogue` and a :class:`LinearBooster`, for
    ``scoring_backend="lightgbm"`` (nothing is written to ``path``)."""
    return ModelArtifact(
        path=path,
        version=version,
        tables=tiny_catalogue(seed=seed),
        booster=LinearBooster(),
        metadata={"feature_names": list(FEATURE_NAMES)},
    )


# -- Kafka fakes ----------------------------------------------------------------------------------

#: ``Message.timestamp()`` type of a producer-set (create) time, as confluent_kafka numbers it.
TIMESTAMP_CREATE_TIME = 1


class FakeMessage:
    """A consumed (or delivered) record with confluent_kafka's ``Message`` accessors.

    ``error`` set makes it a consumer error event (``topic()``/``offset()`` then describe where
    it happened, as librdkafka's do).
    """

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp_ms: int = 0,
        error: Any = None,
    ) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset
        self._key, self._value, self._headers = key, value, headers
        self._timestamp_ms, self._error = timestamp_ms, error

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (TIMESTAMP_CREATE_TIME, self._timestamp_ms)

    def error(self) -> Any:
        return self._error

    def __repr__(self) -> str:
        return f"FakeMessage({self._topic}[{self._partition}]@{self._offset}, key={self._key!r})"


class RecordingLog:
    """A structlog-style logger keeping (event, fields) of every line."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def bind(self, **_: object) -> RecordingLog:
        return self

    def _record(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))

    info = warning = error = debug = critical = _record

    def events(self) -> list[str]:
        return [e for e, _ in self.lines]

    def fields(self, event: str) -> list[dict[str, Any]]:
        return [f for e, f in self.lines if e == event]


class FakeClock:
    """Monotonic seconds that move only when told: by :meth:`advance`, by a fake client that
    waits (a ``flush`` with work left, a ``poll`` or ``consume`` with nothing to serve), or by
    ``tick_s`` on every reading (for code that waits in real threads and reads the clock)."""

    def __init__(self, start_s: float = 1000.0, tick_s: float = 0.0) -> None:
        self.now = start_s
        self.tick_s = tick_s

    def __call__(self) -> float:
        now = self.now
        self.now += self.tick_s
        return now

    def advance(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


class FakeBroker:
    """The cluster as the fakes share it: each partition's log as a ``read_committed`` reader
    sees it, the groups' committed offsets, the producer epochs of transactional ids, and
    whether the broker answers requests at all.

    Args:
        partitions: partition count of a topic not given in ``topic_partitions``.
        topic_partitions: partition counts per topic.
    """

    def __init__(self, partitions: int = 1, topic_partitions: Mapping[str, int] | None = None):
        self.default_partitions = partitions
        self.topic_partitions = dict(topic_partitions or {})
        self.logs: dict[tuple[str, int], list[FakeMessage]] = {}
        self.committed: dict[str, dict[tuple[str, int], int]] = {}
        self.answers = True
        self.epochs: dict[str, int] = {}
        self._next_offset: dict[tuple[str, int], int] = {}

    def partitions(self, topic: str) -> int:
        return self.topic_partitions.get(topic, self.default_partitions)

    def next_offset(self, topic: str, partition: int) -> int:
        """Take the next offset of a partition (aborted records use offsets too, as in Kafka)."""
        offset = self._next_offset.get((topic, partition), 0)
        self._next_offset[(topic, partition)] = offset + 1
        return offset

    def append(self, message: FakeMessage) -> None:
        """Make a record visible (written outside a transaction, or its transaction committed)."""
        self.logs.setdefault((message.topic(), message.partition()), []).append(message)

    def add(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp_ms: int = 0,
    ) -> FakeMessage:
        """Write one record directly (input for a consumer); return it with its offset."""
        message = FakeMessage(
            topic, partition, self.next_offset(topic, partition), key, value, headers, timestamp_ms
        )
        self.append(message)
        return message

    def messages(self, topic: str) -> list[FakeMessage]:
        """Visible records of ``topic``, partition by partition, each in offset order."""
        return [m for (t, _), log in sorted(self.logs.items()) if t == topic for m in log]

    def end_offset(self, topic: str, partition: int) -> int:
        log = self.logs.get((topic, partition), [])
        return log[-1].offset() + 1 if log else 0


def _queue_full() -> BufferError:
    return BufferError("Local: Queue full")


def _error(code: int, text: str, **flags: bool) -> KafkaException:
    return KafkaException(KafkaError(code, text, **flags))


@dataclass
class _Outgoing:
    message: FakeMessage
    on_delivery: Any


class FakeProducer:
    """confluent_kafka's ``Producer`` over a :class:`FakeBroker`, with librdkafka's semantics
    where the worker depends on them:

    * ``produce`` queues; delivery reports are served only by ``poll``/``flush``, in order;
      ``flush`` returns how many messages are still queued or in flight; ``produce`` raises
      ``BufferError`` while ``queue_limit`` messages are queued.
    * ``purge(in_queue=True, in_flight=False)`` fails the queued messages with
      ``_PURGE_QUEUE`` (reported by the next ``poll``/``flush``, without headers or timestamp);
      in-flight ones are left to settle.
    * ``list_topics`` raises ``KafkaException(_TRANSPORT)`` while the broker does not answer.
    * Transactions (``transactional.id`` in ``config``): ``init_transactions`` fences the
      previous producer of the id; records of a transaction become visible on
      ``commit_transaction`` together with the offsets sent to it; ``abort_transaction`` drops
      them; a fenced producer's calls raise a fatal ``_FENCED``.

    Faults, set by the test:
        stuck: queued messages are never sent (a partition whose leader librdkafka lost for
            good, #5430), while ``list_topics`` answers. ``stuck_topics`` does that per topic.
        fail_topics: topic -> error code: each message to it fails for good with that error.
        settle_in_flight: False keeps in-flight messages unanswered (:meth:`send_in_flight`).
        txn_errors: call name -> KafkaError raised (once) by that transactional call.
        during_flush: callables run, once each, by the next ``flush`` (a rebalance while a
            batch waits for its acknowledgements, say).
    """

    def __init__(
        self,
        broker: FakeBroker,
        config: Mapping[str, Any] | None = None,
        *,
        clock: FakeClock | None = None,
        queue_limit: int = 100_000,
    ) -> None:
        self.broker = broker
        self.config = dict(config or {})
        self.clock = clock
        self.queue_limit = queue_limit
        self.queued: list[_Outgoing] = []
        self.in_flight: list[_Outgoing] = []
        self._reports: list[tuple[Any, KafkaError | None, FakeMessage]] = []
        self.stuck = False
        self.stuck_topics: set[str] = set()
        self.fail_topics: dict[str, int] = {}
        self.settle_in_flight = True
        self.txn_errors: dict[str, KafkaError] = {}
        self.during_flush: list[Callable[[], None]] = []
        self.calls: list[str] = []
        self.transactional_id: str | None = self.config.get("transactional.id")
        self._epoch = 0
        self.in_transaction = False
        self._txn_records: list[FakeMessage] = []
        self._txn_offsets: tuple[str, list[TopicPartition]] | None = None

    # -- producing -------------------------------------------------------------------------------

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int = -1,
        on_delivery: Any = None,
        timestamp: int = 0,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        if self.transactional_id is not None and not self.in_transaction:
            raise _error(KafkaError._STATE, "produce() outside a transaction")
        if len(self.queued) + len(self.in_flight) >= self.queue_limit:
            raise _queue_full()
        if partition < 0:
            partition = zlib.crc32(key or b"") % self.broker.partitions(topic)
        message = FakeMessage(topic, partition, -1, key, value, headers, timestamp)
        self.queued.append(_Outgoing(message, on_delivery))

    def send_in_flight(self, n: int | None = None) -> None:
        """Move the first ``n`` queued messages (all if None) in flight: sent, not answered."""
        n = len(self.queued) if n is None else n
        self.in_flight.extend(self.queued[:n])
        del self.queued[:n]

    def poll(self, timeout: float | None = 0) -> int:
        served = self._serve()
        if not served and self.clock is not None and timeout:
            self.clock.advance(timeout)
        return served

    def flush(self, timeout: float | None = None) -> int:
        self.calls.append("flush")
        hooks, self.during_flush = self.during_flush, []
        for hook in hooks:
            hook()
        self._serve()
        left = len(self.queued) + len(self.in_flight)
        if left and self.clock is not None:
            self.clock.advance(timeout if timeout is not None and timeout > 0 else 1.0)
        return left

    def purge(self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True) -> None:
        self.calls.append(f"purge(in_queue={in_queue}, in_flight={in_flight})")
        if in_queue:
            for out in self.queued:
                self._report(out, KafkaError(KafkaError._PURGE_QUEUE), purged=True)
            self.queued = []
        if in_flight:
            for out in self.in_flight:
                self._report(out, KafkaError(KafkaError._PURGE_INFLIGHT), purged=True)
            self.in_flight = []

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        if not self.broker.answers:
            raise _error(KafkaError._TRANSPORT, "Broker transport failure")
        return SimpleNamespace(topics={topic: SimpleNamespace(topic=topic)} if topic else {})

    def __len__(self) -> int:
        return len(self.queued) + len(self.in_flight) + len(self._reports)

    def _serve(self) -> int:
        if self.broker.answers:
            if self.settle_in_flight:
                for out in self.in_flight:
                    self._deliver(out)
                self.in_flight = []
            keep = []
            for out in self.queued:
                topic = out.message.topic()
                if self.stuck or topic in self.stuck_topics:
                    keep.append(out)
                else:
                    self._deliver(out)
            self.queued = keep
        reports, self._reports = self._reports, []
        for on_delivery, err, message in reports:
            if on_delivery is not None:
                on_delivery(err, message)
        return len(reports)

    def _deliver(self, out: _Outgoing) -> None:
        m = out.message
        code = self.fail_topics.get(m.topic())
        if code is not None:
            self._report(out, KafkaError(code))
            return
        offset = self.broker.next_offset(m.topic(), m.partition())
        written = FakeMessage(
            m.topic(), m.partition(), offset, m.key(), m.value(), m.headers(), m.timestamp()[1]
        )
        if self.transactional_id is not None:
            self._txn_records.append(written)
        else:
            self.broker.append(written)
        self._reports.append((out.on_delivery, None, written))

    def _report(self, out: _Outgoing, err: KafkaError, purged: bool = False) -> None:
        m = out.message
        if purged:  # librdkafka hands a purged message back without headers and timestamp
            m = FakeMessage(m.topic(), m.partition(), -1, m.key(), m.value())
        self._reports.append((out.on_delivery, err, m))

    # -- transactions ------------------------------------------------------------------------------

    def _txn_call(self, name: str) -> None:
        self.calls.append(name)
        error = self.txn_errors.pop(name, None)
        if error is not None:
            raise KafkaException(error)
        if self.transactional_id is None:
            raise _error(KafkaError._NOT_CONFIGURED, "the producer is not transactional")
        if name != "init_transactions" and self.broker.epochs.get(self.transactional_id) != (
            self._epoch
        ):
            raise _error(KafkaError._FENCED, "producer fenced by a newer instance", fatal=True)

    def init_transactions(self, timeout: float | None = None) -> None:
        self._txn_call("init_transactions")
        assert self.transactional_id is not None
        self._epoch = self.broker.epochs.get(self.transactional_id, 0) + 1
        self.broker.epochs[self.transactional_id] = self._epoch  # fences the previous one

    def begin_transaction(self) -> None:
        self._txn_call("begin_transaction")
        if self.in_transaction:
            raise _error(KafkaError._STATE, "a transaction is already open")
        self.in_transaction = True

    def send_offsets_to_transaction(
        self, positions: list[TopicPartition], group_metadata: Any, timeout: float | None = None
    ) -> None:
        self._txn_call("send_offsets_to_transaction")
        self._txn_offsets = (group_metadata.group_id, list(positions))

    def commit_transaction(self, timeout: float | None = None) -> None:
        self._txn_call("commit_transaction")
        if self.flush(timeout if timeout is not None else 1.0):
            raise _error(KafkaError._TIMED_OUT, "outputs not acknowledged", retriable=True)
        for message in self._txn_records:
            self.broker.append(message)
        if self._txn_offsets is not None:
            group, positions = self._txn_offsets
            committed = self.broker.committed.setdefault(group, {})
            for tp in positions:
                committed[(tp.topic, tp.partition)] = tp.offset
        self._end_transaction()

    def abort_transaction(self, timeout: float | None = None) -> None:
        self._txn_call("abort_transaction")
        self.purge(in_queue=True, in_flight=True)
        self._end_transaction()

    def _end_transaction(self) -> None:
        self._txn_records, self._txn_offsets = [], None
        self.in_transaction = False


@dataclass(frozen=True)
class FakeGroupMetadata:
    """What ``consumer_group_metadata()`` hands to ``send_offsets_to_transaction``."""

    group_id: str


def _tp_key(tp: TopicPartition) -> tuple[str, int]:
    return (tp.topic, tp.partition)


def _key_of(message: Any) -> tuple[str, int]:
    return (message.topic(), message.partition())


class FakeConsumer:
    """confluent_kafka's ``Consumer`` over a :class:`FakeBroker`, with librdkafka's semantics
    where the worker depends on them:

    * ``consume`` first serves due rebalance events (``on_assign``/``on_revoke``/``on_lost``
      callbacks run from inside it, as librdkafka's do), then returns the next batch queued with
      :meth:`add_batch`, or else reads the assigned partitions of the broker from their
      positions (``enable.partition.eof`` adds an EOF event per partition reaching its end).
      It never returns records of partitions no longer assigned.
    * ``store_offsets`` stores the offsets of assigned partitions and raises
      ``KafkaException(_STATE)`` only when it could store none (``rd_kafka_offsets_store``).
    * ``commit()`` commits the stored offsets, raising ``_NO_OFFSET`` when there is nothing new;
      with ``enable.auto.commit`` revoked partitions' and ``close``'s stored offsets are
      committed too; ``close`` revokes the assignment through ``on_revoke`` first.
    * ``seek`` moves a position and discards records fetched ahead for that partition.

    Every call is recorded in :attr:`calls` (name, argument).
    """

    def __init__(
        self,
        broker: FakeBroker | None = None,
        group_id: str = "group",
        config: Mapping[str, Any] | None = None,
        *,
        clock: FakeClock | None = None,
    ) -> None:
        self.broker = broker or FakeBroker()
        self.group_id = group_id
        self.config = dict(config or {})
        self.auto_commit = bool(self.config.get("enable.auto.commit", True))
        self.partition_eof = bool(self.config.get("enable.partition.eof", False))
        self.clock = clock
        self.calls: list[tuple[str, Any]] = []
        self.positions: dict[tuple[str, int], int] = {}  # the assignment, with positions
        self.stored: dict[tuple[str, int], int] = {}
        self.closed = False
        self._batches: list[list[Any]] = []
        self._callbacks: dict[str, Any] = {}
        self._due: list[tuple[str, list[TopicPartition]]] = []
        self._at_eof: set[tuple[str, int]] = set()
        self.paused: set[tuple[str, int]] = set()

    # -- the group -------------------------------------------------------------------------------

    def subscribe(
        self, topics: list[str], on_assign: Any = None, on_revoke: Any = None, on_lost: Any = None
    ) -> None:
        self._check_open()
        self.calls.append(("subscribe", list(topics)))
        self._callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}

    def schedule(self, event: str, partitions: list[tuple[str, int]]) -> None:
        """Let the next ``consume`` serve a rebalance event: ``"assign"``, ``"revoke"`` or
        ``"lost"`` of ``partitions``."""
        self._due.append((event, [TopicPartition(t, p) for t, p in partitions]))

    def take_away(self, partitions: list[tuple[str, int]]) -> None:
        """The group gave ``partitions`` to another member while this one was busy (its session
        or poll interval ran out): they are no longer assigned (offsets cannot be stored for
        them) and ``on_lost`` runs on the next ``consume``."""
        for tp in partitions:
            self.positions.pop(tp, None)
            self.stored.pop(tp, None)
        self.schedule("lost", partitions)

    def rebalance_now(self, event: str, partitions: list[tuple[str, int]]) -> None:
        """Run a rebalance event at once (as ``consume`` would)."""
        self._rebalance(event, [TopicPartition(t, p) for t, p in partitions])

    def _rebalance(self, event: str, partitions: list[TopicPartition]) -> None:
        self.calls.append((event, sorted(_tp_key(tp) for tp in partitions)))
        callback = self._callbacks.get(event)
        if event == "assign":
            if callback is not None:
                callback(self, partitions)
            for tp in partitions:  # what the callback did not assign, librdkafka does
                self.positions.setdefault(_tp_key(tp), self._start(tp))
            return
        if callback is not None:
            callback(self, partitions)
        gone = {_tp_key(tp) for tp in partitions}
        if event == "revoke" and self.auto_commit:
            self._commit({tp: o for tp, o in self.stored.items() if tp in gone})
        for key in gone:
            self.positions.pop(key, None)
            self.stored.pop(key, None)
            self.paused.discard(key)
        self._batches = [
            [m for m in b if (m.topic(), m.partition()) not in gone] for b in self._batches
        ]

    def assign(self, partitions: list[TopicPartition]) -> None:
        self._check_open()
        self.calls.append(("assign", [(tp.topic, tp.partition, tp.offset) for tp in partitions]))
        self.positions = {_tp_key(tp): self._start(tp) for tp in partitions}
        self._at_eof = set()
        self.paused = set()

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        self._check_open()
        self.calls.append(
            ("incremental_assign", [(tp.topic, tp.partition, tp.offset) for tp in partitions])
        )
        for tp in partitions:
            self.positions[_tp_key(tp)] = self._start(tp)

    def incremental_unassign(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("incremental_unassign", sorted(_tp_key(tp) for tp in partitions)))
        for tp in partitions:
            self.positions.pop(_tp_key(tp), None)
            self.paused.discard(_tp_key(tp))
            self._at_eof.discard(_tp_key(tp))

    def pause(self, partitions: list[TopicPartition]) -> None:
        """Stop reading ``partitions`` (assigned ones) until :meth:`resume`."""
        self.calls.append(("pause", sorted(_tp_key(tp) for tp in partitions)))
        for tp in partitions:
            if _tp_key(tp) in self.positions:
                self.paused.add(_tp_key(tp))
        gone = {_tp_key(tp) for tp in partitions}
        self._batches = [
            [m for m in b if m.error() is not None or _key_of(m) not in gone] for b in self._batches
        ]

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("resume", sorted(_tp_key(tp) for tp in partitions)))
        for tp in partitions:
            self.paused.discard(_tp_key(tp))

    def unassign(self) -> None:
        self.calls.append(("unassign", None))
        self.positions = {}
        self.paused = set()

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.positions]

    def consumer_group_metadata(self) -> FakeGroupMetadata:
        return FakeGroupMetadata(self.group_id)

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        """Metadata: answered while the broker answers (``FakeBroker.answers``)."""
        self.calls.append(("list_topics", topic))
        if not self.broker.answers:
            raise _error(KafkaError._TRANSPORT, "Broker transport failure")
        return SimpleNamespace(topics={topic: SimpleNamespace(topic=topic)} if topic else {})

    def _start(self, tp: TopicPartition) -> int:
        """Where an assigned partition is read from (a logical offset resolved)."""
        if tp.offset >= 0:
            return int(tp.offset)
        if tp.offset == OFFSET_END:
            return self.broker.end_offset(tp.topic, tp.partition)
        if tp.offset == OFFSET_BEGINNING:
            return 0
        committed = self.broker.committed.get(self.group_id, {}).get(_tp_key(tp))
        return committed if committed is not None else 0

    # -- reading ---------------------------------------------------------------------------------

    def add_batch(self, messages: list[Any]) -> None:
        """Queue a batch that a later ``consume`` returns as it is (error events included)."""
        self._batches.append(list(messages))

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        self._check_open()
        due, self._due = self._due, []
        for event, partitions in due:
            self._rebalance(event, partitions)
        while self._batches:
            batch = self._batches.pop(0)
            if batch:
                for m in batch:
                    if m.error() is None and (m.topic(), m.partition()) in self.positions:
                        self.positions[(m.topic(), m.partition())] = m.offset() + 1
                return batch
        batch = self._read(num_messages)
        if not batch and self.clock is not None and timeout > 0:
            self.clock.advance(timeout)
        return batch

    def _read(self, num_messages: int) -> list[Any]:
        out: list[Any] = []
        for (topic, partition), position in list(self.positions.items()):
            if (topic, partition) in self.paused:
                continue
            log = self.broker.logs.get((topic, partition), [])
            fresh = [m for m in log if m.offset() >= position][: num_messages - len(out)]
            out.extend(fresh)
            if fresh:
                self.positions[(topic, partition)] = fresh[-1].offset() + 1
                self._at_eof.discard((topic, partition))
            end = self.broker.end_offset(topic, partition)
            if (
                self.partition_eof
                and self.positions[(topic, partition)] >= end
                and (topic, partition) not in self._at_eof
                and len(out) < num_messages
            ):
                self._at_eof.add((topic, partition))
                eof = KafkaError(KafkaError._PARTITION_EOF)
                out.append(FakeMessage(topic, partition, end, None, None, error=eof))
            if len(out) >= num_messages:
                break
        return out

    def seek(self, partition: TopicPartition) -> None:
        self._check_open()
        key = _tp_key(partition)
        self.calls.append(("seek", (partition.topic, partition.partition, partition.offset)))
        if key not in self.positions:
            raise _error(KafkaError._STATE, f"seek: {key} is not assigned")
        self.positions[key] = self._start(partition)
        self._at_eof.discard(key)
        self._batches = [[m for m in b if _key_of(m) != key] for b in self._batches]

    def offsets_for_times(
        self, partitions: list[TopicPartition], timeout: float = -1
    ) -> list[TopicPartition]:
        """Each partition's first visible offset stamped at or after its ``offset`` (a time in
        ms), or ``OFFSET_END`` (-1) when there is none (the broker's ListOffsets by time)."""
        self._check_open()
        self.calls.append(("offsets_for_times", [(tp.topic, tp.partition) for tp in partitions]))
        out = []
        for tp in partitions:
            log = self.broker.logs.get((tp.topic, tp.partition), [])
            found = next((m.offset() for m in log if m.timestamp()[1] >= tp.offset), OFFSET_END)
            out.append(TopicPartition(tp.topic, tp.partition, found))
        return out

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]:
        """(low, high): the first visible offset (0 when empty) and the end offset."""
        self._check_open()
        log = self.broker.logs.get((partition.topic, partition.partition), [])
        return (log[0].offset() if log else 0, self.broker.end_offset(*_tp_key(partition)))

    # -- offsets ---------------------------------------------------------------------------------

    def store_offsets(
        self, message: Any = None, offsets: list[TopicPartition] | None = None
    ) -> None:
        self._check_open()
        asked = list(offsets or [])
        self.calls.append(("store_offsets", [(tp.topic, tp.partition, tp.offset) for tp in asked]))
        stored = 0
        for tp in asked:
            if _tp_key(tp) in self.positions:
                self.stored[_tp_key(tp)] = tp.offset
                stored += 1
        if asked and not stored:
            raise _error(KafkaError._STATE, "StoreOffsets failed: Local: Erroneous state")

    def commit(
        self,
        message: Any = None,
        offsets: list[TopicPartition] | None = None,
        asynchronous: bool = True,
    ) -> None:
        self._check_open()
        self.calls.append(("commit", None if offsets is None else [_tp_key(tp) for tp in offsets]))
        chosen = (
            dict(self.stored) if offsets is None else {_tp_key(tp): tp.offset for tp in offsets}
        )
        if not self._commit(chosen):
            raise _error(KafkaError._NO_OFFSET, "Local: No offset stored")

    def _commit(self, offsets: Mapping[tuple[str, int], int]) -> int:
        """Commit what differs from the group's committed offsets; return how many."""
        committed = self.broker.committed.setdefault(self.group_id, {})
        new = {tp: o for tp, o in offsets.items() if committed.get(tp) != o}
        committed.update(new)
        return len(new)

    def committed(
        self, partitions: list[TopicPartition], timeout: float | None = None
    ) -> list[TopicPartition]:
        self._check_open()
        self.calls.append(("committed", sorted(_tp_key(tp) for tp in partitions)))
        group = self.broker.committed.get(self.group_id, {})
        return [
            TopicPartition(tp.topic, tp.partition, group.get(_tp_key(tp), OFFSET_INVALID))
            for tp in partitions
        ]

    def close(self) -> None:
        self._check_open()
        self.calls.append(("close", None))
        if self.positions and self._callbacks.get("revoke") is not None:
            self._rebalance("revoke", self.assignment())
        if self.auto_commit:
            self._commit(self.stored)
        self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("Consumer closed")


# -- reference encodings -------------------------------------------------------------------------
# Readable, slow versions of what the product does fast, for tests to compare against.


@dataclass(frozen=True, slots=True)
class Suggestion:
    """The answer to one event, readable: the reference for :class:`SuggestionWriter`'s batched
    encoding (tests compare the two byte for byte)."""

    event: BrowsingEvent
    source: SourceRef
    model_version: str
    products: tuple[RankedProduct, ...]

    def to_avro(self, produced_time_ms: int) -> dict[str, Any]:
        """The ``ProductSuggestion`` record dict."""
        return {
            "suggestion_id": f"{self.source.topic}/{self.source.partition}/{self.source.offset}",
            "user_id": self.event.user_id,
            "session_id": self.event.session_id,
            "event_id": self.event.event_id,
            "source_topic": self.source.topic,
            "source_partition": self.source.partition,
            "source_offset": self.source.offset,
            "model_version": self.model_version,
            "products": [
                {"product_id": p.product_id, "rank": p.rank, "score": p.score}
                for p in self.products
            ],
            "event_time": self.event.event_time_ms,
            "produced_time": produced_time_ms,
        }


def header_map(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    """Headers as a dict of strings (last value wins), for readers and tests."""
    return {k: (v.decode("utf-8", "replace") if v is not None else "") for k, v in headers or []}
