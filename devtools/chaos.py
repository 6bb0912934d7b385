"""``worker chaos``: a bounded fault-injection harness on a real broker.

Each scenario pre-produces ``events`` simulated browsing events (every 1,000th malformed) to a
fresh 12-partition topic, runs real ``worker run`` processes over them, injects faults when the
group's committed progress crosses set fractions, and waits until every input offset is
committed. Then it reads every suggestion (``read_committed``) and checks:

* **missing**: good input events without a suggestion (must be 0 in both modes);
* **duplicates**: suggestions beyond the first per event (0 in exactly-once mode; at-least-once
  bounds them by what was in flight at the faults);
* **order**: per user, the first suggestion of each event appears in input order;
* **dead-lettered**: malformed inputs in the dead-letter topic (must equal those sent);
* **identical** (exactly-once): every suggestion equals the one an undisturbed exactly-once run
  over the same input made (same products, same scores): session state was restored, not reset.

The input is produced by :class:`devtools.input_feeder.InputFeeder`, which replaces its producer
if librdkafka stops serving one of its partitions (#5430, seen after ``freeze``); the table notes
it when that happens.

Faults: ``kill9`` (SIGKILL a worker mid-batch, restart it under the same transactional id, 3
times), ``replace`` (SIGKILL a worker and start its replacement under a new transactional id, as
a Kubernetes Deployment does after an eviction or a rollout), ``killall`` (SIGKILL every worker
at once, replacements under new transactional ids), ``zombie`` (SIGSTOP a worker, in an open
transaction under exactly-once, for twice the group session timeout, so that its partitions move
on, then SIGCONT it: it must notice it was fenced and rejoin), ``rebalancekill`` (start a third
worker and SIGKILL another the moment the rebalance it causes is under way, then restart that
one), ``broker`` (stop and restart the broker;
workers must ride it out without restarting), ``brokerkill`` (SIGKILL the broker, a crash, and
start it again), ``scale`` (1 -> 3 -> 2 workers), ``sigterm`` (SIGTERM every worker at once,
then restart them), ``mixed`` (several of them).

Recovery of a fault is measured twice, from the fault: **committed** until every input event
that existed when it struck or arrived while it lasted is answered and committed, on every
partition; **visible** until
then and until a ``read_committed`` reader of the suggestions can read past every record that
was written when the fault struck, on every partition (an open transaction of a killed worker
holds them back until it is aborted). Both are in the table; a fault whose visible recovery
exceeds ``VISIBLE_BOUND_S`` fails the scenario.

Bounds (memory is sampled from ``/proc`` twice a second for every worker process):

* ``freeze``: the broker is frozen (SIGSTOP) for ``fault_s`` seconds while input keeps coming
  (it queues in the input producer), then thawed: the broker is unreachable yet its connections
  stay open, the hardest case for timeouts;
* ``slow``: the workers' produce rate is throttled by a broker client quota to a small fraction
  of the input rate for ``fault_s`` seconds: the output topic is slow and a backlog builds;
* ``soak``: no fault, the whole input at the steady rate, idle sessions expiring as event time
  advances.

For these, worker memory must stay bounded: during the fault and the catch-up after it, no
worker's RSS may grow by more than its fetch and produce buffers plus ``MEMORY_SLACK_MB`` over
its RSS when the fault struck (the backlog stays in Kafka), and in a soak the RSS of the last
half of the run may not exceed the first half's peak by more than ``MEMORY_SLACK_MB``.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from devtools.input_feeder import InputFeeder
from worker.apps.simulate import LIVE_START_MS, SimulatorSettings, build, corrupt
from worker.config import KafkaSettings, TopicSettings
from worker.kafka.admin import ensure_topics
from worker.wire.codec import codec_for

SCENARIOS = (
    "kill9",
    "replace",
    "killall",
    "zombie",
    "rebalancekill",
    "broker",
    "brokerkill",
    "scale",
    "sigterm",
    "mixed",
    "freeze",
    "slow",
    "soak",
)
#: Shortest input production time per scenario, so its faults (each takes ~10 s to recover
#: from a kill -9: the group's session timeout) fall mid-stream even on a small input.
MIN_DURATION_S = {
    "kill9": 45.0,
    "replace": 30.0,
    "killall": 30.0,
    "zombie": 45.0,
    "rebalancekill": 35.0,
    "broker": 30.0,
    "brokerkill": 40.0,
    "scale": 30.0,
    "sigterm": 25.0,
    "mixed": 90.0,
}
#: The workers' group session timeout (``worker run --session-timeout-s`` default) and how long
#: ``zombie`` freezes a worker: twice that, so the group gives its partitions away meanwhile.
SESSION_TIMEOUT_S = 10.0
ZOMBIE_FREEZE_S = 2 * SESSION_TIMEOUT_S
#: Default length of a broker freeze or an output throttle.
DEFAULT_FAULT_S = 30.0
#: Produce quota on the workers during ``slow``: about a tenth of what 2,000 events/s need.
SLOW_PRODUCE_BYTES_PER_S = 32 * 1024
#: Worker buffers (``worker run`` defaults, MiB) and the allowance for everything else
#: (interpreter arenas, a batch in flight, librdkafka's own buffers).
FETCH_BUFFER_MB, PRODUCE_BUFFER_MB, MEMORY_SLACK_MB = 16, 32, 64
#: Loop age at which the worker's liveness probe fails (worker.ops.metrics.Health).
STALL_AFTER_S = 30.0
#: Input events per second of the full run, below what two workers answer, so lag stays small
#: and the faults, not a backlog, shape the run.
DEFAULT_RATE = 2000.0
MODES = ("at-least-once", "exactly-once")
#: Most seconds from a worker fault (kill -9, replacement under a new transactional id) to
#: suggestions visible to read_committed readers: the group's session timeout (10 s) to notice
#: the dead member, the broker aborting the dead worker's open transaction (the worker's
#: transaction timeout, 10 s, found by the coordinator's sweep every 10 s,
#: ``transaction.abort.timed.out.transaction.cleanup.interval.ms``) and catching up, on a busy
#: 2-core machine. Broker faults are not held to it: they add the broker's own downtime.
VISIBLE_BOUND_S = 45.0
#: Faults whose visible recovery is held to ``VISIBLE_BOUND_S``.
BOUNDED_FAULTS = ("kill -9", "replace", "kill -9 all", "zombie", "kill -9 in a rebalance")
CORRUPT_EVERY = 1000
PARTITIONS = 12


@dataclass
class MemoryWindow:
    """Largest worker RSS (MiB) around one fault, or over the halves of a soak."""

    label: str
    before_mb: float  # at the fault (the 5 s before it); soak: peak of the first half
    during_mb: float  # while the fault lasted; soak: peak of the last half
    after_mb: float  # from the fault's end until its backlog was answered; soak: at the end
    allowed_growth_mb: float
    backlog: int = -1  # input events waiting in Kafka when the fault ended (-1: not measured)
    backlog_before: int = -1  # ... when it struck
    probes: int = 0  # /readyz answers from the workers during the fault and its catch-up
    backpressure: int = 0  # ... that said ``backpressure: true``
    stalled: int = 0  # ... whose loop age would fail the liveness probe (/healthz)

    @property
    def growth_mb(self) -> float:
        return max(self.during_mb, self.after_mb) - self.before_mb

    @property
    def bounded(self) -> bool:
        return self.growth_mb <= self.allowed_growth_mb


@dataclass
class ScenarioResult:
    scenario: str
    mode: str
    produced: int = 0
    good: int = 0
    answered: int = 0
    missing: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    bad_sent: int = 0
    order_violations: int = 0
    faults: int = 0
    recovery_s: list[float] = field(default_factory=list)
    visible_s: list[float] = field(default_factory=list)  # ... until read_committed sees it
    bounded_visible_s: list[float] = field(default_factory=list)  # of BOUNDED_FAULTS
    duplicate_bound: int = 0
    identical: str = "n/a"
    worker_restarts_needed: int = 0
    #: Lines of the workers' stdout and stderr that are not JSON objects, and the first one.
    plain_log_lines: int = 0
    first_plain_line: str = ""
    peak_rss_mb: float = 0.0
    seconds: float = 0.0
    memory: list[MemoryWindow] = field(default_factory=list)
    sessions_peak: int = -1  # most sessions one worker held (from its progress log lines)
    users: int = 0  # distinct users in the input
    notes: list[str] = field(default_factory=list)
    #: Faults that did not strike as the scenario means them to (it then tests less).
    misfired: list[str] = field(default_factory=list)
    #: What stopped the scenario before its verdict (the harness's exception).
    errors: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        """What breaks the guarantees in this result, or a fault that misfired (empty when it
        passes)."""
        out = list(self.errors) + list(self.misfired)
        if self.missing:
            out.append(f"{self.missing} events unanswered")
        if self.order_violations:
            out.append(f"{self.order_violations} per-user order violations")
        if self.dead_lettered != self.bad_sent:
            out.append(f"{self.dead_lettered} dead letters for {self.bad_sent} bad records")
        if self.mode == "exactly-once":
            if self.duplicates:
                out.append(f"{self.duplicates} duplicates")
            if self.identical not in ("yes", "n/a"):
                out.append(f"suggestions differ from the undisturbed run: {self.identical}")
        elif self.duplicates > self.duplicate_bound:
            out.append(f"{self.duplicates} duplicates above the in-flight bound")
        slow = [v for v in self.bounded_visible_s if not v <= VISIBLE_BOUND_S]  # nan fails too
        if slow:
            out.append(f"suggestions visible only {slow} s after a worker fault")
        if self.worker_restarts_needed:
            out.append(f"{self.worker_restarts_needed} worker exits not caused by the harness")
        if self.plain_log_lines:
            out.append(
                f"{self.plain_log_lines} worker log lines not JSON, first: "
                f"{self.first_plain_line[:120]!r}"
            )
        for w in self.memory:
            if w.stalled:
                out.append(f"{w.label}: {w.stalled} probes saw a stalled loop (liveness)")
            if self.scenario == "slow" and 0 <= w.backlog <= w.backlog_before:
                out.append(f"{w.label}: no backlog built up (the throttle did not bite)")
            if not w.bounded:
                out.append(
                    f"{w.label}: worker RSS grew {w.growth_mb:.0f} MiB "
                    f"(allowed {w.allowed_growth_mb:.0f})"
                )
        return out

    @property
    def passed(self) -> bool:
        return not self.failures


class Broker:
    """The broker under test: the project's local launcher (restartable) or an external one."""

    def __init__(self, bootstrap: str | None, home: Path) -> None:
        from devtools import localkafka

        self._lk = localkafka
        self.external = bootstrap is not None
        if bootstrap is None:
            port, controller = localkafka.free_ports(2)
            self.cfg = localkafka.LocalKafkaConfig(home=home, port=port, controller_port=controller)
            self.bootstrap = localkafka.start(self.cfg)
        else:
            self.cfg = None
            self.bootstrap = bootstrap

    def restart(self, down_s: float) -> None:
        assert self.cfg is not None
        self._lk.stop(self.cfg)
        time.sleep(down_s)
        self._lk.start(self.cfg)

    def crash(self, down_s: float) -> None:
        """SIGKILL the broker (no controlled shutdown), start it again ``down_s`` later. Its
        log recovery after the crash can take a while on a loaded machine: 4 min allowed."""
        assert self.cfg is not None
        self._lk.kill(self.cfg)
        time.sleep(down_s)
        self._lk.start(self.cfg, timeout_s=240)

    def drop_topics(self, prefix_part: str) -> None:
        """Delete the topics whose name contains ``prefix_part`` (a finished scenario's), so
        that the next broker restart has fewer partitions to load or recover."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        try:
            names = [t for t in admin.list_topics(timeout=30).topics if prefix_part in t]
            if names:
                for future in admin.delete_topics(names, operation_timeout=30).values():
                    future.result()
        except Exception:  # clean-up only: a failure costs restart time, not correctness
            return

    def freeze(self, seconds: float) -> None:
        """SIGSTOP the broker for ``seconds``: unreachable, its connections left open."""
        assert self.cfg is not None
        pid = int(self._lk.status(self.cfg)["pid"])
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)

    def throttle(self, client_id: str, produce_bytes_per_s: int | None) -> None:
        """Set (or with None remove) a produce quota for ``client_id``, with the broker's own
        ``kafka-configs`` tool (client quotas are not in librdkafka's admin API)."""
        assert self.cfg is not None
        libs = self._lk.resolve_classpath(self.cfg)
        change = (
            ["--add-config", f"producer_byte_rate={produce_bytes_per_s}"]
            if produce_bytes_per_s
            else ["--delete-config", "producer_byte_rate"]
        )
        cmd = [self._lk.find_java(), "-Xmx128m", "-cp", f"{libs}/*", "kafka.admin.ConfigCommand"]
        cmd += ["--bootstrap-server", self.bootstrap, "--alter", "--entity-type", "clients"]
        cmd += ["--entity-name", client_id, *change]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"kafka-configs failed: {(done.stdout + done.stderr)[-2000:]}")

    def describe(self) -> str:
        """Whether the broker process runs, and the tail of its log (for a failure report)."""
        if self.cfg is None:
            return f"external broker {self.bootstrap}"
        state = self._lk.status(self.cfg)
        pid = state.get("pid")
        alive = False
        if pid:
            try:
                os.kill(int(pid), 0)
                alive = True
            except OSError:
                alive = False
        return (
            f"broker pid {pid} {'alive' if alive else 'not running'}; "
            f"{self._lk._server_log_tail(self.cfg)}"
        )

    def close(self) -> None:
        if self.cfg is not None:
            self._lk.stop(self.cfg)


