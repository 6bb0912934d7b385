"""The demo's process states: a simulator that finished is ``done``, not ``DOWN``."""

from __future__ import annotations

import subprocess
import sys

from devtools.demo import _state


def test_process_states_tell_running_from_finished_from_failed():
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    failed = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    try:
        finished.wait(30)
        failed.wait(30)
        assert _state(running) == "up"
        assert _state(finished) == "done"
        assert _state(failed) == "DOWN (exit 3)"
    finally:
        running.kill()
        running.wait()
