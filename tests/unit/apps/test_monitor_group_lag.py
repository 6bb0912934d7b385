"""The monitor's broker-side lag poller: gauges from a probe, failures counted and logged once."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from worker.apps.monitor import GroupLagPoller
from worker.kafka.group_lag import GroupLag
from worker.ops.metrics import MonitorMetrics


class _Probe:
    def __init__(self, answers):
        self.answers = list(answers)

    def probe(self) -> GroupLag:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class _Log:
    def __init__(self):
        self.lines = []

    def warning(self, event, **fields):
        self.lines.append(("warning", event))

    def info(self, event, **fields):
        self.lines.append(("info", event))


def _value(metrics: MonitorMetrics, name: str, **labels) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_poller_exports_lag_and_reports_failures_once() -> None:
    timeout = KafkaException(KafkaError(KafkaError._TIMED_OUT))
    probe = _Probe(
        [
            GroupLag({0: 5, 1: 0}, members=2, state="STABLE"),
            timeout,
            timeout,
            GroupLag({0: 0, 1: 7}, members=0, state="EMPTY"),
        ]
    )
    metrics, log = MonitorMetrics(), _Log()
    poller = GroupLagPoller(probe, metrics, log, interval_s=1.0)  # type: ignore[arg-type]

    poller.poll_once()
    assert _value(metrics, "monitor_worker_group_lag", partition="0") == 5
    assert _value(metrics, "monitor_worker_group_lag_total") == 5
    assert _value(metrics, "monitor_worker_group_members") == 2
    first_probe = _value(metrics, "monitor_worker_group_lag_probe_timestamp_seconds")
    assert first_probe is not None and first_probe > 0

    poller.poll_once()
    poller.poll_once()
    assert _value(metrics, "monitor_worker_group_lag_probe_failures_total") == 2
    assert log.lines == [("warning", "worker_group_lag_unavailable")]  # once, not per probe
    assert _value(metrics, "monitor_worker_group_lag_total") == 5  # last known value kept

    poller.poll_once()
    assert log.lines[-1] == ("info", "worker_group_lag_available")
    assert _value(metrics, "monitor_worker_group_lag", partition="1") == 7
    assert _value(metrics, "monitor_worker_group_lag_total") == 7
    assert _value(metrics, "monitor_worker_group_members") == 0


class _ClosingProbe(_Probe):
    def __init__(self, answers):
        super().__init__(answers)
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def test_stop_closes_the_probe_once_its_thread_has_finished() -> None:
    probe = _ClosingProbe([GroupLag({0: 1}, members=1, state="STABLE")] * 3)
    poller = GroupLagPoller(probe, MonitorMetrics(), _Log(), interval_s=60.0)  # type: ignore[arg-type]
    poller.start()
    poller.stop(wait_s=5.0)
    assert probe.closed == 1
    assert not poller._thread.is_alive()
