"""Sources: transport -> framing -> middleware* -> codec -> checks -> bounded queue -> topic.

Each connection is read by its own greenlet in big chunks; the framing
kernel splits a chunk into frames, and the whole list of frames goes through
middleware, codec and (for quote topics) :class:`~gauss.quotes.QuoteCheck`
as one batch. Good records go to the source's bounded queue; one greenlet
per source drains that queue and publishes everything waiting as one batch,
so several connections feed their topic in big batches and in order.

The framing, middleware and codec are one :class:`~gauss.wire.WireFormat`
(the one a sink and ``gauss-quotes-gen`` use too), which also holds the
SPEC section 2 rule and the quote fast path (PERF: a codec's fused
``decode_quotes`` for a quote topic).

Bad input (SPEC section 6) never stops a connection: a bad frame or
rejected quote is dropped, counted and, when the source names a
``dead_letter`` topic, published there with its reason and raw bytes
(base64). Only a frame longer than ``max_frame_bytes`` closes its
connection (the stream cannot be re-synchronised), and so does a read whose
frames the middleware would inflate past ``max_inflate_bytes`` (default
4 MiB; issue 11: one 256 KiB read of small gzip bombs inflated to 248 MiB
and held the loop for 0.68 s). The budget is per read and the reader yields
after every read, so no connection holds the loop longer than inflating
one budget takes.

Connections are not logged one line each (2,000 empty connections wrote
thousands of lines, issue 11): they are counted, and the hub's status line
reports the counts.
"""

from __future__ import annotations

import base64
import builtins
import logging
import time
from typing import Any, Callable, Sequence

import gevent

from gauss.config import SourceSpec
from gauss.core import TopicRecord
from gauss.errors import FrameTooLarge, InflateBudgetExceeded
from gauss.metrics import MetricCount, Metrics
from gauss.protocols import Codec, Connection, CountingTransport, FeedingTransport, Framing, Middleware, Transport
from gauss.quotes import QuoteCheck, RecordCheck
from gauss.ratelimit import RateLimitedLog
from gauss.records import DataFormat, Rejected
from gauss.subscription import BoundedQueue, PublishedBatch
from gauss.topics import Topic, TopicRegistry
from gauss.wire import WireFormat

__all__ = ["Source", "CHUNK_BYTES"]

log = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 1024
"""Bytes read per recv: large enough that per-chunk overhead vanishes at 500k quotes/s."""

MAX_DEAD_LETTER_RAW = 64 * 1024
"""Raw bytes kept per dead letter (a longer payload is cut, and says so)."""


