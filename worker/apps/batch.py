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
    records that fail become dead letters. A product the model does not know is a cold start,
    not an error: it is looked up in, or added to, the live catalogue
    (:class:`~worker.core.live_catalogue.LiveCatalogue`) with the event's category and price.
``state`` / ``candidates`` / ``features`` / ``scoring`` / ``rank``
    :meth:`Recommender.recommend`: sessions and trending counts advanced, candidates, features,
    one model call, top-K.
``encode``
    The suggestion records (Avro, :class:`SuggestionWriter`).
``changelog``
    The changelog records: touched sessions, tombstones, per-partition checkpoint records.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from worker.core.errors import DataError
from worker.core.pipeline import BatchEntry, Recommender
from worker.core.records import to_browsing_event
from worker.core.session import SessionStore
from worker.kafka.admin import DLQ_MAX_MESSAGE_BYTES
from worker.kafka.changelog import changelog_records
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

    def outputs(self) -> list[Output]:
        """Every output, in the order it is produced: suggestions, dead letters, changelog."""
        return [*self.suggestions, *(r.record for r in self.rejections), *self.changelog]


class BatchStep:
    """Answers micro-batches of input records (see the module docstring).

    Args:
        event_codec: decodes the input records.
        recommender: ranks the candidates.
        suggestion_writer: encodes the suggestions.
        suggestions_topic / dead_letter_topic: where suggestions and dead letters go.
        changelog_topic: the session changelog, or None when it is off.
        clock_ms: wall-clock milliseconds: read once before parsing (event times are checked
            against it) and once after ranking (the suggestions' produced time).
    """

    def __init__(
        self,
        *,
        event_codec: AvroCodec,
        recommender: Recommender,
        suggestion_writer: SuggestionWriter,
        suggestions_topic: str,
        dead_letter_topic: str,
        changelog_topic: str | None,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self._decode = event_codec.decode
        self._recommender = recommender
        self._live = recommender.live
        self._writer = suggestion_writer
        self._suggestions = suggestions_topic
        self._dead_letters = dead_letter_topic
        self._changelog = changelog_topic
        self._clock_ms = clock_ms

    def __call__(
        self,
        records: Sequence[InputRecord],
        sessions: SessionStore,
        owned_partitions: Collection[int],
    ) -> BatchResult:
        """Answer one micro-batch.

        Args:
            records: the batch's input records, in consumption order (no error events).
            sessions: the session state, advanced in place.
            owned_partitions: the input partitions this worker holds now (users forgotten on
                other partitions get no tombstone: those belong to their new owner).
        """
        t0 = time.perf_counter()
        entries, rejections, next_offsets, cold = self._parse(records, self._clock_ms())
        t1 = time.perf_counter()
        ranked = self._recommender.recommend(sessions, entries)
        t2 = time.perf_counter()
        produced_ms = self._clock_ms()
        for index, product_id in self._live.drain_named():  # products new since the last batch
            self._writer.name_product(index, product_id)
        values = self._writer.encode(entries, ranked.items, ranked.scores, produced_ms)
        topic = self._suggestions
        suggestions = [
            Output(topic, entry.key, value, None, produced_ms)
            for entry, value in zip(entries, values, strict=True)
        ]
        t3 = time.perf_counter()
        forgotten = sessions.drain_forgotten()  # drained either way: it only grows otherwise
        changelog: list[Output] = []
        if self._changelog is not None:
            touched = {e.event.user_id: (e.key, e.partition) for e in entries}
            changelog = changelog_records(
                self._changelog,
                touched,
                sessions,
                forgotten,
                owned_partitions,
                next_offsets,
                self._live.product_id_of,
            )
        t4 = time.perf_counter()
        timings = ranked.timings
        stages_s = {
            "parse": t1 - t0,
            "state": timings.state_s,
            "candidates": timings.candidates_s,
            "features": timings.features_s,
            "scoring": timings.scoring_s,
            "rank": timings.rank_s,
            "encode": t3 - t2,
            "changelog": t4 - t3,
        }
        return BatchResult(
            entries, suggestions, rejections, changelog, next_offsets, stages_s, cold
        )

    def _parse(
        self, records: Sequence[InputRecord], clock_ms: int
    ) -> tuple[list[BatchEntry], list[Rejection], dict[tuple[str, int], int], int]:
        """Decode, validate and look up every record: an entry, or a rejection with its dead
        letter (original key, value and headers, plus headers saying why and where from); and
        how many entries are cold starts."""
        entries: list[BatchEntry] = []
        rejections: list[Rejection] = []
        next_offsets: dict[tuple[str, int], int] = {}
        decode, known, add = self._decode, self._live.model.index.get, self._live.add
        cold = 0
        for msg in records:
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            next_offsets[(topic, partition)] = offset + 1
            key, value = msg.key(), msg.value()
            try:
                event = to_browsing_event(decode(value), key, clock_ms)
            except DataError as exc:
                rejections.append(self._reject(exc, msg))
                continue
            item = known(event.product_id)
            if item is None:  # a product the model does not know: a cold start
                item = add(event.product_id, event.category_id, event.price)
                cold += 1
            entries.append(BatchEntry(event, item, partition, offset, key))
        return entries, rejections, next_offsets, cold

    def _reject(self, error: DataError, msg: Any) -> Rejection:
        letter = dead_letter_of(error, msg, DEAD_LETTER_MAX_VALUE_BYTES)
        return Rejection(
            Output(self._dead_letters, letter.key, letter.value, letter.headers),
            type(error).__name__,
            str(error),
            msg.partition(),
            msg.offset(),
        )
