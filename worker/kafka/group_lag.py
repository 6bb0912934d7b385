"""The workers' consumer lag as the broker sees it, probed from outside the worker group.

The workers export their own lag, which stops when they stop: an outage where every worker is
down shows no growing lag at all. The monitor therefore asks the broker, on its own schedule,
for the worker group's committed offsets, the input topic's end offsets (``read_committed``:
the last stable offset, so an open transaction does not count as lag) and the group's members
and state. A group with no committed offset on a partition counts the partition's whole
retained range (from its earliest offset) as lag.

The committed offsets are read by a consumer that carries the group's id but never subscribes
(so it never joins the group), not by the admin client's ``list_consumer_group_offsets``:
librdkafka (2.16.1 included, librdkafka#5040) dereferences a null group handle when that admin
request is answered ``NOT_COORDINATOR``, which a freshly started or restarted broker does, and
the whole process dies with SIGSEGV.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka import (
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec


@dataclass(frozen=True)
class GroupLag:
    """One probe of a consumer group on one topic.

    Attributes:
        lag: per partition, the end offset minus the committed offset (never negative).
        members: members of the group at the probe (0 when it is empty or unknown).
        state: the group's state as the broker names it (``STABLE``, ``EMPTY``, ...).
    """

    lag: dict[int, int] = field(default_factory=dict)
    members: int = 0
    state: str = "UNKNOWN"

    @property
    def total(self) -> int:
        return sum(self.lag.values())


def lag_by_partition(
    committed: Mapping[int, int], ends: Mapping[int, int], earliest: Mapping[int, int]
) -> dict[int, int]:
    """Per partition of ``ends``: its end offset minus the committed offset; a partition without
    a committed offset (negative or missing) counts from its earliest offset. Never negative (a
    committed offset past a read_committed end only means a transaction is open)."""
    out = {}
    for partition, end in ends.items():
        start = committed.get(partition, -1)
        if start < 0:
            start = earliest.get(partition, 0)
        out[partition] = max(0, end - start)
    return out


T = TypeVar("T")
RETRY_PAUSE_S = 0.5
#: Answers of a group coordinator that is starting or moving (librdkafka does not flag them
#: retriable in admin results).
_COORDINATOR_MOVING = (
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
)


def _retrying(call: Callable[[], T], deadline: float) -> T:
    """``call()``, again after a pause while it fails with a retriable broker error (a
    coordinator still loading its groups, a leader moving) and ``deadline`` is ahead."""
    while True:
        try:
            return call()
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            retriable = isinstance(error, KafkaError) and (
                error.retriable() or error.code() in _COORDINATOR_MOVING
            )
            if not retriable or time.monotonic() + RETRY_PAUSE_S > deadline:
                raise
        time.sleep(RETRY_PAUSE_S)


class GroupLagProbe:
    """Probes ``group`` on ``topic`` through an admin client (end offsets, the group's members)
    and ``offsets``, a consumer with ``group.id`` = ``group`` that never subscribes (committed
    offsets); each call bounded by ``timeout_s``.

    Retriable broker errors are retried within the bound; :meth:`probe` raises whatever else the
    admin calls raise (``KafkaException`` when the broker does not answer in time): the caller
    decides how to report an unknown lag.
    """

    def __init__(
        self,
        admin: AdminClient,
        offsets: Consumer,
        group: str,
        topic: str,
        timeout_s: float = 10.0,
    ):
        self.admin = admin
        self.offsets = offsets
        self.group = group
        self.topic = topic
        self.timeout_s = timeout_s

    def _partitions(self) -> list[int]:
        metadata = self.admin.list_topics(self.topic, timeout=self.timeout_s)
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None:
            return []
        return sorted(topic.partitions)

    def _offsets(self, partitions: list[int], spec: OffsetSpec) -> dict[int, int]:
        request = {TopicPartition(self.topic, p): spec for p in partitions}
        futures = self.admin.list_offsets(
            request,
            isolation_level=IsolationLevel.READ_COMMITTED,
            request_timeout=self.timeout_s,
        )
        return {tp.partition: f.result().offset for tp, f in futures.items()}

    def _committed(self, partitions: list[int]) -> dict[int, int]:
        asked = [TopicPartition(self.topic, p) for p in partitions]
        answer = self.offsets.committed(asked, timeout=self.timeout_s)
        failed = [tp.error for tp in answer if tp.error is not None]
        if failed:
            raise KafkaException(failed[0])
        return {tp.partition: tp.offset for tp in answer}

    def _group(self) -> tuple[int, str]:
        futures = self.admin.describe_consumer_groups([self.group], request_timeout=self.timeout_s)
        description: Any = futures[self.group].result()
        state = getattr(description.state, "name", str(description.state))
        return len(description.members or []), state

    def close(self) -> None:
        """Close the offsets consumer (it never joined the group: nothing to leave)."""
        self.offsets.close()

    def probe(self) -> GroupLag:
        deadline = time.monotonic() + self.timeout_s
        partitions = self._partitions()
        if not partitions:
            return GroupLag()
        ends = _retrying(lambda: self._offsets(partitions, OffsetSpec.latest()), deadline)
        earliest = _retrying(lambda: self._offsets(partitions, OffsetSpec.earliest()), deadline)
        committed = _retrying(lambda: self._committed(partitions), deadline)
        members, state = _retrying(self._group, deadline)
        return GroupLag(lag_by_partition(committed, ends, earliest), members, state)
