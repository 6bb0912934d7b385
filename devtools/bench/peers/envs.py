"""One virtual environment per peer, so the peers' dependencies never touch the project's env.

``ensure_env("mlserver", root)`` creates ``root/mlserver`` with ``python -m venv`` (the Python that
runs this code) and installs ``bench/peers/requirements-mlserver.txt`` into it. A stamp file in
the venv records the SHA-256 of the requirements file and the interpreter version; when both
match, the call returns at once, so it is safe to call before every run.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

from worker.core.errors import WorkerError

PEERS_DIR = Path(__file__).resolve().parent
STAMP_FILE = ".bench-peer-stamp"
PEER_NAMES = ("mlserver", "quix")


class PeerEnvError(WorkerError):
    """A peer's virtual environment could not be created or installed."""


def requirements_file(name: str) -> Path:
    """The pinned requirements of a peer.

    Raises:
        PeerEnvError: no requirements file for that name.
    """
    path = PEERS_DIR / f"requirements-{name}.txt"
    if not path.is_file():
        raise PeerEnvError(f"no requirements file for peer {name!r} at {path}")
    return path


def requirements_stamp(requirements: Path) -> str:
    """What the stamp file holds: the interpreter version and the requirements' SHA-256."""
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    version = ".".join(str(part) for part in sys.version_info[:3])
    return f"python={version} requirements-sha256={digest}\n"


def venv_python(env_dir: Path) -> Path:
    return env_dir / "bin" / "python"


def ensure_env(
    name: str,
    root: Path,
    *,
    log_file: Path | None = None,
    requirements: Path | None = None,
    require_hashes: bool = False,
) -> Path:
    """Create (or reuse) the venv ``root/<name>`` with the peer's pinned requirements.

    Args:
        name: ``mlserver`` or ``quix`` (``bench/peers/requirements-<name>.txt``), or any name
            with ``requirements``.
        root: where the venvs live, e.g. ``var/bench-envs``.
        log_file: pip's output goes there (default ``root/<name>.install.log``).
        requirements: the requirements file (default: the peer's).
        require_hashes: install with ``--require-hashes`` (a hashed lock file).

    Returns:
        The venv's python.

    Raises:
        PeerEnvError: venv creation or pip install failed (the log's tail is in the message).
    """
    requirements = requirements or requirements_file(name)
    env_dir = root / name
    python = venv_python(env_dir)
    stamp = requirements_stamp(requirements)
    stamp_path = env_dir / STAMP_FILE
    if python.is_file() and stamp_path.is_file() and stamp_path.read_text() == stamp:
        return python

    root.mkdir(parents=True, exist_ok=True)
    log_file = log_file or root / f"{name}.install.log"
    if env_dir.exists():  # stale or half-built: start clean rather than patch it
        shutil.rmtree(env_dir)
    started = time.monotonic()
    with log_file.open("w") as log:
        _run([sys.executable, "-m", "venv", str(env_dir)], log, log_file)
        _run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--no-input",
                "--disable-pip-version-check",
                *(["--require-hashes"] if require_hashes else []),
                "-r",
                str(requirements),
            ],
            log,
            log_file,
        )
        log.write(f"\ninstalled in {time.monotonic() - started:.1f} s\n")
    stamp_path.write_text(stamp)
    return python


def _run(cmd: list[str], log, log_file: Path) -> None:
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        log.flush()
        tail = "".join(log_file.read_text(errors="replace").splitlines(True)[-20:])
        raise PeerEnvError(f"{cmd[0]} {' '.join(cmd[1:3])} failed ({result.returncode}):\n{tail}")


def main(argv: list[str] | None = None) -> int:
    """``python -m devtools.bench.peers.envs ROOT [NAME...]``: build the venvs, print their
    pythons."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m devtools.bench.peers.envs ROOT [mlserver] [quix]", file=sys.stderr)
        return 2
    root = Path(args[0])
    for name in args[1:] or PEER_NAMES:
        started = time.monotonic()
        python = ensure_env(name, root)
        print(f"{name}\t{python}\t{time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
