"""The worker loop (``Worker.run`` / ``Worker.process``) over the fake consumer and producer of
``worker.testing``: no broker, a tiny model, a fake clock for the commit protocol's waits."""

from __future__ import annotations

import gc
import random
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from devtools.bench import runner
from worker.apps import serve
from worker.apps.serve import Worker
from worker.config import KafkaSettings, TopicSettings, WorkerSettings
from worker.core.pipeline import BatchEntry, advance_entries
from worker.core.records import to_browsing_event
from worker.core.session import SessionStore
from worker.kafka.changelog import changelog_topic
from worker.kafka.checkpoint import DeliveryError
from worker.kafka.watches import RejoinWatch
from worker.testing import (
    FakeBroker,
    FakeClock,
    FakeConsumer,
    FakeMessage,
    FakeProducer,
    header_map,
    tiny_artifact,
)
from worker.testing import RecordingLog as Log
from worker.wire.codec import codec_for

EVENTS, SUGGESTIONS = "events", "suggestions"
DLQ = f"{EVENTS}.dlq"
GROUP = "g"
PARTITIONS = [(EVENTS, 0), (EVENTS, 1), (EVENTS, 2)]
T0 = 1_700_000_000_000


class Harness:
    """A worker wired to fakes: one broker (3 partitions per topic), one fake clock, the
    consumers and producers the worker makes, recorded in creation order."""

    def __init__(self, **settings) -> None:
        self.broker = FakeBroker(partitions=3)
        self.clock = FakeClock()
        self.log = Log()
        self.consumers: list[FakeConsumer] = []
        self.producers: list[FakeProducer] = []
        self.setup_producer = lambda producer, n: None  # n: how many were made before it
        defaults = dict(
            kafka=KafkaSettings("fake:9092"),
            topics=TopicSettings(events=EVENTS, suggestions=SUGGESTIONS, partitions=3),
            group_id=GROUP,
            top_k=5,
            n_candidates=20,
            max_batch_size=500,
            metrics_port=0,
            scoring_backend="lightgbm",
        )
        self.settings = WorkerSettings(**{**defaults, **settings})
        self.codec = codec_for("BrowsingEvent")
        self.rng = random.Random(11)
        self.products = tiny_artifact(Path("/x")).tables.product_ids.tolist()
        self.sent: dict[tuple[int, int], bytes | None] = {}  # (partition, offset) -> key

    def consumer(self, _kafka, group_id, _log, *, auto_commit=True, **overrides) -> FakeConsumer:
        config = {"enable.auto.commit": auto_commit, **overrides}
        consumer = FakeConsumer(self.broker, group_id, config, clock=self.clock)
        self.consumers.append(consumer)
        return consumer

    def producer(self, _kafka, _log, **overrides) -> FakeProducer:
        producer = FakeProducer(self.broker, overrides, clock=self.clock)
        self.setup_producer(producer, len(self.producers))
        self.producers.append(producer)
        return producer

    def worker(self) -> Worker:
        w = Worker(
            self.settings,
            tiny_artifact(Path("/nonexistent")),
            self.log,
            consumer_factory=self.consumer,
            producer_factory=self.producer,
            clock=self.clock,
        )
        self.main = self.consumers[0]
        self.main.schedule("assign", PARTITIONS)
        return w

    def write_events(self, n: int, *, bad_every: int = 0, cold_every: int = 0) -> None:
        """``n`` events of 9 users (user i on partition i % 3), every ``bad_every``-th one
        undecodable (with a header of its own), every ``cold_every``-th one on a product the
        model does not know (``new-0`` .. ``new-4``, of category c1)."""
        for i in range(n):
            user = f"u{self.rng.randrange(9)}"
            partition = int(user[1:]) % 3
            if bad_every and i % bad_every == bad_every - 1:
                value, headers = b"not avro", [("h", str(i).encode())]
            else:
                record = {
                    "event_id": f"e{i}",
                    "user_id": user,
                    "session_id": f"s-{user}",
                    "event_type": self.rng.choice(["VIEW", "VIEW", "ADD_TO_CART"]),
                    "product_id": self.rng.choice(self.products),
                    "category_id": None,
                    **(
                        {"product_id": f"new-{i % 5}", "category_id": "c1"}
                        if cold_every and i % cold_every == 0
                        else {}
                    ),
                    "price": None,
                    "event_time": T0 + i * 1000,
                }
                value, headers = self.codec.encode(record), None
            m = self.broker.add(EVENTS, partition, user.encode(), value, headers, T0)
            self.sent[(m.partition(), m.offset())] = value

    def answered(self) -> list[tuple[int, int]]:
        """(partition, offset) of the input each visible suggestion answers, in log order."""
        return [(p, o) for _, p, o in self.answers()]

    def answers(self) -> list[tuple[bytes, int, int]]:
        """(key, source partition, source offset) of each visible suggestion, in log order."""
        codec = codec_for("ProductSuggestion")
        out = []
        for m in self.broker.messages(SUGGESTIONS):
            record = codec.decode(m.value())
            out.append((m.key(), record["source_partition"], record["source_offset"]))
        return out

    def in_user_order(self) -> bool:
        """Each user's suggestions are in the log in the order of the user's events."""
        by_user: dict[bytes, list[tuple[int, int]]] = {}
        for key, partition, offset in self.answers():
            by_user.setdefault(key, []).append((partition, offset))
        return all(seen == sorted(seen) for seen in by_user.values())

    def dead_lettered(self) -> list[tuple[int, int]]:
        out = []
        for m in self.broker.messages(DLQ):
            h = header_map(m.headers())
            out.append((int(h["dlq.source.partition"]), int(h["dlq.source.offset"])))
        return out

    def ends(self) -> dict[tuple[str, int], int]:
        return {(EVENTS, p): self.broker.end_offset(EVENTS, p) for _, p in PARTITIONS}


