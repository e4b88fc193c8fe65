"""Rate-limited logging for hot error paths (one line per interval, with a count of the rest).

The one rate limiter of Gauss: the engine, the plugins (codecs, storages,
ClickHouse) and the Grafana plugin (whose gRPC threads share one) use it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

__all__ = ["RateLimitedLog", "MAX_KEYS"]

MAX_KEYS = 1024
"""How many keys one :class:`RateLimitedLog` remembers; beyond, the least recently logged is forgotten."""

_HELD_BACK = " (%d similar messages held back)"


class RateLimitedLog:
    """Log at most one line per ``interval`` seconds; later lines say how many were held back.

    A flood of bad frames must not become a flood of log lines, yet an
    operator must still learn that it happens and how often. Calling the
    object logs at its ``level`` under one shared key; :meth:`log` takes a
    level and a key, each key with its own interval (a stream per key, say).
    Thread-safe: the check and the count run under a lock, the logging call
    itself outside it.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._interval = interval
        self._level = level
        self._clock = clock
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}
        """Per key: when its next line may be logged (insertion order: least recently logged first)."""
        self._held: dict[str, int] = {}
        self.logged = 0
        """Lines logged so far."""
        self.held_back = 0
        """Lines held back so far (every key)."""

    def __call__(self, message: str, *args: Any) -> None:
        self.log(self._level, "", message, *args)

    def log(self, level: int, key: str, message: str, *args: Any) -> None:
        """Log ``message % args`` at ``level`` unless ``key`` logged less than ``interval`` seconds ago."""
        now = self._clock()
        with self._lock:
            due = self._next.get(key)
            if due is not None and now < due:
                self._held[key] = self._held.get(key, 0) + 1
                self.held_back += 1
                return
            if due is not None:
                del self._next[key]  # re-inserted last: the most recently logged
            elif len(self._next) >= MAX_KEYS:
                oldest = next(iter(self._next))
                del self._next[oldest]
                self._held.pop(oldest, None)
            self._next[key] = now + self._interval
            held = self._held.pop(key, 0)
            self.logged += 1
        if held:
            message += _HELD_BACK
            args = (*args, held)
        self._log.log(level, message, *args)
