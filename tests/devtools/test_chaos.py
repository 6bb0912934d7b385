"""The fault-injection harness, small variant, every scenario in both modes (CI).

The full variant is `worker-dev chaos --events 200000` (README, section "Delivery under faults").
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from devtools.chaos import MODES, SCENARIOS, format_memory, format_table, run_chaos

pytestmark = pytest.mark.kafka

CI_EVENTS = 6000
CI_FAULT_S = 12.0  # broker freeze / output throttle length (30 s in the full run)
#: Replacing workers under new transactional ids matters to exactly-once (an open transaction
#: nobody fences); at-least-once takes the same path as kill9 there, so CI runs it once.
CI_SKIP = frozenset({("replace", "at-least-once"), ("killall", "at-least-once")})


@pytest.fixture(scope="module")
def default_catalogue_model(tmp_path_factory):
    """A small model over the simulator's default catalogue (the harness's input)."""
    from worker.apps.simulate import SimulatorSettings, write_history
    from worker.apps.train import TrainSettings, train

    root = tmp_path_factory.mktemp("chaos-model")
    write_history(root / "history", SimulatorSettings(n_users=4000), days=0.5)
    settings = replace(TrainSettings(), num_trees=30, num_leaves=15, max_train_queries=3000)
    train(root / "history", root / "models", settings)
    return root / "models"


def test_every_scenario_loses_nothing_and_exactly_once_duplicates_nothing(
    default_catalogue_model, tmp_path
):
    """kill -9, replacement under a new transactional id, kill -9 of every worker, a worker
    frozen past the session timeout (a zombie), kill -9 during a rebalance, broker restart and
    broker SIGKILL, 1->3->2 scaling, SIGTERM-all, all mixed, a frozen broker, a throttled
    output topic and a soak: zero missing answers in both modes, duplicates within
    the in-flight bound (at-least-once) or zero (exactly-once), per-user order kept, every bad
    record dead-lettered once, exactly-once suggestions identical to an undisturbed run's
    (session state restored, not reset), workers live throughout the freeze and the throttle
    and fetching again by themselves, worker memory bounded around the freeze and the
    throttle (the backlog stays in Kafka) and over the soak, suggestions visible to
    read_committed readers within the bound after every worker fault, and every line the
    workers wrote a JSON object."""
    results = run_chaos(
        scenarios=list(SCENARIOS),
        modes=list(MODES),
        n_events=CI_EVENTS,
        fault_s=CI_FAULT_S,
        models_dir=default_catalogue_model,
        work_dir=tmp_path,
        bootstrap=None,  # the harness runs its own broker: it must be able to restart it
        skip=CI_SKIP,
    )
    table = format_table(results) + "\n" + format_memory(results)
    print(table)
    assert len(results) == len(SCENARIOS) * len(MODES) - len(CI_SKIP)
    for r in results:
        assert r.faults > 0 or r.scenario == "soak", table
        assert r.failures == [], table
        if r.scenario in ("freeze", "slow", "soak"):
            (window,) = r.memory
            assert window.during_mb > 0 and window.after_mb > 0 and window.stalled == 0, table
        if r.scenario == "slow":
            # The throttle bit: input piled up in Kafka while the output was slow.
            assert r.memory[0].backlog > max(0, r.memory[0].backlog_before), table