def _event_records(n: int, seed: int) -> list[dict[str, Any]]:
    settings = SimulatorSettings(seed=seed)
    _, simulator = build(settings)
    out: list[dict[str, Any]] = []
    for kind, record in simulator.records(LIVE_START_MS, LIVE_START_MS + 30 * 86_400_000):
        if kind == "event":
            out.append(record)
            if len(out) == n:
                break
    return out


def _produce_input(
    bootstrap: str,
    topic: str,
    events: list[dict[str, Any]],
    duration_s: float,
    on_feeder: Callable[[InputFeeder], None] = lambda _: None,
) -> int:
    """Produce the events evenly over ``duration_s`` (0: at once), every CORRUPT_EVERY-th one
    malformed; return how many were malformed. ``on_feeder`` gets the feeder before the first
    event (how far it is and how often it replaced its producer). Kafka timestamps are "now":
    the simulated event times lie in the past and would fall behind the topic's retention."""
    codec = codec_for("BrowsingEvent")
    rng = random.Random(7)
    feeder = InputFeeder(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "partitioner": "murmur2_random",
            "compression.type": "lz4",
            "message.timeout.ms": 600000,
        },
        topic,
    )
    on_feeder(feeder)
    bad = 0
    started = time.monotonic()
    for i, e in enumerate(events, 1):
        value = codec.encode(e)
        if i % CORRUPT_EVERY == 0:
            value = corrupt(value, rng)
            bad += 1
        if duration_s > 0 and i % 50 == 0:
            ahead = i / len(events) * duration_s - (time.monotonic() - started)
            while ahead > 0:
                time.sleep(min(ahead, 0.2))
                feeder.check()
                ahead = i / len(events) * duration_s - (time.monotonic() - started)
        feeder.send(e["user_id"].encode(), value)
    feeder.close(600)
    return bad


