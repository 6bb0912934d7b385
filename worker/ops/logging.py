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
import threading
import warnings
from types import TracebackType
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
    route_library_output(**bound)
    return structlog.get_logger().bind(**bound)


def route_library_output(**bound: Any) -> None:
    """Send what libraries and Python itself would print on stderr through ``log``, so that
    every line a process writes is a log record: Python warnings (``python_warning``), LightGBM's
    own messages (``lightgbm``; registered where LightGBM is imported, by
    :func:`worker.model.lightgbm_log.route_lightgbm_log`, to keep that heavy import out of
    start-up) and exceptions that escape a thread
    or the main program (``uncaught_exception``, the traceback in one field).

    librdkafka's lines are routed per client (``worker.kafka.clients.client_hooks``) and the HTTP
    server's in ``worker.ops.health``. The logger is looked up at each call, so the hooks follow
    a later ``structlog`` configuration instead of writing to a stream it has replaced.
    """

    def log() -> Any:
        return structlog.get_logger().bind(**bound)

    def show_warning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        log().warning(
            "python_warning",
            category=category.__name__,
            message=str(message),
            source=f"{filename}:{lineno}",
        )

    warnings.showwarning = show_warning

    def excepthook(
        exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> None:
        log().critical("uncaught_exception", exc_info=(exc_type, exc, tb))

    def thread_excepthook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        log().critical(
            "uncaught_exception",
            thread=args.thread.name if args.thread is not None else None,
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )

    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook


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
