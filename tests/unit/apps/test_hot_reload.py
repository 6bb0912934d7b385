"""Hot reload and champion/challenger in the worker loop, over the fakes of ``worker.testing``: a
swap between micro-batches answers every input exactly once, the suggestions carry the version
that answered them, a model that fails its smoke check leaves the old one serving, sessions move
lazily between versions' catalogues, and every lane's state follows rebalances and expiry."""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import TopicPartition

from tests.unit.apps.test_serve_loop import EVENTS, PARTITIONS, Harness
from worker.apps.batch import Lane
from worker.apps.model_set import Loaded, ModelRejected, ModelSet, smoke_check
from worker.apps.serve import Worker
from worker.core.features import FEATURE_NAMES
from worker.core.pipeline import Recommender
from worker.core.routing import Routing, user_bucket
from worker.core.session import SessionStore
from worker.model import registry
from worker.model.artifact import ModelArtifact, point_latest
from worker.model.scoring import LightGBMScorer
from worker.testing import LinearBooster, tiny_catalogue
from worker.wire.codec import codec_for
from worker.wire.suggestion_writer import SuggestionWriter

POLL_S = 5.0


class NaNBooster(LinearBooster):
    def predict(self, features: np.ndarray, num_threads: int = 1) -> np.ndarray:
        return np.full(features.shape[0], np.nan)


def artifact(version: str, *, n_products: int = 60, seed: int = 0, booster=None, features=None):
    """A tiny artifact; other versions may have another catalogue (fewer products, other
    co-visitation) so that sessions must be renamed between them."""
    return ModelArtifact(
        path=Path("/nonexistent") / version,
        version=version,
        tables=tiny_catalogue(n_products=n_products, seed=seed),
        booster=booster or LinearBooster(seed=1 + seed),
        metadata={"feature_names": list(features or FEATURE_NAMES)},
    )


def models_dir(tmp_path: Path, *versions: str) -> Path:
    """A registry directory whose LATEST names the first version (the artifacts themselves are
    made by the test's loader, not read from disk)."""
    for version in versions:
        (tmp_path / version).mkdir()
        (tmp_path / version / "metadata.json").write_text("{}")
    point_latest(tmp_path, versions[0])
    return tmp_path


class Reloading:
    """A harness whose worker serves ``v1`` from a models directory and loads other versions
    from ``self.artifacts``."""

    def __init__(self, tmp_path: Path, **settings) -> None:
        self.dir = models_dir(tmp_path, "v1", "v2", "bad")
        self.h = Harness(models_dir=self.dir, model_poll_s=POLL_S, **settings)
        self.artifacts = {
            "v1": artifact("v1"),
            "v2": artifact("v2", n_products=50, seed=3),
            "bad": artifact("bad", booster=NaNBooster()),
        }
        self.loads: list[str] = []

    def load(self, version: str) -> ModelArtifact:
        self.loads.append(version)
        return self.artifacts[version]

    def worker(self) -> Worker:
        h = self.h
        w = Worker(
            h.settings,
            self.artifacts["v1"],
            h.log,
            consumer_factory=h.consumer,
            producer_factory=h.producer,
            clock=h.clock,
            loader=self.load,
        )
        h.main = h.consumers[0]
        h.main.schedule("assign", PARTITIONS)
        return w


def drive(w: Worker, h: Harness, after_batch=lambda n: None) -> int:
    """The loop of ``Worker.run`` without its shutdown (which drops every session): consume,
    process, check the models between batches; ``after_batch(n)`` after the n-th batch."""
    w._subscribe()
    n = 0
    idle = 0
    while True:
        messages = w.consumer.consume(h.settings.max_batch_size, timeout=0.001)
        restoring = w.restorer is not None and bool(w.restorer.restoring)
        w._step_restore()  # gained partitions stay paused until their sessions are restored
        if not messages:
            w._settle()  # as the loop does when nothing comes: the last batch's acks
            idle += 1
            if restoring and idle < 100:
                continue
            return n
        idle = 0
        w.process(messages)
        n += 1
        after_batch(n)
        w._check_models()


