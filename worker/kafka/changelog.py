"""Session state that survives rebalances and crashes: a compacted changelog topic.

After every micro-batch the worker writes the new session of each user it touched to the changelog
(key ``user_id``, value :func:`worker.wire.session_codec.encode_session`), on the partition number
of the input partition the user's events come from, in the same checkpoint as the batch's outputs
(in exactly-once mode: the same transaction as the input offsets). Users evicted or expired get a
tombstone. When a worker gains a partition it reads that changelog partition from the beginning to
its end (read_committed, so aborted transactions do not count) and installs the sessions before it
scores the partition's next event: the Kafka Streams way.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import NewTopic

from worker.config import KafkaSettings
from worker.core.errors import BrokerError, DataError
from worker.core.session import Session, SessionStore
from worker.kafka.admin import admin_client
from worker.kafka.clients import make_consumer
from worker.kafka.resend import Output
from worker.ops.health import rss_mib
from worker.wire.session_codec import decode_session, encode_session

#: Key of the per-partition checkpoint record: the input offset the state is consistent with.
#: A NUL byte cannot start a user id that passed validation (ids are non-empty text).
CHECKPOINT_KEY = b"\x00checkpoint"


#: Records of the changelog fetched ahead while restoring, at most (KiB).
RESTORE_BUFFER_KB = 4 * 1024
#: Most seconds a partition's restore may take before the worker gives up (and exits).
RESTORE_TIMEOUT_S = 120.0


def changelog_topic(group_id: str) -> str:
    return f"{group_id}.sessions-changelog"


def ensure_changelog(
    settings: KafkaSettings, topic: str, partitions: int, replication_factor: int, log: Any
) -> None:
    """Create the compacted changelog with ``partitions`` partitions if it does not exist.

    Raises:
        BrokerError: creation failed, or it exists with another partition count.
    """
    admin = admin_client(settings)
    existing = admin.list_topics(timeout=30).topics
    if topic in existing:
        have = len(existing[topic].partitions)
        if have != partitions:
            raise BrokerError(
                f"changelog {topic} has {have} partitions, the input topic {partitions}"
            )
        return
    config = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "segment.ms": "600000"}
    future = admin.create_topics(
        [
            NewTopic(
                topic,
                num_partitions=partitions,
                replication_factor=replication_factor,
                config=config,
            )
        ]
    )[topic]
    try:
        future.result()
        log.info("changelog_created", topic=topic, partitions=partitions)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise BrokerError(f"cannot create changelog {topic}: {exc}") from exc


def checkpoint_value(next_offset: int) -> bytes:
    return str(next_offset).encode()


def changelog_records(
    topic: str,
    touched: Mapping[str, tuple[bytes | None, int]],
    sessions: SessionStore,
    forgotten: Iterable[tuple[str, int]],
    owned_partitions: Collection[int],
    next_offsets: Mapping[tuple[str, int], int],
    product_id_of: Callable[[int], str],
) -> list[Output]:
    """A batch's changelog records, in the order they are produced: the session of every user
    the batch touched, a tombstone for every user forgotten (evicted or expired) on a partition
    still owned, and per input partition a checkpoint record with the offset this state is
    consistent with.

    Args:
        topic: the changelog topic.
        touched: user id -> (key bytes, input partition) of the users of the batch, in the order
            they first appear in it (the partition of the user's last event wins).
        sessions: the store after the batch.
        forgotten: ``(user_id, partition)`` forgotten since the last batch
            (:meth:`SessionStore.drain_forgotten`).
        owned_partitions: the input partitions this worker holds now.
        next_offsets: next input offset per (topic, partition) of the batch.
        product_id_of: serving catalogue index -> product id (sessions are written with product
            ids, new products' included).
    """
    records = []
    for user_id, (key, partition) in touched.items():
        session = sessions.get(user_id)
        if session is None:  # evicted within this very batch: its tombstone follows
            continue
        records.append(
            Output(topic, key, encode_session(session, product_id_of), partition=partition)
        )
    for user_id, partition in forgotten:
        if partition in owned_partitions and user_id not in sessions:
            records.append(Output(topic, user_id.encode("utf-8"), None, partition=partition))
    for (_, partition), offset in next_offsets.items():
        records.append(Output(topic, CHECKPOINT_KEY, checkpoint_value(offset), partition=partition))
    return records


@dataclass
class _Restoring:
    """One changelog partition being read back."""

    want: int  # the committed input offset its checkpoint must reach (-1: none, read to the end)
    started: float
    seen_checkpoint: int = -1
    at_end: bool = False
    sessions: dict[str, Session | None] = field(default_factory=dict)  # None: a tombstone


class ChangelogRestorer:
    """Reads changelog partitions back into a SessionStore, through one consumer kept for the
    worker's lifetime (a librdkafka client per restore would cost threads and buffers each
    rebalance, and the process's resident memory would climb with every one).

    Partitions are restored independently: :meth:`begin` adds partitions to read, :meth:`step`
    reads for a bounded time and hands back each partition whose restore is complete, so the
    worker keeps answering its other partitions meanwhile, and a partition held back by an open
    transaction (a dead predecessor's, until the broker aborts it) holds back only itself.
    :meth:`restore` does the whole of it at once.

    ``consumer_factory`` has :func:`~worker.kafka.clients.make_consumer`'s signature (a fake in
    tests)."""

    def __init__(
        self,
        settings: KafkaSettings,
        topic: str,
        log: Any,
        consumer_factory: Callable[..., Consumer] = make_consumer,
        *,
        timeout_s: float = RESTORE_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings, self.topic, self._log = settings, topic, log
        self._make_consumer = consumer_factory
        self._consumer: Consumer | None = None
        self._active: dict[int, _Restoring] = {}
        self.timeout_s = timeout_s
        self._clock = clock

    def _client(self) -> Consumer:
        if self._consumer is None:
            # Through make_consumer: its librdkafka log lines go to the JSON log.
            self._consumer = self._make_consumer(
                self._settings,
                f"restore-{uuid.uuid4().hex}",
                self._log,
                auto_commit=False,
                **{
                    "enable.partition.eof": True,
                    "fetch.wait.max.ms": 10,
                    # An uncompacted changelog can be large: read it through a bounded buffer.
                    "queued.max.messages.kbytes": RESTORE_BUFFER_KB,
                    "fetch.max.bytes": RESTORE_BUFFER_KB * 1024 // 4,
                },
            )
        return self._consumer

    @property
    def restoring(self) -> set[int]:
        """The partitions being restored."""
        return set(self._active)

    def begin(self, partitions: Iterable[int], committed: Mapping[int, int] | None = None) -> None:
        """Start reading ``partitions`` from the beginning (those already being read go on).

        ``committed`` gives, per partition, the group's committed input offset: the restore goes
        on until the changelog's checkpoint record (written with every batch, in the same
        transaction as the batch's offsets) has caught up with it. A transaction's commit
        markers reach the partitions a moment after the commit returns; reading "to the end"
        alone could stop just before the previous owner's last batch. Without it (at-least-once)
        a partition is restored once read to its end.
        """
        new = sorted(set(partitions) - set(self._active))
        if not new:
            return
        now = self._clock()
        for p in new:
            self._active[p] = _Restoring(want=(committed or {}).get(p, -1), started=now)
        # Offset 0 = from the start (the log start offset, after compaction).
        self._client().incremental_assign([TopicPartition(self.topic, p, 0) for p in new])

    def cancel(self, partitions: Iterable[int]) -> None:
        """Stop restoring ``partitions`` (they were revoked or lost meanwhile)."""
        gone = sorted(set(partitions) & set(self._active))
        for p in gone:
            del self._active[p]
        if gone and self._consumer is not None:
            self._consumer.incremental_unassign([TopicPartition(self.topic, p) for p in gone])

    def step(
        self, index_of: Callable[[str], int | None], log: Any, budget_s: float
    ) -> dict[int, dict[str, Session]]:
        """Read what the changelog holds for the partitions being restored, for about
        ``budget_s`` at most; return the partitions whose restore completed, each with its
        sessions (user id -> session), and stop reading them. ``index_of`` resolves the
        sessions' product ids (the worker's live catalogue, which adds the products it does not
        hold yet; None drops a product).

        Raises:
            BrokerError: a partition not restored within ``timeout_s`` of its :meth:`begin`, or
                a consumer error.
        """
        if not self._active:
            return {}
        consumer = self._client()
        topic = self.topic
        deadline = self._clock() + budget_s
        while True:
            remaining = deadline - self._clock()
            # Records of a compacted topic always have a key (the broker refuses others), and
            # consumed records a partition: the stubs' Optionals do not apply.
            fetched: list[Any] = consumer.consume(1000, timeout=max(0.0, min(remaining, 0.1)))
            for msg in fetched:
                state = self._active.get(msg.partition())
                if state is None:  # cancelled while its records were on the way
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        state.at_end = True
                        continue
                    raise BrokerError(f"restoring {topic}: {err.name()}: {err.str()}")
                state.at_end = False
                if msg.key() == CHECKPOINT_KEY:
                    state.seen_checkpoint = int(msg.value() or b"-1")
                    continue
                user = msg.key().decode("utf-8")
                if msg.value() is None:
                    state.sessions[user] = None
                    continue
                try:
                    state.sessions[user] = decode_session(msg.value(), index_of)
                except DataError as exc:
                    log.warning(
                        "changelog_record_unreadable", user_hash=hash(user) & 0xFFFF, error=str(exc)
                    )
            if not fetched or self._clock() >= deadline or self._all_done():
                break
        done = sorted(
            p for p, r in self._active.items() if r.at_end and r.seen_checkpoint >= r.want
        )
        out: dict[int, dict[str, Session]] = {}
        for p in done:
            state = self._active.pop(p)
            out[p] = {u: s for u, s in state.sessions.items() if s is not None}
        if done:
            consumer.incremental_unassign([TopicPartition(topic, p) for p in done])
        now = self._clock()
        late = sorted(p for p, r in self._active.items() if now - r.started > self.timeout_s)
        if late:
            raise BrokerError(
                f"restoring {topic} partitions {late} took over {self.timeout_s:.0f} s"
            )
        return out

    def _all_done(self) -> bool:
        return all(r.at_end and r.seen_checkpoint >= r.want for r in self._active.values())

    def install(
        self,
        done: Mapping[int, Mapping[str, Session]],
        sessions: SessionStore,
        log: Any,
        started: float,
    ) -> int:
        """Put the sessions of restored partitions (from :meth:`step`) into ``sessions``, log
        ``sessions_restored``, and return how many."""
        installed = 0
        for restored in done.values():
            for user, session in restored.items():
                sessions.put(user, session)
                installed += 1
        log.info(
            "sessions_restored",
            partitions=sorted(done),
            sessions=installed,
            seconds=round(self._clock() - started, 3),
            rss_mib=rss_mib(),
        )
        return installed

    def restore(
        self,
        partitions: list[int],
        sessions: SessionStore,
        index_of: Callable[[str], int | None],
        log: Any,
        committed: dict[int, int] | None = None,
    ) -> int:
        """Restore ``partitions`` at once (:meth:`begin`, then :meth:`step` until they are
        done) and install their sessions; return how many. Every restore under way is cancelled
        first: the caller names all the partitions it needs restored.

        Raises:
            BrokerError: not restored within ``timeout_s``.
        """
        if not partitions:
            return 0
        started = self._clock()
        self.cancel(list(self._active))
        self.begin(partitions, committed)
        done: dict[int, dict[str, Session]] = {}
        wanted = set(partitions)
        while not wanted <= set(done):
            done.update(self.step(index_of, log, budget_s=0.5))
        return self.install({p: done[p] for p in sorted(wanted)}, sessions, log, started)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