def run(w: Worker) -> int:
    return w.run(install_signal_handlers=False, max_idle_s=0.0)


def reference_sessions(h: Harness) -> dict[str, tuple]:
    """Every user's session after each good input was recorded exactly once, in order."""
    store = SessionStore(max_users=h.settings.max_sessions)
    tables = tiny_artifact(Path("/x")).tables
    codec = codec_for("BrowsingEvent")
    for (partition, offset), value in sorted(h.sent.items()):
        if value == b"not avro":
            continue
        record = codec.decode(value)
        event = to_browsing_event(record, record["user_id"].encode(), T0 + 10**9)
        entry = BatchEntry(event, tables.index_of(event.product_id), partition, offset)
        advance_entries(store, [entry])
    return {u: _view(store.get(u)) for u in store.users()}


def _view(session) -> tuple:
    return (session.n_events, list(session.codes), list(session.times_ms), session.offset)


def sessions_of(w: Worker) -> dict[str, tuple]:
    return {u: _view(w.sessions.get(u)) for u in w.sessions.users()}


# -- at-least-once -------------------------------------------------------------------------------


def test_every_input_ends_as_a_suggestion_or_a_dead_letter_and_offsets_follow_acknowledgements():
    h = Harness(max_batch_size=40)
    h.write_events(150, bad_every=13)
    w = h.worker()
    stores: list[list[tuple[str, int, int]]] = []
    consumer = h.main
    store = consumer.store_offsets

    def store_offsets(message=None, offsets=None):
        # Every input below each stored offset is answered or dead-lettered by now.
        done = set(h.answered()) | set(h.dead_lettered())
        for tp in offsets:
            assert {(tp.partition, o) for o in range(tp.offset)} <= done, tp
        stores.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])
        store(message, offsets)

    consumer.store_offsets = store_offsets  # type: ignore[method-assign]
    assert run(w) == 0

    answered, dead = h.answered(), h.dead_lettered()
    assert len(dead) == 150 // 13 and all(h.sent[d] == b"not avro" for d in dead)
    assert sorted(answered + dead) == sorted(h.sent)  # each input exactly once
    assert h.in_user_order()
    assert len(stores) == 4  # 150 inputs in batches of at most 40
    assert h.broker.committed[GROUP] == h.ends()  # committed on close (revoke + auto-commit)
    assert sessions_of(w) == {} and "partitions_revoked" in h.log.events()
    assert w._consumed == 150 and w._answered == len(answered) and w._dead == len(dead)


