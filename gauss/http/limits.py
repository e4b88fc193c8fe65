"""What one client may cost the API: connection slots, bytes of answers in flight, time to take a write.

- :class:`ConnectionTable`: at most ``max_connections`` at once; at the limit
  a newcomer takes the slot of the longest-idle connection (HTTP waiting for
  a request head, or a WebSocket without subscriptions waiting for a
  message), else it is refused at once. The accept loop never
  stops, so idle sockets cannot lock out ``/api/health`` (issue 11).
- :class:`InflightBudget`: the bytes all answers hold at once (REST record
  lists, WebSocket queries and replays), with a per-connection share; a
  request beyond it waits up to ``inflight_wait_s``, then gets 503.
- :func:`timed_sendall`: a write the client must take within ``write_timeout_s``.
"""

from __future__ import annotations

import errno
import socket
import time
import weakref
from collections import deque
from typing import Any, Callable, Iterator, Protocol, Sized

import gevent
import gevent.event

from gauss.core import QuoteBatch
from gauss.errors import GaussError

__all__ = [
    "SHARE_KEY",
    "ChargedStream",
    "ConnectionTable",
    "InflightBudget",
    "InflightLimit",
    "Charge",
    "Share",
    "WriteTimeout",
    "timed_sendall",
]


SHARE_KEY = "gauss.share"
"""WSGI environ key of the connection's :class:`Share` of the in-flight budget."""


class WriteTimeout(GaussError, ConnectionError):
    """The client took none of a write for ``write_timeout_s`` (its connection is cut)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(errno.ETIMEDOUT, f"client took no data for {seconds:g} s (write_timeout_s)")


def timed_sendall(sock: socket.socket, data: bytes, seconds: float) -> None:
    """``sock.sendall(data)`` that raises :class:`WriteTimeout` when the client stops reading.

    PERF: the common case (the kernel takes it all at once) costs one
    non-blocking send and no timer; the timer is armed only when it must wait.
    """
    try:
        sent = sock.send(data, 0, 0.0)  # type: ignore[call-arg]  # gevent's send: timeout 0 never waits
    except BlockingIOError:
        sent = 0
    if sent >= len(data):
        return
    timer = gevent.Timeout.start_new(seconds)
    try:
        sock.sendall(memoryview(data)[sent:])
    except gevent.Timeout as fired:
        if fired is not timer:
            raise
        raise WriteTimeout(seconds) from None
    finally:
        timer.close()


# --- connection slots ------------------------------------------------------------------


class Evictable(Protocol):
    evicted: bool

    def evict(self) -> None:
        """Close the connection so that its greenlet ends."""


class ConnectionTable:
    """Connection slots: ``limit`` at once; idle ones give way to newcomers (longest idle first)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.evictions = 0
        self.refusals = 0
        self._idle: dict[Evictable, None] = {}  # insertion order = idle since

    def admit(self) -> bool:
        """Take a slot (True), the slot of the longest-idle connection, or refuse (False)."""
        if self.open < self.limit:
            self.open += 1
            return True
        if self._idle:
            victim = next(iter(self._idle))
            del self._idle[victim]
            victim.evicted = True  # its slot passes to the newcomer: ``open`` stays
            victim.evict()
            self.evictions += 1
            return True
        self.refusals += 1
        return False

    def release(self, conn: Evictable) -> None:
        """``conn`` ended (an evicted connection gave its slot away already)."""
        self._idle.pop(conn, None)
        if not conn.evicted:
            self.open -= 1

    def idle(self, conn: Evictable) -> None:
        """``conn`` waits for a request head: it may be evicted from now on."""
        self._idle.pop(conn, None)
        self._idle[conn] = None

    def busy(self, conn: Evictable) -> None:
        """``conn`` has a request (or became a WebSocket): not evictable."""
        self._idle.pop(conn, None)

    @property
    def idle_count(self) -> int:
        return len(self._idle)


# --- bytes in flight ----------------------------------------------------------------------


class InflightLimit(GaussError, RuntimeError):
    """No room under ``max_inflight_bytes`` within ``inflight_wait_s``: answered 503."""


