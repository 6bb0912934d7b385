"""structlog set-up: JSON lines (one object per line, stable keys) on stderr.

On a terminal the default is a human-readable renderer instead; ``WORKER_LOG_FORMAT=json`` or
``console`` chooses explicitly. ``WORKER_LOG_LEVEL`` sets
the level (default ``info``). Log calls use keyword arguments only, never formatted strings, and
never carry payloads or secrets.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any

import structlog


def configure_logging(*, level: str | None = None, fmt: str | None = None, **bound: Any) -> Any:
    """Configure structlog for the process and return a logger bound with ``bound``."""
    level_name = (level or os.environ.get("WORKER_LOG_LEVEL", "info")).upper()
    numeric = getattr(logging, level_name, logging.INFO)
    default_format = "console" if sys.stderr.isatty() else "json"
    renderer_name = fmt or os.environ.get("WORKER_LOG_FORMAT") or default_format
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