def test_metrics_and_batch_log_name_every_stage_the_benchmark_reads():
    h = Harness()
    h.write_events(20)
    w = h.worker()
    run(w)
    labels = {
        s.labels["stage"]
        for metric in w.metrics.registry.collect()
        if metric.name == "worker_stage_seconds"
        for s in metric.samples
    }
    assert labels == set(serve.STAGES) == set(runner.STAGES)
    (scored,) = h.log.fields("batch_scored")
    assert [k for k in scored if k.endswith("_ms")] == [f"{s}_ms" for s in serve.STAGES]


def test_the_set_up_heap_is_frozen_while_serving_and_handed_back_at_stop():
    """Full collections do not walk the model and catalogue while the loop runs (they were the
    latency runs' p99: worker.ops.heap); each collection is timed in a metric."""
    h = Harness()
    h.write_events(60)
    w = h.worker()
    frozen_while_consuming: list[int] = []
    consume = h.main.consume

    def spy(*args, **kwargs):
        frozen_while_consuming.append(gc.get_freeze_count())
        gc.collect()  # at least one timed full collection during the run
        return consume(*args, **kwargs)

    h.main.consume = spy  # type: ignore[method-assign]
    assert run(w) == 0
    (started,) = h.log.fields("worker_started")
    assert started["gc_frozen_objects"] > 1000
    # (frozen objects freed by reference counting leave it: a few)
    assert min(frozen_while_consuming) >= 0.99 * started["gc_frozen_objects"]
    full = w.metrics.registry.get_sample_value("worker_gc_pause_seconds_count", {"generation": "2"})
    assert full is not None and full >= len(frozen_while_consuming)
    assert gc.get_freeze_count() == 0 and w.heap._callback not in gc.callbacks


def test_cold_starts_are_answered_counted_and_their_sessions_survive_a_rebalance():
    """Events on products the model does not know are answered like any other and counted; a
    worker that takes the partitions over restores the sessions with their new products."""
    h = Harness(max_batch_size=40)
    h.write_events(120, cold_every=4)
    first = h.worker()
    held: list[dict[str, list[str]]] = []

    def product_ids(w: Worker) -> dict[str, list[str]]:
        live = w.recommender.live
        return {
            u: [live.product_id_of(i) for i in w.sessions.get(u).items] for u in w.sessions.users()
        }

    def spy(w: Worker) -> None:
        on_revoke = w._on_revoke

        def on_revoke_spy(consumer, partitions):
            held.append(product_ids(w))
            on_revoke(consumer, partitions)

        w._on_revoke = on_revoke_spy  # type: ignore[method-assign]

    spy(first)
    assert run(first) == 0
    assert sorted(h.answered()) == sorted(h.sent) and h.dead_lettered() == []
    collected = {s.name: s.value for m in first.metrics.registry.collect() for s in m.samples}
    assert collected["worker_cold_start_events_total"] == 30
    assert collected["worker_new_products_total"] == 5
    assert collected["worker_live_catalogue_products"] == 5
    first._housekeeping()  # every 10 s: the trending table's size
    (gauge,) = [m for m in first.metrics.registry.collect() if m.name == "worker_trending_products"]
    assert 5 < gauge.samples[0].value <= 60 + 5
    assert any(p.startswith("new-") for products in held[0].values() for p in products)

    second = Worker(
        h.settings,
        tiny_artifact(Path("/nonexistent")),
        h.log,
        consumer_factory=h.consumer,
        producer_factory=h.producer,
        clock=h.clock,
    )
    main = h.consumers[-1]  # the second worker's input consumer (its restorer's comes later)
    assert main.group_id == GROUP
    main.schedule("assign", PARTITIONS)
    spy(second)
    assert run(second) == 0
    assert held[1] == held[0]  # every session back, new products included
    assert len(second.recommender.live) == 5


