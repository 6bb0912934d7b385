"""The model lifecycle end to end over the real broker (issue: a model that learns from the shop
it serves). A worker serves v1 and the monitor measures it; the live simulator runs the shop;
the shop then shifts (another seed and a larger catalogue: a new product range, other tastes);
a model trained on an export of the topics goes live as a 50 % challenger by hot reload, is
promoted, then rolled back, all through the registry's files while events flow. Checked: the
worker is never restarted, every valid event is answered exactly once, each phase is answered by
the versions the registry names (each user by one version during the experiment), and the
monitor reports figures per version for both."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest

from devtools.localkafka import free_ports
from tests.helpers import cli_args, read_all, spawn, stop
from tests.integration.test_end_to_end import wait_ready
from tests.integration.test_hot_reload import pause_around
from worker.apps.train import TrainSettings, train
from worker.config import KafkaSettings
from worker.core.routing import Routing
from worker.kafka.admin import ensure_topics
from worker.model import registry
from worker.wire.codec import codec_for

pytestmark = pytest.mark.kafka

SPEEDUP = 20.0
RATE = 150.0  # events/s
PHASE_S = 8.0
SHARE = 0.5
# The fixture model's simulated shop (tests/conftest.py TEST_SIM), then the shifted one.
SHOP = ["--products", "800", "--categories", "20", "--users", "60000", "--seed", "3"]
SHIFTED = ["--products", "1200", "--categories", "20", "--users", "60000"]  # + a seed per phase


class _Log:
    def info(self, *a, **k):
        pass

    warning = info


def simulate(bootstrap: str, topics, shop: list[str], log: Path, duration_s: float) -> None:
    """The live simulator for ``duration_s`` (blocking): events and purchases, timed now."""
    proc = spawn(
        [
            "simulate",
            "--produce",
            *cli_args(bootstrap, topics),
            *shop,
            "--speedup",
            f"{SPEEDUP:g}",
            "--max-rate",
            f"{RATE:g}",
            "--duration-s",
            f"{duration_s:g}",
        ],
        log,
    )
    assert proc.wait(timeout=duration_s + 60) == 0, log.read_text()[-2000:]


def test_retrained_from_the_topics_challenged_promoted_and_rolled_back_live(
    kafka_bootstrap, topics, trained_models_dir, tmp_path
):
    models = tmp_path / "models"
    shutil.copytree(trained_models_dir, models)
    v1 = registry.serving_state(models).champion
    assert v1 is not None
    ensure_topics(KafkaSettings(kafka_bootstrap), topics, _Log())
    worker_port, monitor_port = free_ports(2)
    worker_log, monitor_log = tmp_path / "worker.log", tmp_path / "monitor.log"
    common = cli_args(kafka_bootstrap, topics)
    worker = spawn(
        ["run", *common, "--models-dir", str(models), "--group-id", f"{topics.events}-w"]
        + ["--metrics-port", str(worker_port), "--model-poll-s", "0.5"],
        worker_log,
    )
    monitor = spawn(
        ["monitor", *common, "--models-dir", str(models), "--group-id", f"{topics.events}-m"]
        + ["--attribution-window-s", f"{1800 / SPEEDUP:g}", "--window-s", "5"]
        + ["--metrics-port", str(monitor_port), "--worker-group-id", f"{topics.events}-w"],
        monitor_log,
    )
    changes: dict[str, int] = {}
    try:
        assert wait_ready(worker_port), "the worker never reported ready (/readyz)"
        started_ms = time.time_ns() // 1_000_000
        # Phase 1: v1 serves the shop it was trained on.
        simulate(kafka_bootstrap, topics, SHOP, tmp_path / "sim1.log", PHASE_S)
        # The shop shifts; a model is retrained from what the topics hold so far.
        simulate(kafka_bootstrap, topics, [*SHIFTED, "--seed", "4"], tmp_path / "sim2.log", PHASE_S)
        export = tmp_path / "export"
        args = ["dataset", "export", "--out", str(export), *common]
        args += ["--since", str(started_ms - 60_000), "--until", str(time.time_ns() // 1_000_000)]
        exporter = spawn(args, tmp_path / "export.log")
        assert exporter.wait(timeout=120) == 0, (tmp_path / "export.log").read_text()[-2000:]
        small = replace(
            TrainSettings(),
            num_trees=20,
            num_leaves=7,
            max_train_queries=2000,
            min_data_in_leaf=20,
            publish=False,
        )
        _, metadata = train(export, models, small)
        v2 = str(metadata["version"])
        assert metadata["dataset_source"]["kind"]  # trained on the topics, and says so
        # Phase 2: the retrained model challenges v1 for half of the users.
        registry.set_challenger(models, v2, SHARE, why="lifecycle test: retrained on the topics")
        changes["challenger"] = time.time_ns() // 1_000_000
        simulate(kafka_bootstrap, topics, [*SHIFTED, "--seed", "5"], tmp_path / "sim3.log", PHASE_S)
        # Phase 3: promoted for everyone.
        registry.promote(models, why="lifecycle test")
        changes["promote"] = time.time_ns() // 1_000_000
        simulate(kafka_bootstrap, topics, [*SHIFTED, "--seed", "6"], tmp_path / "sim4.log", PHASE_S)
        # Phase 4: rolled back: v1 champion, v2 challenger for half, exactly as before.
        restored = registry.rollback(models, why="lifecycle test")
        assert restored == registry.ServingState(v1, v2, SHARE)
        changes["rollback"] = time.time_ns() // 1_000_000
        simulate(kafka_bootstrap, topics, [*SHIFTED, "--seed", "7"], tmp_path / "sim5.log", PHASE_S)
        time.sleep(8)  # the last windows close (idle partitions count as caught up)
    finally:
        worker_exit, monitor_exit = stop(worker), stop(monitor)
    assert (worker_exit, monitor_exit) == (0, 0)

    event_codec, suggestion_codec = codec_for("BrowsingEvent"), codec_for("ProductSuggestion")
    events = [event_codec.decode(m.value()) for m in read_all(kafka_bootstrap, topics.events, 6)]
    records = [
        suggestion_codec.decode(m.value())
        for m in read_all(kafka_bootstrap, topics.suggestions, 6, expect=len(events))
    ]
    assert len({e["event_id"] for e in events}) == len(events)  # every phase its own events
    answered = [r["event_id"] for r in records]
    assert len(answered) == len(set(answered)), "an event answered twice"
    assert {e["event_id"] for e in events} == set(answered), "an event unanswered"

    # Never restarted: one start, one stop in the worker's log.
    lines = [json.loads(x) for x in worker_log.read_text().splitlines() if x.startswith("{")]
    assert [x["event"] for x in lines].count("worker_started") == 1
    swaps = [x for x in lines if x["event"] == "model_swapped"]
    assert len(swaps) == 3, [s.get("after") for s in swaps]

    # Each phase answered by the versions the registry named (a poll interval of slack).
    routing = Routing(v1, v2, SHARE)
    slack = 3000

    def phase(lo: int, hi: int) -> list[dict]:
        return [r for r in records if lo + slack <= r["produced_time"] <= hi - slack // 3]

    before = phase(0, changes["challenger"])
    challenged = phase(changes["challenger"], changes["promote"])
    promoted = phase(changes["promote"], changes["rollback"])
    rolled_back = phase(changes["rollback"], 1 << 62)
    assert before and {r["model_version"] for r in before} == {v1}
    assert promoted and {r["model_version"] for r in promoted} == {v2}
    for name, part in (("challenger", challenged), ("rollback", rolled_back)):
        assert {r["model_version"] for r in part} == {v1, v2}, name
        wrong = [r for r in part if r["model_version"] != routing.version_for(r["user_id"])]
        assert not wrong, f"{name}: {len(wrong)} suggestions by the other version"
    times = [r["produced_time"] for r in records]
    pauses = {name: pause_around(times, at) for name, at in changes.items()}

    # The monitor measured both versions, each on its own purchase lines.
    from worker.apps.monitor import report_codec

    codec = report_codec(None, topics.accuracy)
    reports = [codec.decode(m.value()) for m in read_all(kafka_bootstrap, topics.accuracy, 6)]
    assert reports, "no accuracy report"
    last = reports[-1]
    cumulative = {v["model_version"]: v for v in last["versions"]}
    assert {v1, v2} <= set(cumulative), list(cumulative)
    print(
        f"\nlifecycle: {len(events)} events, {len(records)} suggestions; swaps {len(swaps)}; "
        f"longest gap around each change (ms): {pauses}; last report's versions: "
        + json.dumps(cumulative)[:3000]
        + f"; comparison: {last.get('version_comparison')}"
    )
