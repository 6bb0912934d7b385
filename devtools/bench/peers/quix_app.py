"""The Quix Streams peer: the worker's pipeline written as an idiomatic Quix Streams app.

Runs inside the quix venv (``requirements-quix.txt`` beside it), never in the project's env. It
imports the project's ``worker`` package from the repository: :mod:`devtools.bench.peers.run_quix`
puts the repository root on ``PYTHONPATH`` (the venv gets numpy, fastavro, lightgbm and structlog at
the project's versions; nothing is installed from the checkout, so the venv does not depend on where
the repository lives and always runs the code as it is now).

Pipeline, per message (``--mode per-message``, the way a Quix app naturally works)::

    app.topic(events, value_deserializer=BrowsingEventDeserializer)   # worker.wire.codec
      -> sdf.apply(recommend_one, metadata=True)                       # worker.core.pipeline
      -> sdf.to_topic(suggestions, value_serializer=SuggestionSerializer)

``recommend_one`` validates the record (``worker.core.records``), advances the user's session in an
in-process :class:`worker.core.session.SessionStore` (not Quix's RocksDB state: the worker keeps its
sessions in memory too), builds candidates and features with the worker's code and calls
``Booster.predict`` once for that one event, takes the top K and returns the ProductSuggestion.

``--mode batch-sink`` is the only batching Quix Streams offers for per-record work: a
``BatchingSink`` accumulates records per partition between checkpoints (``commit_every`` /
``commit_interval``) and its ``write(batch)`` scores the whole batch with one predict call and
produces the suggestions with its own producer, flushed before the checkpoint commits.
StreamingDataFrame itself has no batched apply; count windows are per message key.

``--scorer booster`` (the default) scores with ``Booster.predict``, as a Quix user would write it;
``--scorer lleaves`` with the compiled model the worker serves (``worker.model.scoring.
make_scorer``, the object from the artifact's cache), so that the two systems can be compared
with the same scorer. The app refuses to start when lleaves cannot score (no silent fallback).

Records that fail decoding or validation are counted and skipped (no dead-letter topic here).
On SIGTERM Quix stops and commits; the app then prints one JSON line of counters to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import quixstreams
from confluent_kafka import Producer
from quixstreams import Application, message_context
from quixstreams.models.serializers import Deserializer, Serializer
from quixstreams.sinks import BatchingSink, SinkBatch

from worker.core.errors import DataError
from worker.core.features import FEATURE_NAMES
from worker.core.pipeline import BatchEntry, Recommender
from worker.core.records import SourceRef, to_browsing_event
from worker.core.session import SessionStore
from worker.model.artifact import load_artifact
from worker.model.scoring import BoosterScorer, LleavesScorer, make_scorer
from worker.testing import Suggestion
from worker.wire.codec import codec_for

COUNTERS = {"answered": 0, "skipped": 0, "batches": 0}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class BrowsingEventDeserializer(Deserializer):
    """Avro BrowsingEvent (single-object or Confluent framing) -> record dict."""

    def __init__(self) -> None:
        super().__init__()
        self._codec = codec_for("BrowsingEvent")

    def __call__(self, value: bytes, ctx: Any) -> dict[str, Any]:
        return self._codec.decode(value)


class SuggestionSerializer(Serializer):
    """ProductSuggestion record dict -> Avro single-object encoding."""

    def __init__(self) -> None:
        self._codec = codec_for("ProductSuggestion")

    def __call__(self, value: dict[str, Any], ctx: Any) -> bytes:
        return self._codec.encode(value)


def on_processing_error(exc: BaseException, row: Any, logger: logging.Logger) -> bool:
    """Skip bad records (the worker would dead-letter them); anything else stops the app."""
    if isinstance(exc, DataError):
        COUNTERS["skipped"] += 1
        return True
    return False


def on_consumer_error(exc: BaseException, message: Any, logger: logging.Logger) -> bool:
    """Undecodable values arrive here (wrapped by Quix); skip them."""
    COUNTERS["skipped"] += 1
    return True


class RecommendSink(BatchingSink):
    """Scores everything accumulated since the last checkpoint with one predict call."""

    def __init__(
        self,
        recommender: Recommender,
        sessions: SessionStore,
        version: str,
        bootstrap: str,
        topic: str,
        producer_config: dict[str, Any],
    ) -> None:
        super().__init__()
        self._recommender = recommender
        self._sessions = sessions
        self._version = version
        self._topic = topic
        self._codec = codec_for("ProductSuggestion")
        self._producer = Producer({"bootstrap.servers": bootstrap, **producer_config})

    def write(self, batch: SinkBatch) -> None:
        items = list(batch)
        events = [item.value[0] for item in items]
        entries = [BatchEntry(item.value[0], item.value[1], batch.partition) for item in items]
        ranked = self._recommender.recommend(self._sessions, entries)
        produced = now_ms()
        for item, event, products in zip(items, events, ranked.products, strict=True):
            source = SourceRef(batch.topic, batch.partition, item.offset)
            record = Suggestion(event, source, self._version, products).to_avro(produced)
            self._producer.produce(self._topic, key=item.key, value=self._codec.encode(record))
        remaining = self._producer.flush(30)
        if remaining:
            raise RuntimeError(f"{remaining} suggestions not acknowledged")
        COUNTERS["answered"] += len(items)
        COUNTERS["batches"] += 1


def build_app(args: argparse.Namespace) -> Application:
    artifact = load_artifact(args.models_dir, expected_features=FEATURE_NAMES)
    tables = artifact.tables
    scorer: Any = BoosterScorer(artifact.booster, num_threads=1)
    if args.scorer == "lleaves":
        scorer = make_scorer(artifact.path, artifact.booster, backend="lleaves", num_threads=1)
        if not isinstance(scorer, LleavesScorer):
            raise SystemExit("--scorer lleaves: lleaves could not score this model (see the log)")
    recommender = Recommender(
        tables,
        scorer,
        n_candidates=args.candidates,
        top_k=args.top_k,
    )
    sessions = SessionStore(history=args.history)
    producer_config = json.loads(args.producer_config)
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset=args.offset_reset,
        commit_interval=args.commit_interval,
        commit_every=args.commit_every,
        consumer_extra_config=json.loads(args.consumer_config),
        producer_extra_config=producer_config,
        loglevel="WARNING",
        auto_create_topics=False,  # the driver creates the topics
        use_changelog_topics=False,  # no Quix state store is used
        on_processing_error=on_processing_error,
        on_consumer_error=on_consumer_error,
        state_dir=args.state_dir,
    )
    events = app.topic(
        args.events_topic, key_deserializer="bytes", value_deserializer=BrowsingEventDeserializer()
    )
    sdf = app.dataframe(events)
    version = artifact.version

    if args.mode == "per-message":
        suggestions = app.topic(
            args.output_topic, key_serializer="bytes", value_serializer=SuggestionSerializer()
        )

        def recommend_one(value: dict[str, Any], key: bytes, timestamp: int, headers: Any):
            ctx = message_context()
            event = to_browsing_event(value, key, now_ms())
            entry = BatchEntry(event, tables.index_of(event.product_id), ctx.partition)
            ranked = recommender.recommend(sessions, [entry])  # one predict
            source = SourceRef(ctx.topic, ctx.partition, ctx.offset)
            COUNTERS["answered"] += 1
            return Suggestion(event, source, version, ranked.products[0]).to_avro(now_ms())

        sdf = sdf.apply(recommend_one, metadata=True)
        sdf.to_topic(suggestions)
    else:

        def validate(value: dict[str, Any], key: bytes, timestamp: int, headers: Any):
            event = to_browsing_event(value, key, now_ms())
            return event, tables.index_of(event.product_id)

        sdf = sdf.apply(validate, metadata=True)
        sdf.sink(
            RecommendSink(
                recommender, sessions, version, args.bootstrap, args.output_topic, producer_config
            )
        )
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Quix Streams peer of the recommender worker")
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--models-dir", type=Path, required=True)
    p.add_argument("--events-topic", required=True)
    p.add_argument("--output-topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--offset-reset", choices=("earliest", "latest"), default="earliest")
    p.add_argument("--mode", choices=("per-message", "batch-sink"), default="per-message")
    p.add_argument("--scorer", choices=("booster", "lleaves"), default="booster")
    p.add_argument("--commit-interval", type=float, default=5.0, help="Quix default: 5 s")
    p.add_argument("--commit-every", type=int, default=0, help="Quix default: 0 (off)")
    p.add_argument("--candidates", type=int, default=50)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--history", type=int, default=20)
    p.add_argument("--consumer-config", default="{}", help="JSON librdkafka properties")
    p.add_argument("--producer-config", default="{}", help="JSON librdkafka properties")
    p.add_argument("--state-dir", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    app = build_app(args)
    print(
        json.dumps({"event": "quix_app_starting", "quixstreams": quixstreams.__version__}),
        flush=True,
    )
    app.run()  # returns after SIGTERM / SIGINT, once the last checkpoint is committed
    print(json.dumps({"event": "quix_app_stopped", **COUNTERS}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