def test_a_failed_delivery_stops_the_worker_with_nothing_stored():
    h = Harness()
    h.setup_producer = lambda p, n: p.fail_topics.update(
        {SUGGESTIONS: KafkaError.MSG_SIZE_TOO_LARGE}
    )
    h.write_events(30)
    w = h.worker()
    with pytest.raises(DeliveryError, match="MSG_SIZE_TOO_LARGE"):
        run(w)
    assert not any(name == "store_offsets" for name, _ in h.main.calls)
    assert h.broker.committed.get(GROUP, {}) == {}  # the batch will be redelivered
    assert h.main.closed  # the consumer left the group on the way out


def test_consumer_errors_are_handled_before_the_step():
    h = Harness()
    w = h.worker()
    eof = FakeMessage(EVENTS, 1, 0, None, None, error=KafkaError(KafkaError._PARTITION_EOF))
    h.main.add_batch([eof])
    fatal = KafkaError(KafkaError._FATAL, "fenced", fatal=True)
    h.main.add_batch([FakeMessage(EVENTS, 1, 0, None, None, error=fatal)])
    with pytest.raises(Exception, match="fatal consumer error: _FATAL"):
        run(w)
    assert h.broker.messages(SUGGESTIONS) == [] and h.broker.messages(DLQ) == []


# -- rebalances in the middle of a batch ---------------------------------------------------------


def while_the_first_batch_waits(w: Worker, action) -> list[dict]:
    """Run ``action()`` once, right after the first batch's outputs are produced: at-least-once
    overlaps their acknowledgement wait with the next consume, which serves the rebalance
    events ``action`` schedules. Returns (filled then) the first batch's next offsets."""
    defer = w.checkpoint.defer
    first: list[dict] = []

    def defer_then_act(next_offsets, token=None):
        defer(next_offsets, token)
        if not first:
            first.append(dict(next_offsets))
            action()

    w.checkpoint.defer = defer_then_act  # type: ignore[method-assign]
    return first


def test_a_partition_revoked_while_the_batch_waits_is_committed_then_its_sessions_dropped():
    h = Harness()
    h.write_events(60)
    w = h.worker()
    revoked = (EVENTS, 1)

    def revoke() -> None:
        assert h.producers[0].queued  # nothing acknowledged yet
        h.main.schedule("revoke", [revoked])

    first = while_the_first_batch_waits(w, revoke)
    seen: list[dict] = []
    on_revoke = w._on_revoke

    def on_revoke_spy(consumer, partitions):
        on_partition_1 = {u for u in w.sessions.users() if int(u[1:]) % 3 == 1}
        on_revoke(consumer, partitions)
        seen.append(
            {
                "partitions": sorted(tp.partition for tp in partitions),
                "before": on_partition_1,
                "after": {u for u in w.sessions.users() if int(u[1:]) % 3 == 1},
                "committed": dict(h.broker.committed[GROUP]),
            }
        )

    w._on_revoke = on_revoke_spy  # type: ignore[method-assign]  (run() subscribes with it)
    run(w)

    revocation = seen[0]  # then the close revokes the rest
    assert revocation["partitions"] == [1]
    # Nothing lost: the batch's offset of the revoked partition was committed before it moved.
    assert revocation["committed"][revoked] == h.ends()[revoked]
    assert first[0][revoked] == h.ends()[revoked]  # the first batch held all of it
    assert revocation["before"] and revocation["after"] == set()
    event = h.log.fields("partitions_revoked")[0]
    assert event == {"partitions": [1], "sessions_dropped": len(revocation["before"])}
    assert sorted(h.answered()) == sorted(h.sent)