def swap_now(w: Worker, h: Harness) -> None:
    """Let the next poll happen, and wait for the background preparation it starts."""
    h.clock.advance(POLL_S)
    w._check_models(wait=True)


def versions_answered(h: Harness) -> list[tuple[str, int, int, str]]:
    """(user, partition, offset, model_version) of each suggestion, in log order."""
    codec = codec_for("ProductSuggestion")
    out = []
    for m in h.broker.messages("suggestions"):
        r = codec.decode(m.value())
        out.append((r["user_id"], r["source_partition"], r["source_offset"], r["model_version"]))
    return out


def metric(w: Worker, name: str, **labels) -> float | None:
    return w.metrics.registry.get_sample_value(name, labels)


def product_history(w: Worker) -> dict[str, list[str]]:
    """Every held user's session as product ids (whichever version's store holds it)."""
    out = {}
    for lane in w.models.lanes():
        live = lane.recommender.live
        for user in lane.sessions.users():
            out[user] = [live.product_id_of(i) for i in lane.sessions.get(user).items]
    return out


def sent_history(h: Harness, history: int = 20) -> dict[str, list[str]]:
    codec = codec_for("BrowsingEvent")
    out: dict[str, list[str]] = {}
    for (_, _), value in sorted(h.sent.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if value == b"not avro":
            continue
        r = codec.decode(value)
        out.setdefault(r["user_id"], []).append(r["product_id"])
    return {u: items[-history:] for u, items in out.items()}


def test_a_promotion_swaps_between_batches_and_every_input_is_answered_once(tmp_path):
    r = Reloading(tmp_path, max_batch_size=30)
    h = r.h
    h.write_events(150, cold_every=7)
    w = r.worker()
    before_swap: set[tuple[int, int]] = set()

    def after_batch(n: int) -> None:
        if n == 2:
            w._settle()  # the batch's answers acknowledged (overlapped)
            before_swap.update(h.answered())
            registry.publish(r.dir, "v2", why="test")
            swap_now(w, h)

    batches = drive(w, h, after_batch)
    answers = versions_answered(h)
    assert batches == 5
    assert sorted((p, o) for _, p, o, _ in answers) == sorted(h.sent)  # each input exactly once
    assert h.in_user_order()
    cut = len(before_swap)
    assert cut == 60
    assert {v for _, p, o, v in answers if (p, o) in before_swap} == {"v1"}
    assert {v for _, p, o, v in answers if (p, o) not in before_swap} == {"v2"}
    # The swap is visible: metric, model info (the old series gone), log line.
    assert metric(w, "worker_model_reloads_total", outcome="swapped") == 1
    assert metric(w, "worker_model_info", version="v2", role="champion") == 1
    assert metric(w, "worker_model_info", version="v1", role="champion") is None
    (swapped,) = h.log.fields("model_swapped")
    assert swapped["before"]["champion"] == "v1" and swapped["after"]["champion"] == "v2"
    assert metric(w, "worker_suggestions_total", model_version="v1") == cut
    assert metric(w, "worker_suggestions_total", model_version="v2") == 150 - cut
    # New products are counted per version's catalogue (a promotion once made the counter go
    # backwards, which prometheus_client refuses: the worker crashed).
    added = {lane.version: lane.recommender.live.added_total for lane in w.models.lanes()}
    assert added["v1"] > 0 and added["v2"] > 0
    assert metric(w, "worker_new_products_total") == added["v1"] + added["v2"]
    # Sessions moved lazily into v2's catalogue, products intact (v2 lacks p050..p059: those
    # became new products of its live catalogue); v1 drains while it holds users who have
    # not come back since (the fake consumer reads partition by partition).
    assert product_history(w) == sent_history(h)
    users_before = {u for u, p, o, _ in answers if (p, o) in before_swap}
    users_after = {u for u, p, o, _ in answers if (p, o) not in before_swap}
    assert users_before & users_after and users_before - users_after
    assert metric(w, "worker_sessions_migrated_total") == len(users_before & users_after)
    assert [lane.version for lane in w.models.lanes()] == ["v2", "v1"]
    assert set(w.models.lane("v1").sessions.users()) == users_before - users_after
    # Its last users' partition is revoked: v1 holds no one and is dropped after the next batch.
    # Its objects were frozen out of the collector's walk at the swap (worker.ops.heap); a
    # reference cycle among them (as a booster holds) must still be returned once it is dropped.
    v1_lane = w.models.lane("v1")
    v1_lane.cycle = v1_lane  # type: ignore[attr-defined]
    v1_alive = weakref.ref(v1_lane)
    del v1_lane
    w.heap.freeze()
    w._forget([TopicPartition(EVENTS, 0)], "partitions_revoked")
    h.write_events(3)
    drive(w, h)
    assert [lane.version for lane in w.models.lanes()] == ["v2"]
    (drained,) = h.log.fields("model_drained")
    assert drained["versions"] == ["v1"] and drained["gc_reclaim_ms"] >= 0
    assert v1_alive() is None
    assert w.artifact.version == "v2" and r.loads == ["v2"]
    w._close()


def test_a_challenger_answers_its_share_of_users_each_user_on_one_version(tmp_path):
    r = Reloading(tmp_path, max_batch_size=40)
    h = r.h
    h.write_events(200)
    w = r.worker()
    first: set[tuple[int, int]] = set()

    def after_batch(n: int) -> None:
        if n == 1:
            w._settle()  # the batch's answers acknowledged (overlapped)
            first.update(h.answered())
            registry.set_challenger(r.dir, "v2", 0.5, why="test")
            swap_now(w, h)

    drive(w, h, after_batch)
    answers = versions_answered(h)
    assert sorted((p, o) for _, p, o, _ in answers) == sorted(h.sent)
    routing = Routing("v1", "v2", 0.5)
    later = [(u, v) for u, p, o, v in answers if (p, o) not in first]
    assert len(later) == 160
    for user, version in later:
        assert version == routing.version_for(user)
    assert {v for _, v in later} == {"v1", "v2"}  # 9 users: both sides
    assert metric(w, "worker_model_info", version="v1", role="champion") == 1
    assert metric(w, "worker_model_info", version="v2", role="challenger") == 1
    routed = {v: metric(w, "worker_events_routed_total", model_version=v) for v in ("v1", "v2")}
    assert routed["v1"] + routed["v2"] == 200
    # Each user's session lives in the store of the version that answers it.
    for lane in w.models.lanes():
        assert all(routing.version_for(u) == lane.version for u in lane.sessions.users())
    assert product_history(w) == sent_history(h)
    # Every lane's state follows a revocation.
    w._forget([TopicPartition(EVENTS, 1)], "partitions_revoked")
    assert not [u for u in product_history(w) if int(u[1:]) % 3 == 1]
    w._close()


def test_the_session_cap_holds_for_the_sum_of_the_versions_stores(tmp_path):
    """--max-sessions caps what the worker holds, not each version's store: with a challenger
    the two stores together stay within it, the least recently active users evicted, each with
    a tombstone as its last changelog record."""
    from tests.unit.apps.test_serve_loop import GROUP
    from worker.kafka.changelog import changelog_topic

    r = Reloading(tmp_path, max_batch_size=20, max_sessions=4)
    h = r.h
    h.write_events(200)
    w = r.worker()
    held: list[int] = []

    def after_batch(n: int) -> None:
        if n == 1:
            registry.set_challenger(r.dir, "v2", 0.5, why="test")
            swap_now(w, h)
        held.append(sum(len(lane.sessions) for lane in w.models.lanes()))

    drive(w, h, after_batch)
    assert len(w.models.lanes()) == 2
    assert max(held) == 4  # 9 users: without the shared cap each store would hold up to 4
    kept = {u for lane in w.models.lanes() for u in lane.sessions.users()}
    last: dict[bytes, bytes | None] = {}
    for m in h.broker.messages(changelog_topic(GROUP)):
        if m.key() != b"\x00checkpoint":
            last[m.key()] = m.value()
    evicted = {key.decode() for key, value in last.items() if value is None}
    assert evicted and not evicted & kept
    assert {key.decode() for key, value in last.items() if value is not None} == kept
    w._close()


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (artifact("bad", booster=NaNBooster()), "not finite"),
        (artifact("bad", features=[*FEATURE_NAMES[:-1], "other"]), "feature names"),
    ],
)
def test_a_model_that_fails_its_smoke_check_leaves_the_old_one_serving(tmp_path, bad, reason):
    r = Reloading(tmp_path, max_batch_size=30)
    r.artifacts["bad"] = bad
    h = r.h
    h.write_events(90)
    w = r.worker()

    def after_batch(n: int) -> None:
        if n == 1:
            registry.publish(r.dir, "bad", why="test")
            swap_now(w, h)
            assert w.health.ready()[0]
        if n == 2:
            h.clock.advance(POLL_S)  # the same files again: not retried
            w._check_models(wait=True)

    drive(w, h, after_batch)
    answers = versions_answered(h)
    assert sorted((p, o) for _, p, o, _ in answers) == sorted(h.sent)
    assert {v for *_, v in answers} == {"v1"}
    assert metric(w, "worker_model_reloads_total", outcome="rejected") == 1
    assert metric(w, "worker_model_reloads_total", outcome="swapped") is None
    assert metric(w, "worker_model_info", version="v1", role="champion") == 1
    (rejected,) = h.log.fields("model_rejected")
    assert rejected["version"] == "bad" and reason in rejected["reason"]
    assert w.health.ready()[0] and r.loads == ["bad"]
    # A later good change is taken.
    registry.publish(r.dir, "v2", why="fixed")
    swap_now(w, h)
    assert w.models.routing.champion == "v2"
    w._close()


