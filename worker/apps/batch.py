"""One micro-batch of the worker as a step without Kafka: input records in; suggestions, dead
letters, changelog records and the next offsets out.

No Kafka client is called here. The records are duck-typed (``topic() partition() offset() key()
value() headers() timestamp()``, as confluent_kafka's ``Message``); consumer error events are
handled by the loop before the step (:mod:`worker.apps.serve`). Making the outputs durable, and
only then the offsets, is :mod:`worker.kafka.checkpoint`'s business.

The step advances the session state it is given (its owner, the worker, passes it in): that is
the one effect besides the returned outputs, and it is what a redelivered event must not repeat
(each session remembers the input offset of its last event).

Stages, timed in :attr:`BatchResult.stages_s` (the loop adds ``produce`` and ``checkpoint``):

``parse``
    Avro decode, validation and catalogue lookup of every record into a :class:`BatchEntry`;
    records that fail become dead letters. The batch is decoded and validated at once
    (:meth:`AvroCodec.decode_batch`, :func:`~worker.core.records.to_browsing_events`), with
    the outcome of doing it record by record. A product the model does not know is a cold start,
    not an error: it is looked up in, or added to, the live catalogue
    (:class:`~worker.core.live_catalogue.LiveCatalogue`) with the event's category and price.
``state`` / ``candidates`` / ``features`` / ``scoring`` / ``rank``
    :meth:`Recommender.recommend`: sessions and trending counts advanced, candidates, features,
    one model call, top-K.
``encode``
    The suggestion records (Avro, :class:`SuggestionWriter`).
``changelog``
    The changelog records: touched sessions, tombstones, per-partition checkpoint records.

Several model versions (champion and challenger, or a version still draining after a swap) are
*lanes* (:class:`Lane`): each has its recommender (model, serving catalogue, trending counts),
suggestion writer and session store. :meth:`BatchStep.run` asks a :class:`Lanes` which lane
answers each user (it moves the user's session into that lane's store first if another lane's
store holds it), then makes one model call per lane; each lane's trending counts see every event
of the batch, so a challenger serving a small share ranks trending products on the same counts as
the champion. The suggestions come out in input order whatever their lane, each stamped with its
lane's version.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from worker.core.errors import DataError
from worker.core.pipeline import BatchEntry, Recommender, StageTimings
from worker.core.records import to_browsing_events
from worker.core.session import SessionStore, trim_to_total
from worker.kafka.admin import DLQ_MAX_MESSAGE_BYTES
from worker.kafka.changelog import CHECKPOINT_KEY, changelog_records, checkpoint_value
from worker.kafka.dead_letter import dead_letter_of
from worker.kafka.resend import Output
from worker.wire.codec import AvroCodec
from worker.wire.suggestion_writer import SuggestionWriter

#: The stages the step times, in order (see the module docstring).
STEP_STAGES = ("parse", "state", "candidates", "features", "scoring", "rank", "encode", "changelog")
#: A dead letter's value is cut to this (the topic's limit, less room for headers and framing).
DEAD_LETTER_MAX_VALUE_BYTES = DLQ_MAX_MESSAGE_BYTES - 64 * 1024


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class InputRecord(Protocol):
    """A consumed record (confluent_kafka's ``Message`` without an error)."""

    def topic(self) -> str: ...
    def partition(self) -> int: ...
    def offset(self) -> int: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> list[tuple[str, bytes]] | None: ...
    def timestamp(self) -> tuple[int, int]: ...


@dataclass(frozen=True, slots=True)
class Rejection:
    """An input record that could not be answered: its dead-letter record and why."""

    record: Output
    error_class: str
    error: str
    partition: int
    offset: int


@dataclass
class BatchResult:
    """What one micro-batch produces; nothing of it is durable yet."""

    #: The answered events, in input order.
    entries: list[BatchEntry]
    #: One suggestion per entry, in the same order.
    suggestions: list[Output]
    rejections: list[Rejection]
    #: Empty when the session changelog is off.
    changelog: list[Output]
    #: Next input offset per (topic, partition), rejected records included.
    next_offsets: dict[tuple[str, int], int]
    stages_s: dict[str, float] = field(default_factory=dict)
    #: Answered events whose product the model does not know.
    cold_start_events: int = 0
    #: Answered events per model version (the version of each lane that answered some).
    answered_by: dict[str, int] = field(default_factory=dict)

    def outputs(self) -> list[Output]:
        """Every output, in the order it is produced: suggestions, dead letters, changelog."""
        return [*self.suggestions, *(r.record for r in self.rejections), *self.changelog]


@dataclass
class Lane:
    """One served model version: its recommender (model, serving catalogue, trending counts),
    its suggestion writer (stamps the version) and the session store of the users it answers.

    ``serving`` is False for a version that answers no one any more but still holds sessions
    (they move out lazily, expire, or go with their partitions)."""

    version: str
    recommender: Recommender
    writer: SuggestionWriter
    sessions: SessionStore
    serving: bool = True


class Lanes(Protocol):
    """The lanes of a step, and which one answers a user."""

    def lane_for(self, user_id: str) -> Lane:
        """The lane that answers ``user_id``; if another lane's store holds the user's session,
        it is moved into this lane's store (renamed to its catalogue) first."""
        ...

    def lanes(self) -> Sequence[Lane]:
        """Every lane, serving or draining, in a stable order."""
        ...


class _OneLane:
    """A single lane for every user (:meth:`BatchStep.__call__`)."""

    def __init__(self, lane: Lane) -> None:
        self._lane = lane
        self._all = (lane,)

    def lane_for(self, user_id: str) -> Lane:
        return self._lane

    def lanes(self) -> Sequence[Lane]:
        return self._all


class BatchStep:
    """Answers micro-batches of input records (see the module docstring).

    Args:
        event_codec: decodes the input records.
        recommender: ranks the candidates (for :meth:`__call__`; :meth:`run` takes lanes).
        suggestion_writer: encodes the suggestions (likewise).
        suggestions_topic / dead_letter_topic: where suggestions and dead letters go.
        changelog_topic: the session changelog, or None when it is off.
        max_sessions: the most sessions all lanes hold together (the least recently active
            users beyond it are evicted after the batch, their tombstones in its changelog);
            None: each store's own cap only.
        clock_ms: wall-clock milliseconds: read once before parsing (event times are checked
            against it) and once after ranking (the suggestions' produced time).
    """

    def __init__(
        self,
        *,
        event_codec: AvroCodec,
        recommender: Recommender | None = None,
        suggestion_writer: SuggestionWriter | None = None,
        suggestions_topic: str,
        dead_letter_topic: str,
        changelog_topic: str | None,
        clock_ms: Callable[[], int] = now_ms,
        max_sessions: int | None = None,
    ) -> None:
        self._decode_batch = event_codec.decode_batch
        self._recommender = recommender
        self._writer = suggestion_writer
        self._single: tuple[SessionStore, _OneLane] | None = None
        self._suggestions = suggestions_topic
        self._dead_letters = dead_letter_topic
        self._changelog = changelog_topic
        self._clock_ms = clock_ms
        self._max_sessions = max_sessions

    def __call__(
        self,
        records: Sequence[InputRecord],
        sessions: SessionStore,
        owned_partitions: Collection[int],
    ) -> BatchResult:
        """Answer one micro-batch with the step's one recommender and writer.

        Args:
            records: the batch's input records, in consumption order (no error events).
            sessions: the session state, advanced in place.
            owned_partitions: the input partitions this worker holds now (users forgotten on
                other partitions get no tombstone: those belong to their new owner).
        """
        if self._single is None or self._single[0] is not sessions:
            if self._recommender is None or self._writer is None:
                raise TypeError("a step without a recommender and a writer answers through run()")
            lane = Lane("", self._recommender, self._writer, sessions)
            self._single = (sessions, _OneLane(lane))
        return self.run(records, self._single[1], owned_partitions)

    def run(
        self, records: Sequence[InputRecord], lanes: Lanes, owned_partitions: Collection[int]
    ) -> BatchResult:
        """Answer one micro-batch: each user by its lane (one model call per lane).

        Args:
            records: the batch's input records, in consumption order (no error events).
            lanes: the served versions and the routing of users to them; their session stores
                are advanced in place.
            owned_partitions: as for :meth:`__call__`.
        """
        t0 = time.perf_counter()
        parsed, rejections, next_offsets = self._parse(records, self._clock_ms())
        t1 = time.perf_counter()
        # Route: one lane per user for the whole batch (its session moved there first).
        by_user: dict[str, Lane] = {}
        rows: dict[int, list[int]] = {}
        for row, entry in enumerate(parsed):
            user = entry.event.user_id
            lane = by_user.get(user)
            if lane is None:
                lane = by_user[user] = lanes.lane_for(user)
            rows.setdefault(id(lane), []).append(row)
        all_lanes = lanes.lanes()
        serving = [lane for lane in all_lanes if id(lane) in rows or lane.serving]
        t_route = time.perf_counter() - t1
        entries: list[BatchEntry] = list(parsed)
        values: list[bytes] = [b""] * len(parsed)
        answered_by: dict[str, int] = {}
        timings = StageTimings(state_s=t_route)
        cold = 0
        ranked_lanes = []
        for lane in serving:
            mine = rows.get(id(lane), [])
            live = lane.recommender.live
            known, add = live.model.index.get, live.add
            lane_entries = []
            for row in mine:
                entry = parsed[row]
                event = entry.event
                item = known(event.product_id)
                if item is None:  # a product the model does not know: a cold start
                    item = add(event.product_id, event.category_id, event.price)
                    cold += 1
                entry = entry._replace(item=item)
                entries[row] = entry
                lane_entries.append(entry)
            if len(mine) < len(parsed):
                # The other lanes' events count in this lane's trending too.
                self._observe_others(live, parsed, set(mine))
            if not mine:
                continue
            ranked = lane.recommender.recommend(lane.sessions, lane_entries)
            ranked_lanes.append((lane, mine, lane_entries, ranked))
            for stage in ("state_s", "candidates_s", "features_s", "scoring_s", "rank_s"):
                setattr(timings, stage, getattr(timings, stage) + getattr(ranked.timings, stage))
            answered_by[lane.version] = len(mine)
        t3 = time.perf_counter()
        produced_ms = self._clock_ms()
        for lane, mine, lane_entries, ranked in ranked_lanes:
            writer = lane.writer
            for index, product_id in lane.recommender.live.drain_named():  # new since last batch
                writer.name_product(index, product_id)
            encoded = writer.encode(lane_entries, ranked.items, ranked.scores, produced_ms)
            for row, value in zip(mine, encoded, strict=True):
                values[row] = value
        topic = self._suggestions
        suggestions = [
            Output(topic, entry.key, value, None, produced_ms)
            for entry, value in zip(entries, values, strict=True)
        ]
        t4 = time.perf_counter()
        if self._max_sessions is not None and len(all_lanes) > 1:
            # Two versions' stores share the worker's memory: one cap for their sum.
            trim_to_total([lane.sessions for lane in all_lanes], self._max_sessions)
        changelog = self._changelog_records(
            all_lanes, rows, entries, owned_partitions, next_offsets
        )
        t5 = time.perf_counter()
        stages_s = {
            "parse": t1 - t0,
            "state": timings.state_s,
            "candidates": timings.candidates_s,
            "features": timings.features_s,
            "scoring": timings.scoring_s,
            "rank": timings.rank_s,
            "encode": t4 - t3,
            "changelog": t5 - t4,
        }
        return BatchResult(
            entries, suggestions, rejections, changelog, next_offsets, stages_s, cold, answered_by
        )

    @staticmethod
    def _observe_others(live: Any, parsed: Sequence[BatchEntry], mine: set[int]) -> None:
        """Count the events another lane answers in ``live``'s trending table."""
        others = [entry for row, entry in enumerate(parsed) if row not in mine]
        known, add = live.model.index.get, live.add
        items = np.empty(len(others), dtype=np.int32)
        for i, entry in enumerate(others):
            event = entry.event
            item = known(event.product_id)
            if item is None:
                item = add(event.product_id, event.category_id, event.price)
            items[i] = item
        types = np.fromiter((e.event.event_type for e in others), dtype=np.int8, count=len(others))
        times = np.fromiter(
            (e.event.event_time_ms for e in others), dtype=np.int64, count=len(others)
        )
        live.observe(items, types, times)

    def _changelog_records(
        self,
        all_lanes: Sequence[Lane],
        rows: dict[int, list[int]],
        entries: Sequence[BatchEntry],
        owned_partitions: Collection[int],
        next_offsets: dict[tuple[str, int], int],
    ) -> list[Output]:
        """Every lane's touched sessions (written with its catalogue's product ids), tombstones
        for the users forgotten by a store and held by none, then the checkpoint records."""
        # Drained either way: the lists only grow otherwise.
        forgotten = [f for lane in all_lanes for f in lane.sessions.drain_forgotten()]
        if self._changelog is None:
            return []
        if len(all_lanes) > 1:
            forgotten = [
                (user, partition)
                for user, partition in forgotten
                if not any(user in lane.sessions for lane in all_lanes)
            ]
        records: list[Output] = []
        for i, lane in enumerate(all_lanes):
            touched = {
                entries[row].event.user_id: (entries[row].key, entries[row].partition)
                for row in rows.get(id(lane), [])
            }
            records += changelog_records(
                self._changelog,
                touched,
                lane.sessions,
                forgotten if i == len(all_lanes) - 1 else (),
                owned_partitions,
                {},
                lane.recommender.live.product_id_of,
            )
        for (_, partition), offset in next_offsets.items():
            records.append(
                Output(
                    self._changelog, CHECKPOINT_KEY, checkpoint_value(offset), partition=partition
                )
            )
        return records

    def _parse(
        self, records: Sequence[InputRecord], clock_ms: int
    ) -> tuple[list[BatchEntry], list[Rejection], dict[tuple[str, int], int]]:
        """Decode and validate every record: an entry (its ``item`` is looked up later, in the
        catalogue of the lane that answers it), or a rejection with its dead letter (original
        key, value and headers, plus headers saying why and where from)."""
        entries: list[BatchEntry] = []
        rejections: list[Rejection] = []
        next_offsets: dict[tuple[str, int], int] = {}
        # The whole batch at once: one decode_batch, then one to_browsing_events over the
        # records that decoded (the outcomes of decode and to_browsing_event, record by record).
        keys = [msg.key() for msg in records]
        decoded = self._decode_batch([msg.value() for msg in records])
        good = [i for i, d in enumerate(decoded) if not isinstance(d, DataError)]
        events = iter(
            to_browsing_events(
                [decoded[i] for i in good],  # type: ignore[misc]  # the dicts only
                [keys[i] for i in good],
                clock_ms,
            )
        )
        new_entry = tuple.__new__  # BatchEntry(...) would add a Python frame (NamedTuple.__new__)
        for msg, key, record in zip(records, keys, decoded, strict=True):
            partition, offset = msg.partition(), msg.offset()
            next_offsets[(msg.topic(), partition)] = offset + 1
            outcome = record if isinstance(record, DataError) else next(events)
            if isinstance(outcome, DataError):
                rejections.append(self._reject(outcome, msg))
                continue
            entries.append(new_entry(BatchEntry, (outcome, -1, partition, offset, key)))
        return entries, rejections, next_offsets

    def _reject(self, error: DataError, msg: Any) -> Rejection:
        letter = dead_letter_of(error, msg, DEAD_LETTER_MAX_VALUE_BYTES)
        return Rejection(
            Output(self._dead_letters, letter.key, letter.value, letter.headers),
            type(error).__name__,
            str(error),
            msg.partition(),
            msg.offset(),
        )
