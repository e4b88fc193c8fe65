"""Polling for a condition with a deadline, in threads and greenlets alike."""

from __future__ import annotations

import time
from typing import Any, Callable

import gevent

__all__ = ["wait_until"]


def wait_until(condition: Callable[[], Any], timeout: float = 60.0, what: str = "condition", interval: float = 0.02) -> None:
    """Poll ``condition()`` every ``interval`` s until it is true; ``AssertionError`` naming ``what`` after ``timeout`` s.

    It sleeps with ``gevent.sleep``: a hub running in the test's own process
    (greenlets, no monkey patching) keeps running while the test waits, and in
    a plain thread it sleeps like ``time.sleep``.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        gevent.sleep(interval)
