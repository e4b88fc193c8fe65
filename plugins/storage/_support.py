"""Small helpers the storages share: epochs, atomic writes, periodic flushing, quiet logs."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Callable

import gevent

from gauss.ratelimit import RateLimitedLog

__all__ = ["new_epoch", "write_atomic", "PeriodicTask"]


def new_epoch() -> str:
    """A short random epoch (SPEC section 1): 12 hex digits."""
    return secrets.token_hex(6)


def write_atomic(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old or the new file, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        if fsync:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)


class PeriodicTask:
    """Run ``action`` every ``interval`` seconds in a greenlet until :meth:`stop`.

    The storages use it to flush buffered writes on time even when no new
    records arrive. An exception is logged (rate-limited) and the loop goes on.
    """

    def __init__(self, interval: float, action: Callable[[], None], logger: logging.Logger, what: str) -> None:
        self._interval = interval
        self._action = action
        self._errors = RateLimitedLog(logger, level=logging.ERROR)
        self._what = what
        self._greenlet: gevent.Greenlet | None = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            gevent.sleep(self._interval)
            try:
                self._action()
            except Exception as exc:  # noqa: BLE001 - keep flushing; the next round may succeed
                self._errors("%s failed: %s", self._what, exc)

    def stop(self) -> None:
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None:
            greenlet.kill(block=False)
