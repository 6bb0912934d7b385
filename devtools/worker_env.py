"""Which Python runs the worker when a devtools command measures it.

Production installs ``requirements/runtime.txt`` and the product, nothing else
(``deploy/Dockerfile``). The development venv has far more: pandas, scikit-learn and dask are
there for devtools and tests, and LightGBM imports whichever of them it finds. A worker started
from the development venv therefore holds about 100 MiB more than the image's (measured: 215 vs
113 MiB after the imports of ``worker run``), which a memory figure must not count.

``--worker-env runtime`` (the default of ``worker-dev memory``, ``ready`` and ``bench``) runs the
worker with a venv of ``requirements/runtime.txt`` alone, installed with ``--require-hashes`` into
``<env-root>/worker-runtime`` once (reused while the lock file and the interpreter are the same),
and this checkout's ``worker`` package on ``PYTHONPATH``: the image's module set, this checkout's
code. ``--worker-env current`` runs it with the interpreter running devtools; any other value is
the path of a Python to use as it is. ``--worker-checkout DIR`` runs another checkout's
``worker`` package instead of this one's (on ``PYTHONPATH``, in front of whatever the Python has
installed): a before/after of the worker measured by the same devtools in one run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNTIME_REQUIREMENTS = REPO_ROOT / "requirements" / "runtime.txt"
RUNTIME_ENV_NAME = "worker-runtime"
CHOICES_HELP = (
    "the worker's Python: runtime (a venv of requirements/runtime.txt alone, as the image "
    "installs; built once under the env root), current (this interpreter, with the development "
    "packages), or a path to a python"
)


@dataclass(frozen=True)
class WorkerEnv:
    """A Python to run ``worker`` with, and what it adds to the environment.

    Attributes:
        name: ``runtime``, ``current`` or the interpreter's path.
        python: the interpreter.
        pythonpath: prepended to ``PYTHONPATH`` (the checkout, for the runtime venv, which does
            not install the product), or None.
    """

    name: str
    python: str
    pythonpath: str | None = None

    def command(self, *args: str) -> list[str]:
        """``python -P -m worker.cli ARGS``: ``-P`` (Python 3.11+) keeps the working directory
        off ``sys.path``, where a checkout's own ``worker`` would shadow ``pythonpath``'s."""
        return [self.python, "-P", "-m", "worker.cli", *args]

    def environ(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default ``os.environ``) with ``pythonpath`` in front of ``PYTHONPATH``."""
        env = dict(os.environ if base is None else base)
        if self.pythonpath:
            rest = env.get("PYTHONPATH")
            env["PYTHONPATH"] = self.pythonpath + (os.pathsep + rest if rest else "")
        return env


def resolve_worker_env(
    choice: str, env_root: Path, *, say: Any = None, checkout: Path | None = None
) -> WorkerEnv:
    """The :class:`WorkerEnv` for ``--worker-env CHOICE``; builds the runtime venv if needed.
    With ``checkout``, the worker's code comes from there.

    Raises:
        PeerEnvError: the runtime venv could not be built (pip's tail in the message).
        FileNotFoundError: ``choice`` is a path that does not exist, or ``checkout`` holds no
            ``worker`` package.
    """
    if checkout is not None:
        checkout = checkout.resolve()
        if not (checkout / "worker" / "cli.py").is_file():
            raise FileNotFoundError(f"--worker-checkout {checkout}: no worker/cli.py there")
        env = resolve_worker_env(choice, env_root, say=say)
        return WorkerEnv(f"{env.name}, worker from {checkout}", env.python, str(checkout))
    if choice == "current":
        return WorkerEnv("current", sys.executable)
    if choice == "runtime":
        from devtools.bench.peers.envs import ensure_env

        if say is not None:
            say(f"the worker's runtime venv: {env_root / RUNTIME_ENV_NAME} (built on first use)")
        python = ensure_env(
            RUNTIME_ENV_NAME, env_root, requirements=RUNTIME_REQUIREMENTS, require_hashes=True
        )
        return WorkerEnv("runtime", str(python), str(REPO_ROOT))
    path = Path(choice)
    if not path.is_file():
        raise FileNotFoundError(f"--worker-env {choice}: no such interpreter")
    return WorkerEnv(str(path), str(path))


def add_argument(p: Any, *, env_root: bool = True) -> None:
    """``--worker-env``, and ``--env-root`` (where the runtime venv lives) unless the command
    has one of its own."""
    p.add_argument("--worker-env", default="runtime", help=CHOICES_HELP)
    p.add_argument(
        "--worker-checkout",
        type=Path,
        default=None,
        help="run the worker package of this checkout (e.g. a git worktree of an older commit), "
        "for a before/after measured by the same devtools; default: this checkout",
    )
    if env_root:
        p.add_argument(
            "--env-root",
            type=Path,
            default=Path("var/envs"),
            help="where the runtime venv is built (default var/envs)",
        )
