"""SIGTERM while `worker run` or `worker monitor` is still starting ends it with exit code 0.

A pod can be terminated before its loop installs the graceful handler (a rollout that changes
its mind, a scale-down right after a scale-up). Nothing was consumed yet, so there is nothing
to drain: the process must exit 0 at once, not die of the signal's default action (-15), which
the orchestrator would count as a crash. Both commands are pointed at a port nobody listens
on, so they sit in start-up (waiting up to 30 s for the cluster) when the signal comes.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.helpers import spawn
from tests.kafka_fixtures import free_ports


@pytest.mark.parametrize("command", ["run", "monitor"])
@pytest.mark.parametrize("after_s", [0.3, 2.0])
def test_sigterm_during_start_up_exits_0(command, after_s, trained_models_dir, tmp_path):
    (port,) = free_ports(1)
    args = [command, "--bootstrap-servers", f"127.0.0.1:{port}"]
    if command == "run":
        args += ["--models-dir", str(trained_models_dir)]
    log_path = tmp_path / f"{command}.log"
    proc = spawn(args, log_path)
    try:
        time.sleep(after_s)
        assert proc.poll() is None, log_path.read_text()  # still starting: the cluster is absent
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"no exit within 10 s of SIGTERM:\n{log_path.read_text()}")
    log = log_path.read_text()
    assert code == 0, log
    assert "worker_started" not in log and "monitor_started" not in log, log
