"""The harness counts each worker exit it did not cause exactly once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from devtools.chaos import Group
from worker.config import TopicSettings

EXIT_3_ON_SIGTERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))\n"
    "print('up', flush=True)\n"
    "time.sleep(60)\n"
)


def _group(tmp_path: Path) -> Group:
    group = Group("127.0.0.1:1", TopicSettings(), "g", tmp_path, False, tmp_path, extra_args=[])
    group._answers_http = lambda slot: True  # type: ignore[method-assign]  (no HTTP here)
    return group


def _spawn(code: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    return proc


def test_an_exit_after_sigterm_is_counted_once(tmp_path):
    group = _group(tmp_path)
    group.procs[0] = _spawn(EXIT_3_ON_SIGTERM)
    group.sigterm([0])
    group.check_unexpected_exits()
    group.check_unexpected_exits()
    assert group.unexpected_exits == 1
    assert group.exit_notes == ["worker 0 exited 3 after SIGTERM"]


def test_an_exit_on_its_own_is_counted_once_and_a_kill_or_clean_exit_not_at_all(tmp_path):
    group = _group(tmp_path)
    group.procs[0] = _spawn("print('up', flush=True); raise SystemExit(2)")
    group.procs[1] = _spawn("print('up', flush=True)")  # exits 0
    group.procs[2] = _spawn(EXIT_3_ON_SIGTERM)
    group.procs[2].kill()  # the harness's kill -9
    for p in group.procs.values():
        p.wait(10)
    time.sleep(0.05)
    group.check_unexpected_exits()
    group.check_unexpected_exits()
    assert group.unexpected_exits == 1
    assert group.exit_notes == ["worker 0 exited 2 on its own"]


def test_a_replacement_gets_a_transactional_id_its_predecessors_never_had(tmp_path):
    """``replace`` and ``killall`` start replacements as a Deployment does after an eviction:
    under a new id (a new pod name); ``kill9`` restarts under the same one (a container
    restart)."""
    group = _group(tmp_path)
    assert group.transactional_id(0) == "g-w0"
    group.generation[0] = 1
    assert group.transactional_id(0) == "g-w0-g1"
    assert group.transactional_id(1) == "g-w1"


def test_the_owner_of_a_partition_is_read_from_the_live_workers_logs(tmp_path):
    """Assigned adds, revoked and lost remove, a restart (worker_started) starts over."""
    import json

    group = _group(tmp_path)
    lines = {
        0: [
            {"event": "worker_started"},
            {"event": "partitions_assigned", "partitions": [0, 1, 2]},
            {"event": "partitions_revoked", "partitions": [2]},
        ],
        1: [
            {"event": "partitions_assigned", "partitions": [5]},
            {"event": "worker_started"},
            {"event": "partitions_assigned", "partitions": [2, 3]},
            {"event": "partitions_lost", "partitions": [3]},
        ],
    }
    for slot, records in lines.items():
        text = "\n".join(json.dumps(r) for r in records) + "\nnot json\n"
        (tmp_path / f"worker{slot}.log").write_text(text)
        group.procs[slot] = _spawn("print('up', flush=True)\nimport time\ntime.sleep(30)\n")
    try:
        assert [group.owner_of(p) for p in range(6)] == [0, 0, 1, None, None, None]
    finally:
        for proc in group.procs.values():
            proc.kill()
            proc.wait()


def test_every_line_of_the_workers_output_that_is_not_a_json_object_is_counted(tmp_path):
    group = _group(tmp_path)
    (tmp_path / "worker0.log").write_text('{"event": "worker_started"}\n{"event": "batch"}\n')
    assert group.plain_log_lines() == (0, "")
    (tmp_path / "worker1.log").write_text(
        '{"event": "worker_started"}\n'
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1\n'
        "[1, 2]\n"
    )
    assert group.plain_log_lines() == (3, "Traceback (most recent call last):")


def test_a_rebalance_is_seen_in_any_workers_log_after_the_mark(tmp_path):
    group = _group(tmp_path)
    (tmp_path / "worker0.log").write_text('{"event": "partitions_assigned", "partitions": [1]}\n')
    marks = group.log_marks()
    events = ("partitions_revoked", "partitions_assigned")
    assert not group.logged_since(marks, events)
    with open(tmp_path / "worker0.log", "a") as f:
        f.write('{"event": "batch"}\n')
    assert not group.logged_since(marks, events)
    (tmp_path / "worker2.log").write_text('{"event": "partitions_assigned", "partitions": []}\n')
    assert group.logged_since(marks, events)  # a newcomer's log counts from its start
