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
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import NewTopic

from worker.config import KafkaSettings
from worker.core.errors import BrokerError, DataError
from worker.core.session import SessionStore
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


class ChangelogRestorer:
    """Reads changelog partitions back into a SessionStore, through one consumer kept for the
    worker's lifetime (a librdkafka client per restore would cost threads and buffers each
    rebalance, and the process's resident memory would climb with every one).

    ``consumer_factory`` has :func:`~worker.kafka.clients.make_consumer`'s signature (a fake in
    tests)."""

    def __init__(
        self,
        settings: KafkaSettings,
        topic: str,
        log: Any,
        consumer_factory: Callable[..., Consumer] = make_consumer,
    ) -> None:
        self._settings, self.topic, self._log = settings, topic, log
        self._make_consumer = consumer_factory
        self._consumer: Consumer | None = None

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

    def restore(
        self,
        partitions: list[int],
        sessions: SessionStore,
        index_of: Callable[[str], int | None],
        log: Any,
        timeout_s: float = 120.0,
        committed: dict[int, int] | None = None,
    ) -> int:
        """Read the changelog partitions to their end and install their sessions; return how
        many. ``index_of`` resolves the sessions' product ids (the worker's live catalogue, which
        adds the products it does not hold yet; None drops a product).

        ``committed`` gives, per partition, the group's committed input offset: the restore goes
        on until the changelog's checkpoint record (written with every batch, in the same
        transaction as the batch's offsets) has caught up with it. A transaction's commit
        markers reach the partitions a moment after the commit returns; reading "to the end"
        alone could stop just before the previous owner's last batch.

        Raises:
            BrokerError: the end was not reached within ``timeout_s``.
        """
        if not partitions:
            return 0
        consumer = self._client()
        started = time.monotonic()
        restored: dict[str, Any] = {}
        topic = self.topic
        try:
            # Offset 0 = from the start (the log start offset, after compaction).
            consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
            at_end: set[int] = set()
            seen_checkpoint = {p: -1 for p in partitions}
            want = {p: (committed or {}).get(p, -1) for p in partitions}
            pending = set(partitions)
            while pending:
                if time.monotonic() - started > timeout_s:
                    raise BrokerError(
                        f"restoring {topic} partitions {sorted(pending)} took over "
                        f"{timeout_s:.0f} s"
                    )
                # Records of a compacted topic always have a key (the broker refuses others), and
                # consumed records a partition: the stubs' Optionals do not apply.
                fetched: list[Any] = consumer.consume(1000, timeout=0.5)
                for msg in fetched:
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            at_end.add(msg.partition())
                            continue
                        raise BrokerError(f"restoring {topic}: {err.name()}: {err.str()}")
                    at_end.discard(msg.partition())
                    if msg.key() == CHECKPOINT_KEY:
                        seen_checkpoint[msg.partition()] = int(msg.value() or b"-1")
                        continue
                    user = msg.key().decode("utf-8")
                    if msg.value() is None:
                        restored[user] = None
                        continue
                    try:
                        restored[user] = decode_session(msg.value(), index_of)
                    except DataError as exc:
                        log.warning(
                            "changelog_record_unreadable",
                            user_hash=hash(user) & 0xFFFF,
                            error=str(exc),
                        )
                pending = {
                    p for p in pending if not (p in at_end and seen_checkpoint[p] >= want[p])
                }
        finally:
            consumer.unassign()
        installed = 0
        for user, session in restored.items():
            if session is not None:
                sessions.put(user, session)
                installed += 1
        log.info(
            "sessions_restored",
            partitions=sorted(partitions),
            sessions=installed,
            seconds=round(time.monotonic() - started, 3),
            rss_mib=rss_mib(),
        )
        return installed

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
