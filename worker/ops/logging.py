"""structlog set-up: JSON lines (one object per line, stable keys) on stderr.

Level and format are settings (``--log-level`` / ``WORKER_LOG_LEVEL``, ``--log-format`` /
``WORKER_LOG_FORMAT``, declared in :mod:`worker.config`); the command line resolves them and
passes them here. Format ``auto`` is a human-readable renderer on a terminal and JSON otherwise.
Log calls use keyword arguments only, never formatted strings, and never carry payloads or
secrets.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog


def configure_logging(*, level: str = "info", fmt: str = "auto", **bound: Any) -> Any:
    """Configure structlog for the process and return a logger bound with ``bound``.

    Args:
        level: ``debug``, ``info``, ``warning`` or ``error`` (any case).
        fmt: ``json``, ``console`` or ``auto`` (console on a terminal, else json).
    """
    numeric = getattr(logging, level.upper(), logging.INFO)
    renderer_name = fmt if fmt != "auto" else ("console" if sys.stderr.isatty() else "json")
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if renderer_name == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    return structlog.get_logger().bind(**bound)


class RepeatFilter:
    """Lets one line of a kind through per ``window_s`` and counts the rest.

    For client messages that repeat on every reconnect attempt (every 100 ms or so while a
    broker is down): the first goes out at once, the following ones within ``window_s`` are
    counted and reported as ``repeated`` on the next one let through. Numbers in the key are
    ignored ("after 0ms" and "after 51ms" are the same kind of line).
    """

    _DIGITS = re.compile(r"\d+")

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str, now: float) -> int | None:
        """None to drop this line; otherwise how many like it were dropped since the last."""
        kind = self._DIGITS.sub("#", key)
        last = self._last.get(kind)
        if last is not None and now - last < self.window_s:
            self._held[kind] = self._held.get(kind, 0) + 1
            return None
        self._last[kind] = now
        return self._held.pop(kind, 0)
