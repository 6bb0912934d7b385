"""LightGBM's own lines as structlog records instead of ``[LightGBM] [Warning] ...`` on stdout."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import structlog


class _LightGBMLog:
    """LightGBM's logger interface (``info``/``warning`` with one message string). Its native
    library passes every line to ``info``, ``[LightGBM] [Warning] ...`` included: those become
    ``lightgbm`` warnings, the others ``lightgbm`` debug records. The logger is looked up at each
    call, so it follows the process's structlog configuration."""

    def info(self, message: str) -> None:
        text = message.strip()
        if not text:
            return
        log: Any = structlog.get_logger()
        if "[Warning]" in text or "[Fatal]" in text:
            log.warning("lightgbm", message=text)
        else:
            log.debug("lightgbm", message=text)

    def warning(self, message: str) -> None:
        text = message.strip()
        if text:
            structlog.get_logger().warning("lightgbm", message=text)


def route_lightgbm_log(lightgbm: ModuleType) -> None:
    """Register the structlog adapter as LightGBM's logger (call right after importing it)."""
    lightgbm.register_logger(_LightGBMLog())