def test_a_partition_lost_while_the_batch_waits_keeps_its_offset_for_the_next_owner():
    h = Harness()
    h.write_events(60)
    w = h.worker()
    lost = (EVENTS, 2)
    while_the_first_batch_waits(w, lambda: h.main.take_away([lost]))
    run(w)

    committed = h.broker.committed[GROUP]
    assert lost not in committed  # its next owner answers its events again: nothing lost
    ends = h.ends()
    assert committed == {tp: ends[tp] for tp in PARTITIONS if tp != lost}
    asked = [(EVENTS, p, ends[(EVENTS, p)]) for p in range(3)]
    assert ("store_offsets", asked) in h.main.calls  # asked for all three, got two
    (event,) = h.log.fields("partitions_lost")
    assert event["partitions"] == [2] and event["sessions_dropped"] > 0
    assert not [u for u in w.sessions.users() if int(u[1:]) % 3 == 2]
    assert "offsets_not_stored" not in h.log.events()  # librdkafka stored the others


def test_every_partition_of_the_batch_lost_meanwhile_is_logged_not_fatal():
    h = Harness()
    h.write_events(30)
    w = h.worker()
    while_the_first_batch_waits(w, lambda: h.main.take_away(PARTITIONS))
    assert run(w) == 0
    assert "offsets_not_stored" in h.log.events()
    assert h.broker.committed.get(GROUP, {}) == {}
    assert len(w.sessions) == 0


# -- a consumer that never rejoins its group -----------------------------------------------------


def rejoin_harness() -> tuple[Harness, Worker]:
    """A worker whose consumer loses every partition during its first batch and is never given
    an assignment again, with a watch of short bounds; a fresh consumer is assigned every
    partition at once."""
    h = Harness(max_batch_size=20, max_batch_wait_ms=1)
    h.write_events(60)
    make = h.consumer

    def consumer(*args, **kwargs):
        c = make(*args, **kwargs)
        if sum(1 for made in h.consumers if made.group_id == GROUP) > 1 and c.group_id == GROUP:
            c.schedule("assign", PARTITIONS)  # not the first of the group, not the restorer's
        return c

    h.consumer = consumer  # type: ignore[method-assign]
    w = h.worker()
    w.rejoin_watch = RejoinWatch(rejoin_s=2.0, probe_every_s=0.5)
    # At the first batch's flush: acknowledged, then the loss comes with the next consume.
    h.producers[0].during_flush.append(lambda: h.main.take_away(PARTITIONS))
    return h, w


def test_a_consumer_that_never_rejoins_while_the_broker_answers_is_replaced_and_nothing_is_lost():
    h, w = rejoin_harness()
    assert w.run(install_signal_handlers=False, max_idle_s=0.3) == 0

    group = [c for c in h.consumers if c.group_id == GROUP]
    assert len(group) == 2 and w.consumer is group[1] and h.main is group[0]
    (wedged,) = h.log.fields("consumer_wedged")
    assert wedged["waited_s"] >= 2.0
    assert w.metrics.consumer_replacements._value.get() == 1
    # What the lost consumer answered but never committed is answered again by the fresh one
    # (at-least-once: duplicates bounded by the two batches in flight, the one acknowledged as
    # the loss was scheduled and the next, overlapped), every input is answered and committed
    # to the end.
    assert set(h.answered()) == set(h.sent)
    assert len(h.answered()) - len(h.sent) <= 2 * 20
    assert h.broker.committed[GROUP] == h.ends()
    # The old consumer was asked whether the broker answers, then closed in the background.
    assert ("list_topics", EVENTS) in h.main.calls
    deadline = time.monotonic() + 5.0
    while not h.main.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert h.main.closed


def test_a_consumer_is_not_replaced_while_the_broker_does_not_answer():
    h, w = rejoin_harness()
    on_lost, settle = w._on_lost, w.checkpoint.settle
    lost: list[bool] = []

    def lost_then_away(consumer, partitions):
        on_lost(consumer, partitions)
        lost.append(True)
        if not w.checkpoint.deferred:
            h.broker.answers = False

    def settle_then_away(within_s=None):
        # The broker stops answering once the loss has landed and the last batch it answered
        # is acknowledged (a batch waiting for the broker holds the loop: backpressure).
        settled = settle(within_s)
        if lost:
            h.broker.answers = False
        return settled

    w._on_lost = lost_then_away  # type: ignore[method-assign]
    w.checkpoint.settle = settle_then_away  # type: ignore[method-assign]
    assert w.run(install_signal_handlers=False, max_idle_s=0.3) == 0
    assert w.rejoin_watch.waiting_for(h.clock()) > 2 * w.rejoin_watch.rejoin_s
    assert [c for c in h.consumers if c.group_id == GROUP] == [h.main]
    assert "consumer_wedged" not in h.log.events()
    assert ("list_topics", EVENTS) in h.main.calls  # it asked, and was not answered