class Group:
    """The worker processes of one scenario."""

    def __init__(
        self,
        bootstrap: str,
        topics: TopicSettings,
        group: str,
        models_dir: Path,
        exactly_once: bool,
        log_dir: Path,
        extra_args: list[str],
    ) -> None:
        self.bootstrap, self.topics, self.group = bootstrap, topics, group
        self.models_dir, self.exactly_once, self.log_dir = models_dir, exactly_once, log_dir
        self.extra_args = extra_args
        self.procs: dict[int, subprocess.Popen] = {}
        self.started: list[subprocess.Popen] = []  # every process, for the final clean-up
        self.ports: dict[int, int] = {}  # slot -> the worker's /metrics, /healthz, /readyz port
        self.unexpected_exits = 0
        self.exit_notes: list[str] = []  # how each unexpected exit happened
        self._exits_counted: set[int] = set()  # pids whose non-zero exit is already counted
        self.generation: dict[int, int] = {}  # slot -> replacements under a new transactional id

    def transactional_id(self, slot: int) -> str:
        generation = self.generation.get(slot, 0)
        return f"{self.group}-w{slot}" + (f"-g{generation}" if generation else "")

    def start(self, slot: int, *, new_id: bool = False) -> None:
        """Start the worker of ``slot``; ``new_id``: as a replacement under a transactional id
        its predecessors did not use (a new pod name), else under the slot's current one."""
        from devtools.localkafka import free_ports

        if new_id:
            self.generation[slot] = self.generation.get(slot, 0) + 1
        self.ports[slot] = free_ports(1)[0]
        args = [
            sys.executable,
            "-m",
            "worker.cli",
            "run",
            "--bootstrap-servers",
            self.bootstrap,
            "--events-topic",
            self.topics.events,
            "--suggestions-topic",
            self.topics.suggestions,
            "--purchases-topic",
            self.topics.purchases,
            "--accuracy-topic",
            self.topics.accuracy,
            "--partitions",
            str(self.topics.partitions),
            "--models-dir",
            str(self.models_dir),
            "--group-id",
            self.group,
            "--metrics-port",
            str(self.ports[slot]),
            "--transactional-id",
            self.transactional_id(slot),
            *self.extra_args,
        ]
        if self.exactly_once:
            args.append("--exactly-once")
        log = open(self.log_dir / f"worker{slot}.log", "ab")  # noqa: SIM115
        env = {**os.environ, "WORKER_LOG_FORMAT": "json"}
        self.procs[slot] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.started.append(self.procs[slot])

    def kill9(self, slot: int) -> None:
        self.procs[slot].send_signal(signal.SIGKILL)
        self.procs[slot].wait()

    def _answers_http(self, slot: int) -> bool:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.ports[slot]}/healthz", timeout=1.0
            ):
                return True
        except urllib.error.HTTPError:  # 503 is an answer: the loop is there
            return True
        except OSError:
            return False

    def wait_started(self, slot: int, timeout_s: float = 60.0) -> None:
        """Until the worker's HTTP server answers (it starts with the loop), it exits or
        ``timeout_s`` passes. The SIGTERM scenarios test the running loop's graceful path; a
        process signalled while the interpreter is still importing dies of the signal."""
        deadline = time.monotonic() + timeout_s
        proc = self.procs[slot]
        while time.monotonic() < deadline and proc.poll() is None:
            if self._answers_http(slot):
                return
            time.sleep(0.1)

    def sigterm(self, slots: list[int], timeout_s: float = 45.0) -> None:
        for s in slots:
            self.wait_started(s)
        for s in slots:
            self.procs[s].send_signal(signal.SIGTERM)
        for s in slots:
            code = self.procs[s].wait(timeout=timeout_s)
            if code != 0:
                self.unexpected_exits += 1
                self.exit_notes.append(f"worker {s} exited {code} after SIGTERM")
                self._exits_counted.add(self.procs[s].pid)

    def owner_of(self, partition: int) -> int | None:
        """The live worker that holds ``partition`` now, from the workers' logs
        (``partitions_assigned`` adds, ``partitions_revoked``/``partitions_lost`` remove, a
        ``worker_started`` starts over); None if none does."""
        for slot in self.live_slots():
            held: set[int] = set()
            path = self.log_dir / f"worker{slot}.log"
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            for line in lines:
                if '"partitions_' not in line and '"worker_started"' not in line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                event = record.get("event")
                if event == "worker_started":
                    held = set()
                elif event == "partitions_assigned":
                    held |= set(record.get("partitions", []))
                elif event in ("partitions_revoked", "partitions_lost"):
                    held -= set(record.get("partitions", []))
            if partition in held:
                return slot
        return None

    def plain_log_lines(self) -> tuple[int, str]:
        """How many lines of the workers' stdout and stderr (one file per slot, every process
        of it) are not JSON objects, and the first of them: tracebacks, or a library writing
        to stderr past the structured log."""
        count, first = 0, ""
        for path in sorted(self.log_dir.glob("worker*.log")):
            for line in path.read_text(errors="replace").splitlines():
                try:
                    ok = isinstance(json.loads(line), dict)
                except ValueError:
                    ok = False
                if not ok:
                    count += 1
                    first = first or line
        return count, first

    def log_marks(self) -> dict[int, int]:
        """Each worker log's size now (what :meth:`logged_since` reads from)."""
        out = {}
        for path in self.log_dir.glob("worker*.log"):
            out[int(path.stem.removeprefix("worker"))] = path.stat().st_size
        return out

    def logged_since(self, marks: dict[int, int], events: tuple[str, ...]) -> bool:
        """Whether any worker logged one of ``events`` after ``marks``."""
        for path in self.log_dir.glob("worker*.log"):
            with open(path, "rb") as f:
                f.seek(marks.get(int(path.stem.removeprefix("worker")), 0))
                tail = f.read().decode(errors="replace")
            if any(f'"event": "{e}"' in tail for e in events):
                return True
        return False

    def signal(self, slots: list[int], signum: int) -> None:
        """Send ``signum`` to the workers of ``slots`` (SIGSTOP/SIGCONT: freeze and thaw); a slot
        whose process is gone is skipped."""
        for s in slots:
            if s in self.procs:
                self.procs[s].send_signal(signum)

    def live_slots(self) -> list[int]:
        return [s for s, p in self.procs.items() if p.poll() is None]

    def check_unexpected_exits(self) -> None:
        """A worker that died on its own (not killed by the harness) is a failure."""
        for slot, proc in list(self.procs.items()):
            if proc.pid in self._exits_counted:  # counted by sigterm() already
                del self.procs[slot]
                continue
            if proc.poll() is not None and proc.returncode not in (0, -signal.SIGKILL):
                self.unexpected_exits += 1
                self.exit_notes.append(f"worker {slot} exited {proc.returncode} on its own")
                del self.procs[slot]

    def rss_mb(self) -> dict[int, float]:
        """Current resident set (VmRSS) of each live worker process by slot, in MiB."""
        out = {}
        for slot, proc in list(self.procs.items()):
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    out[slot] = int(line.split()[1]) / 1024
        return out

    def readiness(self) -> list[dict[str, Any]]:
        """``/readyz`` details of the live workers that answered within a second."""
        import http.client
        import urllib.error
        import urllib.request

        out = []
        for slot in self.live_slots():
            url = f"http://127.0.0.1:{self.ports[slot]}/readyz"
            try:
                try:
                    with urllib.request.urlopen(url, timeout=1.0) as response:
                        out.append(json.loads(response.read()))
                except urllib.error.HTTPError as exc:  # 503: not ready, the detail says why
                    out.append(json.loads(exc.read()))
            except (OSError, ValueError, http.client.HTTPException):
                continue  # starting, stopping (the answer cut short), or busy
        return out

    def sessions_peak(self) -> int:
        """Most sessions one worker reported holding (its ``worker_progress`` log lines)."""
        peak = -1
        for path in self.log_dir.glob("worker*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if '"worker_progress"' in line:
                    try:
                        peak = max(peak, int(json.loads(line)["sessions"]))
                    except (ValueError, KeyError):
                        continue
        return peak

    def peak_rss_mb(self) -> float:
        """Largest peak resident set (VmHWM) among the live worker processes, in MiB."""
        peak = 0.0
        for slot in self.live_slots():
            try:
                status = Path(f"/proc/{self.procs[slot].pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        return peak

    def stop_all(self) -> None:
        self.sigterm(self.live_slots())
        for proc in self.started:  # none should be left, but never leave one running
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=45)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


class RssSampler:
    """Largest worker RSS and the workers' ``/readyz``, sampled every ``interval_s`` in a
    background thread."""

    def __init__(self, group: Group, interval_s: float = 0.5) -> None:
        self.samples: list[tuple[float, float]] = []  # (monotonic time, largest MiB)
        self.by_slot: list[tuple[float, dict[int, float]]] = []  # (monotonic time, slot -> MiB)
        self.probes: list[tuple[float, dict[str, Any]]] = []  # (monotonic time, /readyz detail)
        self._group, self._interval = group, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            rss = self._group.rss_mb()
            if rss:
                self.samples.append((time.monotonic(), max(rss.values())))
                self.by_slot.append((time.monotonic(), rss))
            now = time.monotonic()
            self.probes.extend((now, detail) for detail in self._group.readiness())

    def probed(self, t0: float, t1: float) -> tuple[int, int, int]:
        """(answers, backpressure reported, stalled: the loop, a partition's fetching or the
        outputs, as /healthz reports them) among the probes in [t0, t1]."""
        inside = [d for t, d in self.probes if t0 <= t <= t1]
        return (
            len(inside),
            sum(1 for d in inside if d.get("backpressure")),
            sum(
                1
                for d in inside
                if d.get("loop_age_s", 0.0) >= STALL_AFTER_S
                or d.get("fetch_stalled_partitions")
                or d.get("outputs_stuck")
            ),
        )

    def peak(self, t0: float, t1: float) -> float:
        """Largest sample in [t0, t1] (or the last one before t0 if none fell inside)."""
        inside = [mb for t, mb in self.samples if t0 <= t <= t1]
        if inside:
            return max(inside)
        before = [mb for t, mb in self.samples if t < t0]
        return before[-1] if before else float("nan")

    def write_csv(self, path: Path, t0: float) -> None:
        """The samples as ``seconds,worker,rss_mib`` rows, seconds from ``t0``."""
        rows = [
            f"{t - t0:.1f},{slot},{mb:.1f}"
            for t, per_slot in self.by_slot
            for slot, mb in sorted(per_slot.items())
        ]
        path.write_text("seconds,worker,rss_mib\n" + "\n".join(rows) + "\n")

    def last(self) -> float:
        return self.samples[-1][1] if self.samples else float("nan")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Progress:
    """Committed offsets of the group against the input.

    The client that asks is replaced by a fresh one after ``RENEW_AFTER_S`` without an answer:
    a librdkafka consumer that neither subscribes nor assigns can keep a coordinator it lost to
    a broker fault (librdkafka #2791), and the harness must measure the workers, not its own
    client. A fresh client that gets no answer either means the broker does not answer.
    """

    RENEW_AFTER_S = 15.0

    def __init__(self, bootstrap: str, topic: str, group: str, partitions: int) -> None:
        self.topic, self.partitions = topic, partitions
        self._bootstrap, self._group = bootstrap, group
        self._c = self._client()
        # Per question (committed offsets from the coordinator, end offsets from the leaders):
        # one can fail for good while the other answers (a stale partition leader in the
        # client's metadata after a broker freeze: "Unknown partition").
        self._failing_since: dict[str, float] = {}
        self.renewed = 0  # clients replaced after RENEW_AFTER_S without an answer
        self.last_error = ""
        self.total = 0  # input events to answer in all (set by the caller)

    def _client(self) -> Consumer:
        return Consumer(
            {
                "bootstrap.servers": self._bootstrap,
                "group.id": self._group,
                "enable.auto.commit": False,
                # Not librdkafka's default read_committed: that asks for stable offsets only
                # (KIP-447) and blocks while a frozen or killed worker's transaction holds a
                # pending offset commit; what is committed now is what counts.
                "isolation.level": "read_uncommitted",
            }
        )

    def _answered(self, question: str) -> None:
        self._failing_since.pop(question, None)

    def _failed(self, question: str, exc: Exception) -> None:
        self.last_error = repr(exc)
        now = time.monotonic()
        since = self._failing_since.setdefault(question, now)
        if now - since > self.RENEW_AFTER_S:
            self._c.close()
            self._c = self._client()
            self.renewed += 1
            self._failing_since.clear()

    def committed(self) -> list[int]:
        try:
            tps = self._c.committed(
                [TopicPartition(self.topic, p) for p in range(self.partitions)], timeout=5
            )
        except Exception as exc:  # broker down during the broker scenario
            self._failed("committed", exc)
            return []
        self._answered("committed")
        return [max(tp.offset, 0) for tp in tps]

    def ends(self) -> list[int]:
        try:
            ends = [
                self._c.get_watermark_offsets(TopicPartition(self.topic, p), timeout=5)[1]
                for p in range(self.partitions)
            ]
        except Exception as exc:  # broker down
            self._failed("ends", exc)
            return []
        self._answered("ends")
        return ends

    def backlog(self, timeout_s: float = 15.0) -> int:
        """Input events not yet committed by the group (-1 if the broker does not answer)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ends, committed = self.ends(), self.committed()
            if ends and committed:
                return sum(ends) - sum(committed)
            time.sleep(0.5)
        return -1

    def fraction(self, committed: list[int]) -> float:
        return sum(committed) / self.total if committed and self.total else 0.0

    def close(self) -> None:
        self._c.close()


def _wait_recovered(
    progress: Progress,
    at_fault: list[int],
    ends_at_fault: list[int],
    started: float,
    timeout_s: float = 180.0,
) -> float:
    """Seconds from ``started`` until every input event that existed at the fault is answered
    and committed, on every partition (the killed worker's ones included)."""
    if at_fault and ends_at_fault:
        todo = {p for p in range(progress.partitions) if at_fault[p] < ends_at_fault[p]}
        target = ends_at_fault
    else:  # the broker was unreachable at the fault: any progress everywhere counts
        todo, target = set(range(progress.partitions)), [1] * progress.partitions
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = progress.committed()
        if now:
            todo = {p for p in todo if now[p] < target[p]}
            if not todo:
                return time.monotonic() - started
        time.sleep(0.2)
    return float("nan")


class _OpenTransactions:
    """Which partitions of ``topic`` hold records of an open transaction (last stable offset
    below the end), asked again and again through the same two clients."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self._stable = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"open-{uuid.uuid4().hex}",
                "isolation.level": "read_committed",
            }
        )
        self._written = _uncommitted_reader(bootstrap)

    def partitions(self, first: bool = False) -> set[int]:
        """The partitions found so (empty if the broker does not answer); ``first``: stop at
        the first one found."""
        found = set()
        for p in range(PARTITIONS):
            tp = TopicPartition(self.topic, p)
            try:
                lso = self._stable.get_watermark_offsets(tp, timeout=5, cached=False)[1]
                end = self._written.get_watermark_offsets(tp, timeout=5, cached=False)[1]
            except Exception:  # broker away
                continue
            if lso < end:
                found.add(p)
                if first:
                    break
        return found

    def close(self) -> None:
        self._stable.close()
        self._written.close()


def freeze_in_transaction(group: Group, bootstrap: str, topic: str, timeout_s: float) -> int | None:
    """Freeze (SIGSTOP) every live worker at a moment one of them holds an open transaction with
    records written, and return that worker's slot, the others thawed again; None (all thawed)
    if no such moment came within ``timeout_s``. Transactions last milliseconds: the workers are
    frozen the moment one is seen, then looked at again (what they had sent given 0.3 s to
    land); often the transaction committed meanwhile and they are thawed to try again."""
    probe = _OpenTransactions(bootstrap, topic)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if not probe.partitions(first=True):
                continue
            live = group.live_slots()
            group.signal(live, signal.SIGSTOP)
            time.sleep(0.3)
            owners = {group.owner_of(p) for p in probe.partitions()}
            owners.discard(None)
            if owners:
                victim = min(s for s in owners if s is not None)
                group.signal([s for s in live if s != victim], signal.SIGCONT)
                return victim
            group.signal(live, signal.SIGCONT)
        return None
    finally:
        probe.close()


def _uncommitted_reader(bootstrap: str) -> Consumer:
    """A consumer whose end offsets count every record written, committed or not (librdkafka's
    default, read_committed, answers the last stable offset instead)."""
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"count-{uuid.uuid4().hex}",
            "isolation.level": "read_uncommitted",
        }
    )


def _partition_ends(
    bootstrap: str, topic: str, partitions: int, timeout_s: float = 60.0
) -> list[int]:
    """Each partition's end offset (records written, committed or not), asked again while the
    broker does not answer; [] if it did not within ``timeout_s``."""
    c = _uncommitted_reader(bootstrap)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                return [
                    c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                    for p in range(partitions)
                ]
            except Exception:  # broker down
                if time.monotonic() > deadline:
                    return []
                time.sleep(0.5)
    finally:
        c.close()


def _wait_visible(
    bootstrap: str,
    topic: str,
    written_at_fault: list[int],
    started: float,
    *,
    until_at_least: float,
    timeout_s: float = 180.0,
) -> float:
    """Seconds from ``started`` until a read_committed reader can read past everything written
    to ``topic`` when the fault struck (its last stable offset reached ``written_at_fault`` on
    every partition: no transaction open then is still open), and at least ``until_at_least``
    (the committed recovery: what existed at the fault is answered). NaN after ``timeout_s``."""
    if not written_at_fault:  # the broker did not say what was written: nothing to wait for
        return float("nan")
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"visible-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
        }
    )
    deadline = time.monotonic() + timeout_s
    try:
        todo = set(range(len(written_at_fault)))
        while todo and time.monotonic() < deadline:
            for p in sorted(todo):
                try:
                    # read_committed: the high offset answered is the last stable offset.
                    _, stable = consumer.get_watermark_offsets(
                        TopicPartition(topic, p), timeout=5, cached=False
                    )
                except Exception:  # broker down
                    break
                if stable >= written_at_fault[p]:
                    todo.discard(p)
            if todo:
                time.sleep(0.2)
        if todo:
            return float("nan")
        return max(time.monotonic() - started, until_at_least)
    finally:
        consumer.close()


def _wait_drained(progress: Progress, timeout_s: float = 180.0) -> None:
    """Wait until the group has committed every input event that exists now.

    Raises:
        TimeoutError: not within ``timeout_s``, naming the partitions behind.
    """
    deadline = time.monotonic() + timeout_s
    target: list[int] = []
    now: list[int] = []
    while time.monotonic() < deadline:
        target = target or progress.ends()
        now = progress.committed()
        if target and now and all(c >= e for c, e in zip(now, target, strict=True)):
            return
        time.sleep(0.2)
    pairs = enumerate(zip(now, target, strict=True)) if now and target else None
    behind = (
        ", ".join(f"{p}: {c}/{e}" for p, (c, e) in pairs if c < e)
        if pairs is not None
        else f"broker not answering, {progress.renewed} fresh clients tried, last error "
        f"{progress.last_error}"
    )
    raise TimeoutError(
        f"backlog not drained in {timeout_s:.0f} s (partitions behind, committed/end: {behind})"
    )


def _check_input_written(progress: Progress, acknowledged: int) -> None:
    """Every event the feeder had acknowledged is in the input topic (re-sends may add
    duplicates, never fewer records): else fail at once, saying so, instead of waiting for
    progress that cannot come."""
    ends = progress.ends()
    if ends and sum(ends) < acknowledged:
        raise RuntimeError(
            f"the input topic holds {sum(ends):,} records but the feeder had {acknowledged:,} "
            f"acknowledged: input lost between acknowledgement and the log (per partition: "
            f"{ends})"
        )


def _wait_fraction(
    progress: Progress, group: Group, fraction: float, timeout_s: float = 600
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        group.check_unexpected_exits()
        if progress.fraction(progress.committed()) >= fraction:
            return
        time.sleep(0.1)
    committed, ends = progress.committed(), progress.ends()
    if committed and ends:
        pairs = enumerate(zip(committed, ends, strict=True))
        behind = ", ".join(f"{p}: {c}/{e}" for p, (c, e) in pairs if c < e)
    else:
        behind = (
            f"broker not answering, {progress.renewed} fresh clients tried, last error "
            f"{progress.last_error}"
        )
    raise TimeoutError(
        f"progress stuck below {fraction:.0%} (partitions behind, committed/end: {behind})"
    )


def _read_committed(
    bootstrap: str, topic: str, partitions: int, decode: Callable[[bytes], Any] | None = None
) -> list[Any]:
    """Every committed record of the topic (read_committed), decoded if ``decode`` is given."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"verify-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[Any] = []
    ends: set[int] = set()
    deadline = time.monotonic() + 300
    while len(ends) < partitions and time.monotonic() < deadline:
        for msg in consumer.consume(10000, timeout=1.0):
            if msg.error() is not None:
                ends.add(msg.partition())
                continue
            ends.discard(msg.partition())
            out.append(decode(msg.value()) if decode else msg)
    consumer.close()
    return out


def _headers(msg: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in msg.headers() or []}


def _high_watermarks(bootstrap: str, topic: str, partitions: int) -> int:
    """Sum of the partitions' end offsets (records written, committed or not)."""
    c = _uncommitted_reader(bootstrap)
    try:
        return sum(
            c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        )
    except Exception:  # broker down: count nothing
        return 0
    finally:
        c.close()


def _verify(
    result: ScenarioResult,
    suggestions: list[dict[str, Any]],
    events: list[dict[str, Any]],
    bad_ids: set[str],
) -> dict[str, Any]:
    good_ids = {e["event_id"] for e in events} - bad_ids
    per_event: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in suggestions:
        per_event[s["event_id"]].append(s)
    result.good = len(good_ids)
    result.answered = len(per_event)
    result.missing = len(good_ids - set(per_event))
    result.duplicates = len(suggestions) - len(per_event)
    # Per-user order: first suggestions of a user's events in input-offset order.
    seen: set[str] = set()
    last_offset: dict[str, int] = {}
    for s in suggestions:  # topic order within each partition (one user = one partition)
        if s["event_id"] in seen:
            continue
        seen.add(s["event_id"])
        if s["source_offset"] < last_offset.get(s["user_id"], -1):
            result.order_violations += 1
        last_offset[s["user_id"]] = s["source_offset"]
    return {
        eid: [(p["product_id"], p["score"]) for p in rows[0]["products"]]
        for eid, rows in per_event.items()
    }


def run_scenario(
    scenario: str,
    mode: str,
    *,
    rate: float = DEFAULT_RATE,
    fault_s: float = DEFAULT_FAULT_S,
    broker: Broker,
    events: list[dict[str, Any]],
    models_dir: Path,
    work_dir: Path,
    reference: dict[str, Any] | None,
    log: Callable[[str], None],
) -> tuple[ScenarioResult, dict[str, Any]]:
    exactly_once = mode == "exactly-once"
    run = f"{scenario}-{'eos' if exactly_once else 'alo'}-{uuid.uuid4().hex[:6]}"
    topics = TopicSettings(
        events=f"chaos-events-{run}",
        suggestions=f"chaos-suggestions-{run}",
        purchases=f"chaos-purchases-{run}",
        accuracy=f"chaos-accuracy-{run}",
        partitions=PARTITIONS,
    )
    kafka = KafkaSettings(broker.bootstrap)
    ensure_topics(kafka, topics, _SilentLog())
    result = ScenarioResult(scenario, mode, produced=len(events))
    result.users = len({e["user_id"] for e in events})
    # A freeze or throttle starts at 30% of the input and ends well before the input does.
    shortest = {**MIN_DURATION_S, "freeze": 2 * fault_s + 10, "slow": 2 * fault_s + 10}
    shortest["soak"] = 30.0
    duration_s = 0.0 if scenario == "none" else max(shortest[scenario], len(events) / rate)
    produced: list[int] = []
    feeder_failed: list[BaseException] = []
    feeding: list[InputFeeder] = []

    def feed() -> None:
        try:
            produced.append(
                _produce_input(broker.bootstrap, topics.events, events, duration_s, feeding.append)
            )
        except BaseException as exc:  # surfaced by the scenario, not lost with the thread
            feeder_failed.append(exc)

    feeder = threading.Thread(target=feed, name="input", daemon=True)
    bad_ids = {
        events[i - 1]["event_id"] for i in range(CORRUPT_EVERY, len(events) + 1, CORRUPT_EVERY)
    }
    log_dir = work_dir / run
    log_dir.mkdir(parents=True, exist_ok=True)
    client_id = f"chaos-{run}"  # the workers' client.id: the entity the ``slow`` quota names
    group = Group(
        broker.bootstrap,
        topics,
        f"chaos-{run}",
        models_dir,
        exactly_once,
        log_dir,
        ["-X", f"client.id={client_id}"],
    )
    progress = Progress(broker.bootstrap, topics.events, group.group, topics.partitions)
    progress.total = len(events)

    def fault(
        name: str,
        action: Callable[[], None],
        watch_memory: bool = False,
        prepare: Callable[[], None] | None = None,
    ) -> None:
        """Inject one fault (``action``) and measure it. ``prepare`` runs first, before what is
        measured at the fault: freezing the victim of a kill, say (it then stands still until
        ``action`` kills it)."""
        if prepare is not None:
            prepare()
        at = progress.committed()
        ends_at = progress.ends()
        # In flight: answered (suggestion or dead letter written) but not yet committed, plus
        # what the live workers may take up before the fault lands (two batches each).
        answered = _high_watermarks(broker.bootstrap, topics.suggestions, topics.partitions)
        answered += _high_watermarks(
            broker.bootstrap, topics.dead_letter(topics.events), topics.partitions
        )
        in_flight = max(0, answered - sum(at)) + 2 * 500 * len(group.live_slots())
        result.duplicate_bound += in_flight
        backlog_before = progress.backlog() if watch_memory else -1
        t0 = time.monotonic()
        action()
        t_end = time.monotonic()
        # What arrived while the fault lasted must be answered too: with little lag at the
        # fault, "what existed then" is already committed and would hide a group that stopped.
        ends_after = progress.ends()
        if ends_at and ends_after:
            ends_at = [max(a, b) for a, b in zip(ends_at, ends_after, strict=True)]
        if watch_memory and feeding:
            # What the feeder queued while the broker was away lands first (up to 15 s): the
            # backlog at the fault's end includes it.
            deadline = time.monotonic() + 15
            while feeding[0].unacknowledged > 2_000 and time.monotonic() < deadline:
                time.sleep(0.1)
        backlog = progress.backlog() if watch_memory else -1
        result.faults += 1
        recovery = _wait_recovered(progress, at, ends_at, t0)
        result.recovery_s.append(round(recovery, 1))
        # Every suggestion written by then (a killed worker's open transaction's included, long
        # landed) must become readable for read_committed readers.
        written_at_fault = _partition_ends(broker.bootstrap, topics.suggestions, topics.partitions)
        visible = _wait_visible(
            broker.bootstrap, topics.suggestions, written_at_fault, t0, until_at_least=recovery
        )
        result.visible_s.append(round(visible, 1))
        if name in BOUNDED_FAULTS:
            result.bounded_visible_s.append(round(visible, 1))
        log(
            f"  {run}: {name} at {progress.fraction(at):.0%} -> committed in {recovery:.1f} s, "
            f"visible to read_committed in {visible:.1f} s"
        )
        if watch_memory:
            # The catch-up window lasts until the backlog at the fault's end is answered too.
            _wait_drained(progress)
            time.sleep(max(0.0, t_end + 5.0 - time.monotonic()))
            probes, backpressure, stalled = sampler.probed(t0, time.monotonic())
            window = MemoryWindow(
                name,
                before_mb=sampler.peak(t0 - 5, t0),
                during_mb=sampler.peak(t0, t_end),
                after_mb=sampler.peak(t_end, time.monotonic()),
                allowed_growth_mb=FETCH_BUFFER_MB + PRODUCE_BUFFER_MB + MEMORY_SLACK_MB,
                backlog=backlog,
                backlog_before=backlog_before,
                probes=probes,
                backpressure=backpressure,
                stalled=stalled,
            )
            result.memory.append(window)
            log(
                f"  {run}: worker RSS {window.before_mb:.0f} MiB at the fault, "
                f"{window.during_mb:.0f} during, {window.after_mb:.0f} catching up "
                f"{backlog:,} backlogged events; /readyz said backpressure in {backpressure} "
                f"of {probes} probes, a stalled loop in {stalled}"
            )

    started = time.monotonic()
    initial = 1 if scenario == "scale" else 2
    for slot in range(initial):
        group.start(slot)
    for slot in range(initial):
        # The faults fall at set points of the feed: on a loaded machine a worker can take
        # 20 s to load its model and join, and a fault before that would test nothing.
        group.wait_started(slot)
    sampler = RssSampler(group)
    wakes: list[threading.Timer] = []
    try:
        plan = _plan(scenario)
        started = time.monotonic()
        feeder.start()
        for fraction, name in plan:
            # Faults at set points of the input's production time: always mid-stream.
            time.sleep(max(0.0, started + fraction * duration_s - time.monotonic()))
            group.check_unexpected_exits()

            def mid_transaction(name: str = name) -> int | None:
                """Exactly-once: the slot of a worker frozen while it holds an open transaction
                with records written (what a replacement under a new id cannot fence), the
                others running; None (nobody frozen) if none came within 20 s, or
                at-least-once."""
                if not exactly_once:
                    return None
                victim = freeze_in_transaction(group, broker.bootstrap, topics.suggestions, 20.0)
                if victim is None and broker.external:
                    result.notes.append(f"{name}: no open transaction caught; struck anyway")
                elif victim is None:  # on a broker of its own the probe sees every open one
                    result.misfired.append(f"{name}: no open transaction caught")
                return victim

            if name == "kill9":
                victim = random.Random(fraction).choice(group.live_slots())

                def kill_and_restart(victim: int = victim) -> None:
                    group.kill9(victim)
                    time.sleep(1.0)
                    group.start(victim)

                fault("kill -9", kill_and_restart)
            elif name == "replace":
                fallback = random.Random(fraction).choice(group.live_slots())
                frozen: list[int | None] = []

                def freeze_victim(frozen: list[int | None] = frozen) -> None:
                    frozen.append(mid_transaction())

                def kill_and_replace(
                    fallback: int = fallback, frozen: list[int | None] = frozen
                ) -> None:
                    chosen = frozen[0] if frozen else None
                    victim = chosen if chosen is not None else fallback
                    group.kill9(victim)
                    time.sleep(1.0)
                    group.start(victim, new_id=True)

                fault("replace", kill_and_replace, prepare=freeze_victim)
            elif name == "killall":

                def kill_all_and_replace() -> None:
                    slots = group.live_slots()
                    for s in slots:
                        group.kill9(s)
                    time.sleep(1.0)
                    for s in slots:
                        group.start(s, new_id=True)

                def freeze_one() -> None:
                    mid_transaction()

                fault("kill -9 all", kill_all_and_replace, prepare=freeze_one)
            elif name == "zombie":
                fallback = random.Random(fraction).choice(group.live_slots())
                stopped: list[int] = []

                def stop_victim(fallback: int = fallback, stopped: list[int] = stopped) -> None:
                    caught = mid_transaction()  # exactly-once: frozen in an open transaction
                    stopped.append(caught if caught is not None else fallback)
                    if caught is None:
                        group.signal(stopped, signal.SIGSTOP)

                def wake_later(stopped: list[int] = stopped) -> None:
                    # The recovery measured is the group's, while the zombie still sleeps; it
                    # wakes later in the run, fenced, and must find its way back by itself.
                    timer = threading.Timer(
                        ZOMBIE_FREEZE_S, group.signal, (stopped, signal.SIGCONT)
                    )
                    timer.start()
                    wakes.append(timer)

                fault("zombie", wake_later, prepare=stop_victim)
            elif name == "rebalancekill":
                newcomer = min(s for s in range(3) if s not in group.live_slots())
                victim = random.Random(fraction).choice(group.live_slots())

                def join_and_kill(newcomer: int = newcomer, victim: int = victim) -> None:
                    marks = group.log_marks()
                    group.start(newcomer)
                    deadline = time.monotonic() + 60
                    rebalancing = ("partitions_revoked", "partitions_assigned")
                    while not group.logged_since(marks, rebalancing):
                        if time.monotonic() > deadline:
                            result.misfired.append("rebalancekill: no rebalance seen")
                            break
                        time.sleep(0.02)
                    group.kill9(victim)
                    time.sleep(1.0)
                    group.start(victim)

                fault("kill -9 in a rebalance", join_and_kill)
            elif name == "broker":
                if broker.external:
                    result.notes.append("broker restart not run: external cluster")
                    continue
                fault("broker restart", lambda: broker.restart(3.0))
            elif name == "brokerkill":
                if broker.external:
                    result.notes.append("broker SIGKILL not run: external cluster")
                    continue
                fault("broker SIGKILL", lambda: broker.crash(3.0))
            elif name == "scale-up":
                idle = [s for s in range(3) if s not in group.live_slots()]
                fault(f"scale {3 - len(idle)}->3", lambda idle=idle: [group.start(s) for s in idle])
            elif name == "scale-down":
                fault("scale 3->2", lambda: group.sigterm([max(group.live_slots())]))
            elif name == "sigterm":

                def all_and_back() -> None:
                    slots = group.live_slots()
                    group.sigterm(slots)
                    for s in slots:
                        group.start(s)

                fault("SIGTERM all", all_and_back)
            elif name == "freeze":
                if broker.external:
                    result.notes.append("broker freeze not run: external cluster")
                    continue
                fault(f"broker frozen {fault_s:g} s", lambda: broker.freeze(fault_s), True)
            elif name == "slow":
                if broker.external:
                    result.notes.append("output throttle not run: external cluster")
                    continue

                def throttled() -> None:
                    broker.throttle(client_id, SLOW_PRODUCE_BYTES_PER_S)
                    try:
                        time.sleep(fault_s)
                    finally:
                        broker.throttle(client_id, None)

                fault(f"output throttled {fault_s:g} s", throttled, True)
        feeder.join()
        if feeder_failed:
            raise RuntimeError(f"input feeder failed: {feeder_failed[0]}") from feeder_failed[0]
        _check_input_written(progress, len(events))
        _wait_fraction(progress, group, 1.0)
        result.peak_rss_mb = round(group.peak_rss_mb())
        if scenario == "soak":
            middle = (started + time.monotonic()) / 2
            result.memory.append(
                MemoryWindow(
                    "soak",
                    before_mb=sampler.peak(started, middle),
                    during_mb=sampler.peak(middle, time.monotonic()),
                    after_mb=sampler.last(),
                    allowed_growth_mb=MEMORY_SLACK_MB,
                )
            )
    finally:
        sampler.stop()
        sampler.write_csv(log_dir / "rss.csv", started)
        group.check_unexpected_exits()
        for timer in wakes:  # a zombie still asleep is woken before the workers stop
            timer.cancel()
            timer.function(*timer.args)
        group.stop_all()
        progress.close()
    if progress.renewed:
        result.notes.append(
            f"harness progress client renewed {progress.renewed}x after "
            f"{Progress.RENEW_AFTER_S:g} s without an answer"
        )
    result.sessions_peak = group.sessions_peak()
    result.worker_restarts_needed = group.unexpected_exits
    result.notes.extend(group.exit_notes)
    result.plain_log_lines, result.first_plain_line = group.plain_log_lines()
    result.bad_sent = produced[0] if produced else -1
    if feeding and feeding[0].replaced:
        input_feeder = feeding[0]
        result.notes.append(
            f"input producer replaced {input_feeder.replaced}x, {input_feeder.resent:,} queued "
            "events re-sent (librdkafka #5430)"
        )
    result.seconds = round(time.monotonic() - started, 1)
    # A read_committed reader stops at the last stable offset: wait until no transaction of a
    # killed worker hides what follows it (else the hidden suggestions would count as missing).
    hidden_since = time.monotonic()
    for topic in (topics.suggestions, topics.dead_letter(topics.events)):
        ends = _partition_ends(broker.bootstrap, topic, topics.partitions)
        seen = _wait_visible(broker.bootstrap, topic, ends, hidden_since, until_at_least=0.0)
        if math.isnan(seen):
            raise TimeoutError(f"{topic}: what was written never became readable ({ends})")
    hidden_s = time.monotonic() - hidden_since
    if hidden_s > 5:
        result.notes.append(f"outputs hidden by open transactions {hidden_s:.0f} s after the run")
    suggestions = _read_committed(
        broker.bootstrap,
        topics.suggestions,
        topics.partitions,
        codec_for("ProductSuggestion").decode,
    )
    answers = _verify(result, suggestions, events, bad_ids)
    # Distinct source records: under at-least-once a dead letter may be written twice too.
    dead = _read_committed(broker.bootstrap, topics.dead_letter(topics.events), topics.partitions)
    result.dead_lettered = len(
        {(h["dlq.source.partition"], h["dlq.source.offset"]) for h in map(_headers, dead)}
    )
    if reference is not None and exactly_once:
        same = sum(1 for eid, ans in answers.items() if reference.get(eid) == ans)
        result.identical = (
            "yes"
            if same == len(reference) == len(answers)
            else (f"no ({same} of {len(reference)})")
        )
    return result, answers


def _plan(scenario: str) -> list[tuple[float, str]]:
    return {
        "kill9": [(0.2, "kill9"), (0.45, "kill9"), (0.7, "kill9")],
        "replace": [(0.3, "replace")],
        "killall": [(0.4, "killall")],
        "zombie": [(0.3, "zombie")],
        "rebalancekill": [(0.4, "rebalancekill")],
        "broker": [(0.35, "broker")],
        "brokerkill": [(0.35, "brokerkill")],
        "scale": [(0.25, "scale-up"), (0.6, "scale-down")],
        "sigterm": [(0.4, "sigterm")],
        "mixed": [
            (0.15, "kill9"),
            (0.3, "scale-up"),
            (0.45, "broker"),
            (0.6, "scale-down"),
            (0.75, "sigterm"),
            (0.85, "kill9"),
        ],
        "freeze": [(0.3, "freeze")],
        "slow": [(0.3, "slow")],
        "soak": [],
        "none": [],
    }[scenario]


class _SilentLog:
    def info(self, *a: Any, **k: Any) -> None:
        return None


def format_table(results: list[ScenarioResult]) -> str:
    head = (
        f"{'scenario':<14}{'mode':<15}{'produced':>9}{'answered':>9}{'missing':>8}{'dups':>6}"
        f"{'dup bound':>10}{'DLQ':>5}{'order':>6}{'faults':>7}  {'recovery s':<24}"
        f"{'visible s':<24}"
        f"{'identical':<10}{'secs':>6}{'RSS MB':>7}  result"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        rec = ",".join(f"{x:g}" for x in r.recovery_s) or "-"
        vis = ",".join(f"{x:g}" for x in r.visible_s) or "-"
        bound = "-" if r.mode == "exactly-once" else str(r.duplicate_bound)
        lines.append(
            f"{r.scenario:<14}{r.mode:<15}{r.produced:>9,}{r.answered:>9,}{r.missing:>8}"
            f"{r.duplicates:>6}{bound:>10}{r.dead_lettered:>5}{r.order_violations:>6}"
            f"{r.faults:>7}  {rec:<24}{vis:<24}{r.identical:<10}"
            f"{r.seconds:>6.0f}{r.peak_rss_mb:>7.0f}  "
            f"{'PASS' if r.passed else 'FAIL'}"
            + (" (" + "; ".join(r.failures + r.notes) + ")" if r.failures or r.notes else "")
        )
    return "\n".join(lines)


def format_memory(results: list[ScenarioResult]) -> str:
    """Worker memory around each freeze/throttle and over each soak (empty if none ran)."""
    head = (
        f"{'scenario':<11}{'mode':<15}{'window':<26}{'RSS before':>11}{'during':>8}"
        f"{'after':>8}{'growth':>8}{'allowed':>8}{'backlog':>9}{'backpressure':>14}"
        f"{'stalled':>8}{'sessions':>10}{'users':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        for w in r.memory:
            backlog = f"{w.backlog:,}" if w.backlog >= 0 else "-"
            lines.append(
                f"{r.scenario:<11}{r.mode:<15}{w.label:<26}{w.before_mb:>11.0f}{w.during_mb:>8.0f}"
                f"{w.after_mb:>8.0f}{w.growth_mb:>8.0f}{w.allowed_growth_mb:>8.0f}{backlog:>9}"
                f"{f'{w.backpressure}/{w.probes}':>14}{w.stalled:>8}"
                f"{r.sessions_peak:>10,}{r.users:>8,}"
            )
    return "\n".join(lines) if len(lines) > 2 else ""


def run_chaos(
    *,
    scenarios: list[str],
    modes: list[str],
    n_events: int,
    rate: float = DEFAULT_RATE,
    fault_s: float = DEFAULT_FAULT_S,
    models_dir: Path,
    work_dir: Path,
    bootstrap: str | None,
    seed: int = 5,
    log: Callable[[str], None] = print,
    skip: frozenset[tuple[str, str]] = frozenset(),
) -> list[ScenarioResult]:
    """Run each scenario in each mode (but the ``(scenario, mode)`` pairs in ``skip``) on one
    broker, after an undisturbed exactly-once reference run; return their results."""
    work_dir.mkdir(parents=True, exist_ok=True)
    events = _event_records(n_events, seed)
    broker = Broker(bootstrap, work_dir / f"kafka-{uuid.uuid4().hex[:6]}")
    results: list[ScenarioResult] = []
    try:
        reference = None
        if "exactly-once" in modes:
            log(f"reference: undisturbed exactly-once run over {n_events:,} events")
            _, reference = run_scenario(
                "none",
                "exactly-once",
                broker=broker,
                events=events,
                models_dir=models_dir,
                work_dir=work_dir,
                reference=None,
                log=log,
            )
        for scenario in scenarios:
            for mode in modes:
                if (scenario, mode) in skip:
                    continue
                log(f"scenario {scenario} / {mode}: {n_events:,} events")
                try:
                    result, _ = run_scenario(
                        scenario,
                        mode,
                        rate=rate,
                        fault_s=fault_s,
                        broker=broker,
                        events=events,
                        models_dir=models_dir,
                        work_dir=work_dir,
                        reference=reference,
                        log=log,
                    )
                except Exception as exc:  # one scenario's failure must not hide the others'
                    result = ScenarioResult(scenario, mode, errors=[f"{type(exc).__name__}: {exc}"])
                    log(f"  {scenario} / {mode} stopped: {exc!r}\n{broker.describe()}")
                results.append(result)
                log(format_table([result]).splitlines()[-1])
                broker.drop_topics(f"-{scenario}-")
    finally:
        broker.close()
    return results