class Share:
    """What one connection holds of the budget."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = 0


class Charge:
    """Bytes one answer holds; :meth:`resize` when its real size is known, :meth:`close` when sent."""

    __slots__ = ("_budget", "_share", "bytes", "__weakref__")

    def __init__(self, budget: InflightBudget, share: Share, nbytes: int) -> None:
        self._budget: InflightBudget | None = budget
        self._share = share
        self.bytes = nbytes

    def resize(self, nbytes: int) -> None:
        budget = self._budget
        if budget is None:
            return
        delta = nbytes - self.bytes
        self.bytes = nbytes
        self._share.held += delta
        budget.held += delta
        if delta < 0:
            budget.notify()

    def close(self) -> None:
        """Give the bytes back (idempotent)."""
        budget, self._budget = self._budget, None
        if budget is None:
            return
        self._share.held -= self.bytes
        budget.held -= self.bytes
        self.bytes = 0
        budget.notify()


class InflightBudget:
    """``max_bytes`` for all answers at once, ``per_connection`` of it for one connection.

    One answer is always admitted when its connection (or the whole server)
    holds nothing else: an answer larger than the share is slow to get, never
    impossible, and memory stays within about ``max_bytes`` plus one answer.
    """

    DEFAULT_RECORD_BYTES = 200
    """Estimated JSON bytes of a record of a topic not answered yet (a quote is ~190 with seq and key)."""
    HOLD_FACTOR = 4
    """Bytes an answer holds per byte of its JSON: the record objects a storage builds for a query
    take ~3.5x their JSON (measured: tests/http/test_app.py), plus the chunk being written."""
    COLUMN_HOLD_BYTES = 64
    """What a quote of a columnar answer holds (a QuoteBatch gathered from the ring: 48 bytes of
    columns, its symbol's pointer, its seq): no record objects, the JSON written a chunk at a time."""

    def __init__(
        self, max_bytes: int, per_connection: int, wait_s: float, *, on_refusal: Callable[[], Any] | None = None
    ) -> None:
        self.max_bytes = max_bytes
        self.per_connection = per_connection
        self.wait_s = wait_s
        self.held = 0
        self._on_refusal = on_refusal
        self._waiters: deque[gevent.event.Event] = deque()
        self._hold_bytes: dict[str, int] = {}

    def estimate(self, topic: str, records: int) -> int:
        """Estimated bytes an answer of ``records`` records of ``topic`` holds (from its last answer)."""
        return records * self._hold_bytes.get(topic, self.DEFAULT_RECORD_BYTES * self.HOLD_FACTOR)

    def learn(self, topic: str, record_bytes: int, *, columnar: bool = False) -> None:
        """Remember what a record of ``topic``'s answers holds, from its measured JSON bytes.

        ``columnar``: the answer was a QuoteBatch, whose quotes hold
        :attr:`COLUMN_HOLD_BYTES` each whatever their JSON; charged like record
        objects, one client that never read a 100,000-quote answer held 67 MB of
        the budget and every other such answer got 503 until it was cut off.
        """
        if len(self._hold_bytes) > 10_000:  # template topics: keep it bounded
            self._hold_bytes.clear()
        self._hold_bytes[topic] = self.COLUMN_HOLD_BYTES if columnar else max(1, record_bytes) * self.HOLD_FACTOR

    def _fits(self, share: Share, nbytes: int) -> bool:
        if share.held and share.held + nbytes > self.per_connection:
            return False
        return not self.held or self.held + nbytes <= self.max_bytes

    def admit(self, share: Share, nbytes: int) -> Charge:
        """Hold ``nbytes`` for an answer; wait up to ``wait_s`` for room, else raise :class:`InflightLimit`."""
        if not self._fits(share, nbytes):
            deadline = time.monotonic() + self.wait_s
            while not self._fits(share, nbytes):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if self._on_refusal is not None:
                        self._on_refusal()
                    raise InflightLimit(
                        f"server at its limit for answers in flight ({self.held} of {self.max_bytes} bytes, "
                        f"this connection {share.held} of {self.per_connection}); retry shortly or ask for less"
                    )
                event = gevent.event.Event()
                self._waiters.append(event)
                try:
                    event.wait(remaining)
                finally:
                    try:
                        self._waiters.remove(event)
                    except ValueError:
                        pass
        share.held += nbytes
        self.held += nbytes
        return Charge(self, share, nbytes)

    def measured(self, charge: Charge, topic: str, records: Sized) -> Callable[[int], None]:
        """An ``on_measure`` for an answer of ``records``: learn what its records hold, resize ``charge``."""
        columnar, count = isinstance(records, QuoteBatch), len(records)

        def on_measure(record_bytes: int) -> None:
            self.learn(topic, record_bytes, columnar=columnar)
            charge.resize(self.estimate(topic, count))

        return on_measure

    def notify(self) -> None:
        """Room was given back: every waiter re-checks."""
        while self._waiters:
            self._waiters.popleft().set()


class ChargedStream:
    """An answer's chunks (a WSGI body); its charge goes back when it is sent, cut off or dropped."""

    def __init__(self, chunks: Iterator[bytes], charge: Charge) -> None:
        self._chunks = chunks
        self._charge = charge
        # A body Falcon or the server drops without closing must not keep its bytes forever.
        weakref.finalize(self, charge.close)

    def __iter__(self) -> ChargedStream:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._chunks)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._charge.close()
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
