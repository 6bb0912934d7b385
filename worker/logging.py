"""structlog set-up: JSON lines (one object per line, stable keys) on stderr.

On a terminal the default is a human-readable renderer instead; ``WORKER_LOG_FORMAT=json`` or
``console`` chooses explicitly. ``WORKER_LOG_LEVEL`` sets
the level (default ``info``). Log calls use keyword arguments only, never formatted strings, and
never carry payloads or secrets.
"""

from __future__ import annotations

import logging
import os
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