def test_shutdown_gives_up_a_consumer_close_that_never_returns():
    import threading

    h = Harness(shutdown_timeout_s=6.0)
    h.write_events(10)
    w = h.worker()
    release = threading.Event()
    h.main.close = lambda: release.wait(30)  # type: ignore[method-assign]
    started = time.monotonic()
    assert run(w) == 0
    assert time.monotonic() - started < 5.0  # the 6 s budget less the 5 s margin, at least 1 s
    assert h.log.fields("consumer_close_timeout")[0]["waited_s"] == 1.0
    release.set()


# -- at-least-once: a stuck producer ------------------------------------------------------------


def test_a_stuck_producer_is_replaced_and_its_outputs_resent_in_order_with_headers_and_times():
    h = Harness()
    h.setup_producer = lambda p, n: setattr(p, "stuck", n == 0)
    h.write_events(45, bad_every=7)
    w = h.worker()
    run(w)

    stuck, fresh = h.producers
    assert "purge(in_queue=True, in_flight=False)" in stuck.calls
    (replaced,) = h.log.fields("producer_replaced")
    everything = [
        *h.broker.messages(SUGGESTIONS),
        *h.broker.messages(DLQ),
        *h.broker.messages(changelog_topic(GROUP)),
    ]
    assert replaced["resent"] == len(everything)  # one batch, all of it queued when stuck
    # Everything arrived once, in the order it was produced.
    assert sorted(h.answered() + h.dead_lettered()) == sorted(h.sent)
    assert h.in_user_order()
    # Re-sent as produced: suggestions keep their timestamp (their produced time), dead
    # letters their headers (the source record's own last).
    codec = codec_for("ProductSuggestion")
    for m in h.broker.messages(SUGGESTIONS):
        assert m.timestamp()[1] == codec.decode(m.value())["produced_time"] > 0
    for m in h.broker.messages(DLQ):
        assert header_map(m.headers())["dlq.error.class"] == "UnknownFramingError"
        assert m.headers()[-1][0] == "h"
    assert w.metrics.producer_replacements._value.get() == 1
    assert h.broker.committed[GROUP] == h.ends()
    assert not fresh.queued and not fresh.in_flight


# -- exactly-once ---------------------------------------------------------------------------------


def test_exactly_once_abandon_rewinds_to_the_committed_offsets_and_state():
    """The first transaction commits; the second one's producer gets stuck, so the transaction
    is abandoned: the worker replaces the producer (fencing the old one), rewinds to the
    committed offsets, restores the sessions from the changelog and answers the batch again.
    A read_committed reader sees every answer once, and no event entered the state twice."""
    h = Harness(exactly_once=True, max_batch_size=40, transactional_id="worker-0")

    commits: list[dict] = []  # the group's committed offsets after each transaction

    def stuck_from_second_transaction(producer: FakeProducer, n: int) -> None:
        commit = producer.commit_transaction

        def commit_and_note(timeout=None):
            commit(timeout)
            commits.append(dict(h.broker.committed[GROUP]))

        producer.commit_transaction = commit_and_note  # type: ignore[method-assign]
        if n > 0:
            return

        def hook() -> None:
            producer.stuck = producer.calls.count("begin_transaction") >= 2
            producer.during_flush.append(hook)

        producer.during_flush.append(hook)

    h.setup_producer = stuck_from_second_transaction
    h.write_events(90)
    w = h.worker()
    before_close: list[dict] = []
    on_revoke = w._on_revoke

    def on_revoke_spy(consumer, partitions):
        before_close.append(sessions_of(w))
        on_revoke(consumer, partitions)

    w._on_revoke = on_revoke_spy  # type: ignore[method-assign]
    run(w)

    assert len(h.producers) == 2
    assert h.producers[0].calls.count("commit_transaction") == 1
    assert "transactional_producer_replaced" in h.log.events()
    (rewound,) = h.log.fields("batch_rewound")
    assert rewound["partitions"] == [0, 1, 2]
    # Back to what the first transaction committed (nothing yet on partition 2: its beginning).
    seeks = sorted(args for name, args in h.main.calls if name == "seek")
    assert seeks == [(EVENTS, p, commits[0].get((EVENTS, p), -2)) for p in range(3)]
    answered = h.answered()
    assert sorted(answered) == sorted(h.sent)  # each answer visible exactly once
    assert h.broker.committed[GROUP] == h.ends()
    restored = h.log.fields("sessions_restored")
    assert len(restored) == 2 and restored[1]["sessions"] > 0  # on assign, then on rewind
    assert before_close[0] == reference_sessions(h)  # no event in the state twice, none lost


