"""Rate-limited logging for hot error paths (one line per interval, with a count of the rest)."""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """Log at most one line per ``interval`` seconds; later lines say how many were held back.

    A flood of bad frames must not become a flood of log lines, yet an
    operator must still learn that it happens and how often.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0, level: int = logging.WARNING) -> None:
        self._log = logger
        self._interval = interval
        self._level = level
        self._next = 0.0
        self._held = 0

    def __call__(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return
        if self._held:
            message += " (%d similar messages held back)"
            args = (*args, self._held)
        self._log.log(self._level, message, *args)
        self._held = 0
        self._next = now + self._interval
