"""``devtools.worker_env``: which Python a measured worker runs with.

The runtime venv test builds the venv for real (``requirements/runtime.txt``, hashed; about a
minute once, reused through ``WORKER_BENCH_ENV_ROOT`` or within a test session) and checks what
makes a memory figure the image's: the worker's imports pull in none of the development-only
packages that LightGBM would otherwise import too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools import cli as dev
from devtools import worker_env
from devtools.worker_env import RUNTIME_REQUIREMENTS, WorkerEnv, resolve_worker_env

#: In the development lock, imported by LightGBM when present, never installed by the image.
DEV_ONLY = ("pandas", "sklearn", "dask", "matplotlib")


def test_current_is_this_interpreter_and_adds_nothing(tmp_path: Path) -> None:
    env = resolve_worker_env("current", tmp_path)
    assert env == WorkerEnv("current", sys.executable)
    assert env.command("run", "--top-k", "5") == [
        sys.executable,
        "-P",
        "-m",
        "worker.cli",
        "run",
        "--top-k",
        "5",
    ]
    assert env.environ({"A": "1"}) == {"A": "1"}
    assert not list(tmp_path.iterdir())  # no venv built


def test_pythonpath_goes_in_front_of_what_is_there() -> None:
    env = WorkerEnv("runtime", "/venv/bin/python", "/checkout")
    assert env.environ({"PYTHONPATH": "/x"})["PYTHONPATH"] == f"/checkout{os.pathsep}/x"
    assert env.environ({})["PYTHONPATH"] == "/checkout"


def test_a_path_is_used_as_it_is_and_a_missing_one_refused(tmp_path: Path) -> None:
    assert resolve_worker_env(sys.executable, tmp_path).python == sys.executable
    with pytest.raises(FileNotFoundError, match="no such interpreter"):
        resolve_worker_env(str(tmp_path / "nope" / "python"), tmp_path)


def test_runtime_installs_the_hashed_runtime_lock(monkeypatch, tmp_path: Path) -> None:
    calls = []

    def fake_ensure_env(name, root, **kwargs):
        calls.append((name, root, kwargs))
        return root / name / "bin" / "python"

    monkeypatch.setattr("devtools.bench.peers.envs.ensure_env", fake_ensure_env)
    env = resolve_worker_env("runtime", tmp_path)
    assert calls == [
        (
            "worker-runtime",
            tmp_path,
            {"requirements": RUNTIME_REQUIREMENTS, "require_hashes": True},
        )
    ]
    assert env.python == str(tmp_path / "worker-runtime" / "bin" / "python")
    assert env.pythonpath == str(worker_env.REPO_ROOT)
    assert (Path(env.pythonpath) / "worker" / "cli.py").is_file()


def test_the_measuring_commands_default_to_the_runtime_env() -> None:
    parser = dev.build_parser()
    for command in ("memory", "ready"):
        args = parser.parse_args([command])
        assert args.worker_env == "runtime" and args.env_root == Path("var/envs"), command
    args = parser.parse_args(["memory", "--worker-env", "current", "--env-root", "/e"])
    assert (args.worker_env, args.env_root) == ("current", Path("/e"))


def test_the_runtime_venv_runs_the_worker_without_development_packages(
    bench_env_root: Path,
) -> None:
    env = resolve_worker_env("runtime", bench_env_root)
    probe = (
        "import json, sys; import worker.cli, worker.apps.serve, lightgbm, lleaves; "
        f"print(json.dumps([m for m in {DEV_ONLY!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [env.python, "-c", probe],
        env=env.environ(),
        capture_output=True,
        text=True,
        check=True,
        cwd="/",  # the checkout comes from PYTHONPATH, not from the working directory
    )
    assert json.loads(out.stdout) == []
    # The check can fail: the development venv imports them along with LightGBM.
    here = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(here.stdout), "the development venv no longer has pandas & co."


def test_another_checkouts_worker_goes_on_pythonpath(tmp_path: Path) -> None:
    other = tmp_path / "before"
    (other / "worker").mkdir(parents=True)
    (other / "worker" / "cli.py").write_text("")
    env = resolve_worker_env("current", tmp_path, checkout=other)
    assert (env.python, env.pythonpath) == (sys.executable, str(other))
    assert env.name == f"current, worker from {other}"
    assert env.environ({})["PYTHONPATH"] == str(other)
    with pytest.raises(FileNotFoundError, match="no worker/cli.py"):
        resolve_worker_env("current", tmp_path, checkout=tmp_path / "empty")


def test_the_checkouts_worker_runs_even_from_another_checkouts_directory(tmp_path: Path) -> None:
    other = tmp_path / "before"
    (other / "worker").mkdir(parents=True)
    (other / "worker" / "__init__.py").write_text("")
    (other / "worker" / "cli.py").write_text("import worker; print(worker.__file__)\n")
    env = resolve_worker_env("current", tmp_path, checkout=other)
    out = subprocess.run(
        env.command(),
        env=env.environ(),
        capture_output=True,
        text=True,
        check=True,
        cwd=worker_env.REPO_ROOT,  # holds a worker package of its own
    )
    assert out.stdout.strip() == str(other / "worker" / "__init__.py")