def test_a_partition_whose_changelog_is_behind_holds_back_only_itself():
    """Exactly-once: the group committed partition 2 up to offset 4, but the changelog does not
    show that batch yet (its transaction still open, or its markers on the way). The worker
    answers partitions 0 and 1 meanwhile; partition 2 stays paused, and is answered from its
    committed offset once the changelog has caught up."""
    h = Harness(exactly_once=True, transactional_id="worker-0", max_batch_size=20)
    h.write_events(90)
    h.broker.committed[GROUP] = {(EVENTS, 2): 4}
    w = h.worker()
    w._subscribe()

    def loop(times: int) -> None:
        for _ in range(times):
            messages = w.consumer.consume(h.settings.max_batch_size, timeout=0.01)
            if messages:
                w.process(messages)
            w._step_restore()

    loop(30)
    assert {p for p, _ in h.answered()} == {0, 1}
    assert sorted(h.answered()) == sorted(k for k in h.sent if k[0] != 2)
    assert w.restorer is not None and w.restorer.restoring == {2}
    assert h.main.paused == {(EVENTS, 2)}
    assert w.metrics.restoring._value.get() == 1

    changelog = changelog_topic(GROUP)
    h.broker.add(changelog, 2, b"\x00checkpoint", b"4")  # the previous owner's batch lands
    loop(30)
    assert sorted(h.answered()) == sorted(k for k in h.sent if k[0] != 2 or k[1] >= 4)
    assert not h.main.paused and w.metrics.restoring._value.get() == 0
    restored = h.log.fields("sessions_restored")
    assert [r["partitions"] for r in restored] == [[0, 1], [2]]


def test_a_rewind_skips_a_partition_taken_away_while_the_batch_waited():
    """Exactly-once: the second transaction's producer gets stuck, and while the worker waits
    the group takes partition 2 away (its session expired: a frozen process). The rewind seeks
    the partitions it still holds and skips the lost one, instead of failing on it; the loss is
    served by the next consume and the other partitions are answered exactly once."""
    h = Harness(exactly_once=True, max_batch_size=40, transactional_id="worker-0")

    def stuck_from_second_transaction(producer: FakeProducer, n: int) -> None:
        if n > 0:
            return

        def hook() -> None:
            if producer.calls.count("begin_transaction") >= 2 and not producer.stuck:
                producer.stuck = True
                h.main.take_away([(EVENTS, 2)])
            producer.during_flush.append(hook)

        producer.during_flush.append(hook)

    h.setup_producer = stuck_from_second_transaction
    h.write_events(90)
    w = h.worker()
    assert run(w) == 0
    assert h.log.fields("seek_skipped")[0]["partition"] == 2
    assert [f["partitions"] for f in h.log.fields("partitions_lost")] == [[2]]
    answered = h.answered()
    assert len(answered) == len(set(answered))  # nothing answered twice
    assert {k for k in h.sent if k[0] != 2} <= set(answered)