def test_a_pinned_version_ignores_the_pointer_files(tmp_path):
    r = Reloading(tmp_path, model_version="v1")
    registry.set_challenger(r.dir, "v2", 0.5, why="test")
    h = r.h
    h.write_events(30)
    w = r.worker()
    assert w.watcher is None
    assert w.run(install_signal_handlers=False, max_idle_s=0.0) == 0
    assert {v for *_, v in versions_answered(h)} == {"v1"}
    assert h.log.fields("model_pinned")[0]["version"] == "v1"
    assert r.loads == []


def test_a_challenger_in_the_files_at_start_serves_from_the_first_batch(tmp_path):
    r = Reloading(tmp_path)
    registry.set_challenger(r.dir, "v2", 0.5, why="test")
    h = r.h
    h.write_events(60)
    w = r.worker()
    assert w.models.routing == Routing("v1", "v2", 0.5)
    w.run(install_signal_handlers=False, max_idle_s=0.0)
    for user, _, _, version in versions_answered(h):
        assert version == Routing("v1", "v2", 0.5).version_for(user)


# -- the model set alone -------------------------------------------------------------------------


def lane_of(a: ModelArtifact) -> Loaded:
    recommender = Recommender(a.tables, LightGBMScorer(a.booster), n_candidates=20, top_k=5)
    writer = SuggestionWriter(b"", a.tables.product_ids.tolist(), EVENTS, a.version)
    return Loaded(a, Lane(a.version, recommender, writer, SessionStore(idle_ttl_ms=1000)))


