"""The latency phase's pure parts (``devtools.bench.latency``): schedule, paced sending,
histogram, summaries, load points; and the report's latency figures.

No broker, no worker.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from devtools.bench import latency as L
from devtools.bench import runner


def test_schedule_is_t0_plus_i_over_rate():
    schedule = L.build_schedule(5, 4.0, 1_000_000_000)
    assert schedule.dtype == np.int64
    assert schedule.tolist() == [1_000_000_000 + k * 250_000_000 for k in range(5)]
    third = L.build_schedule(4, 3.0, 0).tolist()
    assert third == [0, 333_333_333, 666_666_667, 1_000_000_000]  # rounded, not drifting
    with pytest.raises(ValueError):
        L.build_schedule(3, 0.0, 0)


def test_encoded_events_carry_their_intended_time_and_a_unique_id():
    events = [{"user_id": f"u{k}", "event_id": "orig", "event_time": 1} for k in range(3)]
    schedule = L.build_schedule(3, 2.0, 5_000_000_000)
    seen: list[dict] = []

    def encode(record):
        seen.append(record)
        return repr(record).encode()

    out = L.encode_scheduled(events, schedule, "run-p0", encode)
    assert [k for k, _ in out] == [b"u0", b"u1", b"u2"]
    assert [r["event_time"] for r in seen] == [5000, 5500, 6000]
    assert [r["event_id"] for r in seen] == ["run-p0-0", "run-p0-1", "run-p0-2"]
    assert events[0]["event_id"] == "orig"  # the templates are not modified


class FakeClock:
    """A clock that advances only when slept on (plus ``per_call_ns`` per reading)."""

    def __init__(self, start_ns: int, per_call_ns: int = 0) -> None:
        self.now = start_ns
        self.per_call_ns = per_call_ns
        self.sleeps: list[float] = []

    def __call__(self) -> int:
        self.now += self.per_call_ns
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += int(seconds * 1e9)


def test_send_scheduled_sends_each_event_when_due_in_batches_and_never_early():
    schedule = L.build_schedule(10, 2000.0, 1_000_000_000)  # one event every 0.5 ms
    clock = FakeClock(999_000_000)
    produced: list[tuple[bytes, int, int]] = []
    polls = []
    messages = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(10)]

    sent = L.send_scheduled(
        lambda k, v, ts: produced.append((v, ts, clock.now)),
        lambda: polls.append(clock.now),
        messages,
        schedule,
        clock_ns=clock,
        sleep=clock.sleep,
    )
    assert [v for v, _, _ in produced] == [m[1] for m in messages]  # in order, all of them
    assert [ts for _, ts, _ in produced] == [t // 1_000_000 for t in schedule.tolist()]
    assert all(s >= t for s, t in zip(sent, schedule.tolist(), strict=True))  # never early
    assert all(s >= L.MIN_SLEEP_S for s in clock.sleeps)  # sleeps of at least 1 ms
    assert len(polls) < 10  # one poll per batch, not per event
    lag = L.lag_summary(sent, schedule.tolist())
    assert lag["count"] == 10 and 0 <= lag["max_ms"] <= 1.5


def test_a_stalled_generator_sends_late_and_its_lag_shows():
    schedule = L.build_schedule(4, 1000.0, 0)
    clock = FakeClock(0)
    stalled = {"done": False}

    def produce(key, value, ts):
        if not stalled["done"]:  # the first send takes 50 ms
            stalled["done"] = True
            clock.now += 50_000_000

    sent = L.send_scheduled(produce, lambda: None, [(b"k", b"v")] * 4, schedule, clock_ns=clock,
                            sleep=clock.sleep)  # fmt: skip
    lag = L.lag_summary(sent, schedule.tolist())
    assert lag["max_ms"] == pytest.approx(49.0)  # event 1 was due at 1 ms, sent at 50 ms
    assert lag["p50_ms"] > 40


def test_histogram_buckets_are_log_spaced_and_count_every_value():
    edges = L.BUCKET_EDGES_MS
    assert edges[0] == 0.0 and edges[1] == 1.0 and edges[-1] == 100_000.0
    assert edges[11] == pytest.approx(10.0) and edges[21] == pytest.approx(100.0)
    hist = L.histogram([-0.5, 0.2, 1.0, 9.99, 10.0, 55.0, 250_000.0])
    counts = hist["counts"]
    assert sum(counts) == 7
    assert counts[0] == 2  # below 1 ms (a negative value counts there too)
    assert counts[1] == 1  # [1, 1.259)
    assert counts[10] == 1  # [7.94, 10)
    assert counts[11] == 1  # [10, 12.6)
    assert counts[-1] == 1  # 100 s and more
    assert L.histogram_percentile(hist, 50) == pytest.approx(edges[11])  # 9.99: below 10 ms
    assert L.histogram_percentile(L.histogram([]), 99) is None


def test_summary_and_achieved_rate():
    values = list(range(1, 101))
    s = L.summary(values)
    assert s["count"] == 100 and s["max_ms"] == 100.0
    assert s["p50_ms"] == pytest.approx(50.5) and s["p99_ms"] == pytest.approx(99.0)
    assert L.summary([]) == {"count": 0}
    assert L.achieved_rate([1000, 1500, 2000]) == 2.0
    assert L.achieved_rate([1000]) is None


def test_others_cpu_is_the_busy_cores_minus_the_measured_processes():
    shares = {"worker": 0.5, "generator": 0.1, "broker": 0.3}
    assert L.others_cpu(shares, {"cpu0": 0.9, "cpu1": 0.7}) == pytest.approx(0.7)
    assert L.others_cpu(shares, {"cpu0": 0.4, "cpu1": 0.4}) == 0.0  # never negative
    assert L.others_cpu({"worker": None}, {"cpu0": 1.0}) is None
    assert L.others_cpu(shares, {}) is None
    ticks = L.cpu_ticks()
    if ticks:  # Linux
        assert all(0 <= busy <= total for busy, total in ticks.values())


def test_load_points_fractions_then_absolute_rates_merged_when_equal():
    points = L.load_points(
        8000.0, [0.25, 0.5, 0.75], [(150.0, "MLServer plain's rate"), (4000.4, "Quix's rate")]
    )
    assert points == [
        ("25 % of max", 2000.0, 0.25),
        ("50 % of max; Quix's rate", 4000.0, 0.5),
        ("75 % of max", 6000.0, 0.75),
        ("MLServer plain's rate", 150.0, None),
    ]
    assert L.load_points(None, [0.5], [(300.0, "x")]) == [("x", 300.0, None)]
    assert L.load_points(None, [0.5], []) == []


def test_pinning_plan_and_description():
    pin = L.Pinning(broker_pid=None).plan()
    if len(os.sched_getaffinity(0)) < 2:
        assert not pin.possible and "not possible" in pin.describe()
    else:
        assert pin.possible and pin.generator_cpu != pin.worker_cpu
        assert "not pinned" in pin.describe()  # no own broker


def _point(mode, fraction, rate, p99):
    return {
        "mode": mode,
        "load": f"{fraction}",
        "fraction": fraction,
        "offered_per_s": rate,
        "events": 10,
        "answered": 10,
        "latency_acknowledged": {"p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": p99, "max_ms": 9.0},
        "generator_lag": {"p99_ms": 0.5, "max_ms": 1.0},
        "cpu_share": {"worker": 0.5},
        "peak_rss_mib": 200.0,
    }


def test_figures_targets_and_table_of_the_latency_points():
    results = {
        "latency": {
            "pinning": "pinned: ...",
            "points": [
                _point("pinned", 0.25, 1000.0, 10.0),
                _point("pinned", 0.5, 2000.0, 40.0),
                _point("unpinned", 0.5, 2000.0, 80.0),
                _point("unpinned", None, 150.0, 5.0),
            ],
        },
        "peers": {
            "mlserver": {"plain": {"latency_at_half": {"offered_per_s": 150.0, "p99_ms": 20.0}}}
        },  # fmt: skip
    }
    f = runner.derive_figures(results)
    assert f["latency_pinned_p99_ms"] == 40.0 and f["latency_unpinned_p99_ms"] == 80.0
    assert f["latency_p99_ms"] == 80.0 and f["latency_mode"] == "unpinned"
    assert f["latency_offered_per_s"] == 2000.0
    assert f["ratio_p99_same_rate_vs_mlserver"] == 0.25
    assert f["peak_rss_per_process_mib"] == 200.0
    target = next(t for t in runner.evaluate_targets(f) if t["figure"] == "latency_pinned_p99_ms")
    assert target["status"] == "met" and target["aside"] == "unpinned: 80.0 ms"
    table = "\n".join(runner.format_latency_table(results["latency"]))
    assert table.count("\n  pinned ") == 2 and table.count("\n  unpinned ") == 2


def test_quix_modes_with_their_scorers_and_the_same_scorer_ratio():
    assert runner.mode_scorer("batch-sink") == ("batch-sink", "booster")
    assert runner.mode_scorer("batch-sink:lleaves") == ("batch-sink", "lleaves")
    with pytest.raises(ValueError, match="booster or lleaves"):
        runner.mode_scorer("batch-sink:onnx")
    quix = {
        "per-message": {"scorer": "booster", "throughput_per_s": 300.0},
        "batch-sink": {"scorer": "booster", "throughput_per_s": 1000.0},
        "batch-sink:lleaves": {"scorer": "lleaves", "throughput_per_s": 2500.0},
    }
    results = {
        "figures": {},
        "throughput_1p": {"throughput_per_s": 6000.0, "scoring_backend": ["lleaves"]},
        "peers": {
            "quix": quix,
            "mlserver": {
                "plain": {"scorer": "booster", "max_sustained_per_s": 500.0},
                "adaptive-batching:lleaves": {"scorer": "lleaves", "max_sustained_per_s": 1500.0},
            },
        },
    }
    f = runner.derive_figures(results)
    assert f["mlserver_best_per_s"] == 500.0  # as configured by its docs: its LightGBM runtime
    assert f["mlserver_same_scorer_per_s"] == 1500.0
    assert f["ratio_throughput_vs_mlserver_same_scorer"] == 4.0
    assert f["quix_best_per_s"] == 2500.0
    assert f["quix_same_scorer_per_s"] == 2500.0
    assert f["ratio_throughput_vs_quix_same_scorer"] == pytest.approx(6000 / 2500, abs=0.01)
    assert runner.peer_title("batch-sink:lleaves", quix["batch-sink:lleaves"]) == (
        "batch-sink (lleaves)"
    )
    assert runner.peer_title("per-message", quix["per-message"]) == "per-message (Booster.predict)"
    # a worker that served with LightGBM has no equal-scorer ratio against the compiled peer
    results["throughput_1p"]["scoring_backend"] = ["lightgbm"]
    lightgbm = runner.derive_figures(results)
    assert "ratio_throughput_vs_quix_same_scorer" not in lightgbm
    assert "ratio_throughput_vs_mlserver_same_scorer" not in lightgbm


def test_every_maximum_by_the_one_rule_and_the_ratios_with_equal_scorers():
    def swept(scorer, rate):
        return {"scorer": scorer, "max_offered_per_s": rate, "throughput_per_s": 10 * rate}

    results = {
        "throughput_1p": {"throughput_per_s": 99999.0, "scoring_backend": ["lleaves"]},
        "sweep": {
            "unpinned": {
                "max_offered_per_s": 6000.0,
                "steps": [{"scoring_backend": "lleaves", "kept_up": True}],
            },
            "pinned": {"max_offered_per_s": 4000.0, "steps": []},
        },
        "peers": {
            "quix": {
                "per-message": swept("booster", 1000.0),
                "batch-sink:lleaves": swept("lleaves", 2400.0),
                "batch-sink": {"scorer": "booster", "throughput_per_s": 90000.0},  # not swept
            },
            "mlserver": {
                "plain": swept("booster", 200.0),
                "adaptive-batching": swept("booster", 300.0),
                "adaptive-batching:lleaves": swept("lleaves", 1200.0),
                "config": {},
            },
        },
    }
    f = runner.derive_figures(results)
    assert (f["max_unpinned_per_s"], f["max_pinned_per_s"]) == (6000.0, 4000.0)
    assert f["quix_max_per_s"] == 2400.0 and f["quix_max_same_scorer_per_s"] == 2400.0
    assert f["mlserver_max_per_s"] == 300.0  # its own runtime, as its docs configure it
    assert f["mlserver_max_same_scorer_per_s"] == 1200.0
    assert f["ratio_max_vs_quix_same_scorer"] == 2.5 and f["ratio_max_vs_quix"] == 2.5
    assert f["ratio_max_vs_mlserver"] == 20.0 and f["ratio_max_vs_mlserver_same_scorer"] == 5.0
    targets = {t["figure"]: t["status"] for t in runner.evaluate_targets(f)}
    assert targets["ratio_max_vs_mlserver"] == "met"
    assert targets["ratio_max_vs_quix_same_scorer"] == "met"
    sweeps = "\n".join(runner.format_sweeps({**results, "figures": f}))
    assert "worker, unpinned: " in sweeps and "-> max 6,000/s" in sweeps
    # A worker whose sweep served LightGBM gets no equal-scorer ratio.
    results["sweep"]["unpinned"]["steps"] = [{"scoring_backend": "lightgbm"}]
    lightgbm = runner.derive_figures(results)
    assert "ratio_max_vs_quix_same_scorer" not in lightgbm
    assert lightgbm["ratio_max_vs_quix"] == 2.5


def test_the_generators_heap_is_frozen_only_while_it_sends():
    import gc

    load = [{"i": i} for i in range(5000)]
    with L.frozen_heap():
        assert gc.get_freeze_count() >= len(load)
        walked = {id(o) for o in gc.get_objects()}
        assert id(load[0]) not in walked
    assert gc.get_freeze_count() == 0