class Source:
    """One configured source: accepts or dials connections and feeds its topic."""

    def __init__(
        self,
        spec: SourceSpec,
        topics: TopicRegistry,
        metrics: Metrics | None = None,
        *,
        transport: Transport | None = None,
        wire: WireFormat | None = None,
    ) -> None:
        self.spec = spec
        self.transport: Transport = transport if transport is not None else spec.build_transport()
        self.wire = wire if wire is not None else spec.build_wire()
        self.topic: Topic = topics.resolve(spec.topic)
        self.dead_letter: Topic | None = topics.resolve(spec.dead_letter) if spec.dead_letter else None
        # SPEC 1 "What a topic can hold": every record is checked at the door (gauss.quotes), quotes more strictly.
        if self.topic.format is DataFormat.QUOTE:
            self.check: RecordCheck = QuoteCheck(spec.max_future_ms, spec.check_prices, spec.max_key_bytes)
        else:
            self.check = RecordCheck(spec.max_key_bytes)
        self.max_frame_bytes = spec.max_frame_bytes
        self.max_inflate_bytes = spec.max_inflate_bytes
        self.name = spec.name or f"{spec.topic}@{self.transport.description}"
        # The counters live once, in Metrics (a source made alone gets a Metrics of its own).
        self._metrics = metrics = metrics if metrics is not None else Metrics()
        label = metrics.claim_label("source", spec.name or spec.topic)
        self.label = label
        self.queue = BoundedQueue(
            self.topic.name,
            policy=spec.policy,
            capacity=spec.queue_size,
            kind="source",
            on_shed=metrics.source_dropped(label).inc,
        )
        self.ended = 0
        """Connections that have ended (for the status line's churn counts)."""
        self.connected_at = 0.0
        """``time.perf_counter()`` of the latest connection (for benchmarks)."""
        self._closed_metrics: dict[str, Any] = {}
        self._m_connections = metrics.source_connections(label)
        self._m_open = metrics.source_open(label)
        self._m_frames = metrics.source_frames(label)
        self._m_bytes = metrics.source_bytes(label)
        self._m_records = metrics.source_records(label)
        self._m_bad = metrics.decode_errors(label, "bad_frame")
        self._m_rejected = metrics.decode_errors(label, "rejected_quote")
        self._m_oversize = metrics.decode_errors(label, "oversize_frame")
        self._m_inflate_closed = self._closed_counter("inflate_budget")
        self._bad_log = RateLimitedLog(log)
        self._close_log = RateLimitedLog(log)
        if isinstance(self.transport, CountingTransport):
            self.transport.on_close = self._count_closed
        self._pump: gevent.Greenlet | None = None
        self.published_hooks: list[Callable[[Sequence[TopicRecord], bool | None], None]] = []
        """Called with ``(records, None)`` right before each publish and ``(records, stored)`` after it:
        a bus transport notes what it is about to store, and acknowledges its messages once stored."""

    @property
    def address(self) -> tuple[str, int]:
        """The transport's address (the bound port of a ``tcp-server`` on port 0)."""
        return self.transport.address  # type: ignore[attr-defined, no-any-return]

    @property
    def framing(self) -> Framing:
        return self.wire.framing

    @property
    def middleware(self) -> Sequence[Middleware]:
        return self.wire.middleware

    @property
    def codec(self) -> Codec:
        return self.wire.codec

    @property
    def open_connections(self) -> int:
        """Connections open now (0 for a transport that does not count them, a message bus)."""
        return self.transport.connections if isinstance(self.transport, CountingTransport) else 0

    @property
    def closed_by(self) -> dict[str, int]:
        """Connections the transport (limits, idle timeouts) or the source (``inflate_budget``) closed, by reason."""
        closed = dict(self.transport.closed_by) if isinstance(self.transport, CountingTransport) else {}
        closed["inflate_budget"] = self.inflate_closed
        return closed

    @property
    def description(self) -> str:
        return f"source {self.name}: {self.transport.description} ({self.wire.chain()}) -> topic {self.topic.name}"

    # --- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start the publisher greenlet, then listen or dial (raises OSError if it cannot bind)."""
        self._pump = gevent.spawn(self._publish_loop)
        try:
            if isinstance(self.transport, FeedingTransport):  # a message bus (nats) feeds ingest itself
                self.transport.attach_source(self)
            self.transport.serve(self._handle)
        except BaseException:
            self.queue.close()
            raise
        if self.spec.name is None:  # now with the bound port
            self.name = f"{self.spec.topic}@{self.transport.description}"

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close connections, publish everything already queued."""
        self.transport.close()
        self.queue.seal()
        if self._pump is not None:
            self._pump.join(timeout=timeout)
            if not self._pump.dead:
                log.warning("source %s: %d queued records not published within %.1fs", self.name, self.queue.depth, timeout)
                self._pump.kill(block=False)

    def _publish_loop(self) -> None:
        queue = self.queue
        publish = self.topic.publish
        while True:
            delivery = queue.take()
            if delivery is None:
                return
            errors = self.topic.write_errors
            stored = True
            for hook in self.published_hooks:
                hook(delivery.records, None)
            try:
                publish(delivery.records, owned=True)
            except Exception:  # noqa: BLE001 - keep publishing later batches
                stored = False
                log.exception("source %s: publishing to %s failed", self.name, self.topic.name)
            if self.published_hooks:
                stored = stored and self.topic.write_errors == errors
                for hook in self.published_hooks:
                    hook(delivery.records, stored)

    # --- counters (held once, in Metrics) ------------------------------------------

    connections = MetricCount("_m_connections", "Connections accepted or made (``gauss_source_connections``).")
    frames = MetricCount("_m_frames", "Frames received (``gauss_source_frames``).")
    bytes = MetricCount("_m_bytes", "Bytes received (``gauss_source_bytes``).")
    records = MetricCount("_m_records", "Records accepted (``gauss_source_records``).")
    bad_frames = MetricCount("_m_bad", "Bad frames or payloads (``gauss_source_decode_errors{reason=bad_frame}``).")
    rejected_quotes = MetricCount("_m_rejected", "Quotes the SPEC 1 checks refused (``reason=rejected_quote``).")
    oversize = MetricCount("_m_oversize", "Frames over ``max_frame_bytes``, each closed its connection (``reason=oversize_frame``).")
    inflate_closed = MetricCount("_m_inflate_closed", "Connections closed because one read would inflate past ``max_inflate_bytes``.")

    def _closed_counter(self, reason: str) -> Any:
        counter = self._closed_metrics.get(reason)
        if counter is None:
            counter = self._closed_metrics[reason] = self._metrics.source_closed(self.label, reason)
        return counter

    def _count_closed(self, reason: str) -> None:
        """A connection the source (or its transport) closed itself, counted by reason."""
        self._closed_counter(reason).inc()

    # --- one connection ----------------------------------------------------------

    def _handle(self, conn: Connection) -> None:
        self.connected_at = time.perf_counter()
        self._m_connections.inc()
        self._m_open.inc()
        log.debug("source %s: connection from %s", self.name, conn.peer)
        decoder = self.wire.decoder()
        recv = conn.recv
        feed = decoder.feed
        sleep = gevent.sleep
        count_bytes = self._m_bytes.inc
        try:
            while True:
                chunk = recv(CHUNK_BYTES)
                if not chunk:
                    break
                count_bytes(len(chunk))
                oversize: FrameTooLarge | None = None
                try:
                    frames = feed(chunk)
                except FrameTooLarge as exc:
                    self._m_oversize.inc()
                    frames, oversize = exc.frames, exc  # the whole frames before it are kept (SPEC section 6)
                if frames:
                    try:
                        self.ingest(frames, conn.peer)
                    except InflateBudgetExceeded as exc:
                        self._m_inflate_closed.inc()
                        self._close_log("source %s: closing connection %s: %s", self.name, conn.peer, exc)
                        return
                if oversize is not None:
                    self._close_log("source %s: closing connection %s: %s", self.name, conn.peer, oversize)
                    return
                # PERF: let the publisher and the subscribers run after every chunk. A
                # socket with data waiting never yields, so the reader would otherwise
                # fill the whole queue first; shallow queues keep records young, and the
                # cyclic GC's full collections (32 ms each with 100k records in flight)
                # were a third of the ingest time.
                sleep(0)
        finally:
            self.ended += 1
            self._m_open.dec()
            log.debug("source %s: connection %s closed", self.name, conn.peer)

    @property
    def metrics(self) -> Metrics:
        """The hub's metrics this source counts in (a transport with series of its own registers there)."""
        return self._metrics

    def count_received(self, size: int) -> None:
        """Count ``size`` bytes a feeding transport took (a message; a stream source counts its reads itself)."""
        self._m_bytes.inc(size)

    def count_refused_frame(self, *, oversize: bool) -> None:
        """Count a frame a feeding transport's framing refused: over ``max_frame_bytes``, or cut short by its message's end."""
        (self._m_oversize if oversize else self._m_bad).inc()

    def ingest(self, frames: Sequence[builtins.bytes], peer: str = "") -> int:  # builtins: ``bytes`` is a count here
        """Decode a batch of frames and queue the good records (bad ones are counted); returns how many were good.

        Raises :class:`InflateBudgetExceeded` (and queues nothing of the
        batch) when the middleware would inflate it past ``max_inflate_bytes``.
        """
        self._m_frames.inc(len(frames))
        records, bad, refused = self.wire.decode(
            frames, self.check, max_frame_bytes=self.max_frame_bytes, budget=self.max_inflate_bytes
        )
        if bad:
            self._m_bad.inc(len(bad))
            self._reject(bad, peer, "bad frame")
        if refused:
            self._m_rejected.inc(len(refused))
            self._reject(refused, peer, "rejected quote")
        if records:
            self._m_records.inc(len(records))
            self.queue.offer(PublishedBatch(self.topic.name, records))
        return len(records)

    def _reject(self, rejected: list[Rejected], peer: str, what: str) -> None:
        first = rejected[0]
        self._bad_log(
            "source %s: dropped %d %s(s) from %s, e.g. %s: %.120r", self.name, len(rejected), what, peer, first.reason, first.raw[:120]
        )
        if self.dead_letter is None:
            return
        now = int(time.time() * 1000)
        letters = [TopicRecord(now, self.name, self._letter(r, peer)) for r in rejected]
        try:
            self.dead_letter.publish(letters, owned=True)
        except Exception:  # noqa: BLE001 - a broken dead-letter topic must not stop ingest
            log.exception("source %s: publishing to dead-letter topic %s failed", self.name, self.dead_letter.name)

    def _letter(self, rejected: Rejected, peer: str) -> dict[str, Any]:
        raw = rejected.raw
        letter: dict[str, Any] = {"source": self.name, "peer": peer, "reason": rejected.reason}
        if len(raw) > MAX_DEAD_LETTER_RAW:
            letter["raw_bytes"] = len(raw)
            raw = raw[:MAX_DEAD_LETTER_RAW]
            letter["truncated"] = True
        letter["raw"] = base64.b64encode(raw).decode("ascii")
        return letter