def test_a_session_moves_lazily_by_product_ids_and_its_old_store_drains():
    one, two = lane_of(artifact("v1")), lane_of(artifact("v2", n_products=50, seed=3))
    models = ModelSet(Routing("v1"), {"v1": one})
    live1 = one.lane.recommender.live
    products = ["p003", "p055", "new-x", "p010"]
    for t, product in enumerate(products):
        one.lane.sessions.record("u1", "s", live1.index_of(product), t % 3, 1000 + t, False, 0, t)
    one.lane.sessions.record("u2", "s", 1, 0, 1000, False, 1, 0)
    models.swap(Routing("v2"), {"v2": two})
    assert [lane.serving for lane in models.lanes()] == [True, False]
    lane = models.lane_for("u1")
    assert lane is two.lane and "u1" not in one.lane.sessions
    moved = two.lane.sessions.get("u1")
    live2 = two.lane.recommender.live
    assert [live2.product_id_of(i) for i in moved.items] == products
    assert (moved.types, moved.offset, moved.partition) == ([0, 1, 2, 0], 3, 0)
    assert one.lane.sessions.drain_forgotten() == []  # moved, not forgotten: no tombstone
    assert models.migrated == 1
    # u2 never comes back: it expires against the partitions' progress seen by v2's lane.
    two.lane.sessions.record("u3", "s", 1, 0, 10_000, False, 1, 5)
    assert models.expire_idle() == 1 and models.prune() == ["v1"]
    assert [lane.version for lane in models.lanes()] == ["v2"]


def test_smoke_check_scores_a_canned_batch():
    a = artifact("v1")
    assert smoke_check("v1", a, LightGBMScorer(a.booster), n_candidates=20, top_k=5) >= 0
    with pytest.raises(ModelRejected, match="not finite"):
        smoke_check("x", a, LightGBMScorer(NaNBooster()), n_candidates=20, top_k=5)


def test_user_buckets_are_stable_numbers():
    # The documented recipe: first 8 bytes of sha256(user id), big-endian, over 2**64.
    import hashlib

    digest = hashlib.sha256(b"u42").digest()
    assert user_bucket("u42") == int.from_bytes(digest[:8], "big") / 2**64


def test_exactly_once_a_swap_lands_between_transactions_and_a_rewind_restores_every_lane(
    tmp_path,
):
    """Exactly-once: a challenger is swapped in after the first transaction; the next one is
    abandoned (its producer stuck), so the worker rewinds and restores the sessions from the
    changelog (into the champion's store; the challenger's users move back on their next event)
    and answers the batch again, maybe by another version than the aborted outputs named. A
    read_committed reader sees every answer once, and no event entered any state twice."""
    r = Reloading(tmp_path, exactly_once=True, max_batch_size=40, transactional_id="worker-0")
    h = r.h

    def stuck_from_second_transaction(producer, n: int) -> None:
        if n > 0:
            return

        def hook() -> None:
            producer.stuck = producer.calls.count("begin_transaction") >= 2
            producer.during_flush.append(hook)

        producer.during_flush.append(hook)

    h.setup_producer = stuck_from_second_transaction
    h.write_events(120)
    w = r.worker()

    def after_batch(n: int) -> None:
        if n == 1:
            registry.set_challenger(r.dir, "v2", 0.5, why="test")
            swap_now(w, h)

    drive(w, h, after_batch)
    assert len(h.log.fields("batch_rewound")) == 1
    assert sorted(h.answered()) == sorted(h.sent)  # each answer visible exactly once
    assert product_history(w) == sent_history(h)
    codec = codec_for("BrowsingEvent")
    events_of: dict[str, int] = {}
    for value in h.sent.values():
        user = codec.decode(value)["user_id"]
        events_of[user] = events_of.get(user, 0) + 1
    for lane in w.models.lanes():
        for user in lane.sessions.users():
            assert lane.sessions.get(user).n_events == events_of[user]
    w._close()
