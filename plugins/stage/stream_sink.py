"""``stream`` sink: a topic's records out over a transport (codec -> middleware* -> framing).

With a ``tcp-server`` transport every connected client gets its own
subscription to the topic: a bounded queue with the sink's ``queue_size`` and
``policy`` (default ``drop``), so a client that stops reading loses records
(counted in ``gauss_subscriber_dropped_records_total{kind="sink"}``) and never
slows the others or ingest. A batch is encoded once, whatever the number of
clients (the bytes are cached on the published batch). With ``tcp-client``
the one downstream connection is a client like any other; records published
while it is disconnected are not sent.

A client receives the records published after it connected; a sink sends
payloads (``data``), not whole records (SPEC section 2).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import gevent

from gauss.core import TopicRecord
from gauss.errors import ConfigError
from gauss.metrics import Metrics
from gauss.protocols import Codec, Connection, Framing, Middleware, Transport
from gauss.records import OverflowPolicy
from gauss.registry import Options
from gauss.registry import create as create_plugin
from gauss.subscription import DEFAULT_CAPACITY, PublishedBatch, Subscription
from gauss.topics import Topic

__all__ = ["StreamSink", "create"]

log = logging.getLogger(__name__)


class StreamSink:
    """Fan-out of one topic to every connection of a transport."""

    name = "stream"

    def __init__(
        self, transport: Transport, framing: Framing, codec: Codec, middleware: Sequence[Middleware] = ()
    ) -> None:
        self.transport = transport
        self.framing = framing
        self.codec = codec
        self.middleware = list(middleware)
        self.capacity = DEFAULT_CAPACITY
        self.policy = OverflowPolicy.DROP
        self.records_sent = 0
        self.bytes_sent = 0
        self._topic: Topic | None = None
        self._clients: set[Subscription] = set()
        self._stopping = False
        self._label = ""
        self._metrics: Metrics | None = None

    @property
    def description(self) -> str:
        chain = " -> ".join([self.codec.name, *(m.name for m in self.middleware), self.framing.name])
        topic = self._topic.name if self._topic is not None else "(detached)"
        return f"sink {topic}: {self.transport.description} ({chain})"

    @property
    def address(self) -> tuple[str, int]:
        return self.transport.address  # type: ignore[attr-defined, no-any-return, union-attr]

    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def idle(self) -> bool:
        return all(sub.depth == 0 for sub in self._clients)

    def attach(
        self,
        topic: Topic,
        *,
        capacity: int = DEFAULT_CAPACITY,
        policy: OverflowPolicy | str = OverflowPolicy.DROP,
        metrics: Metrics | None = None,
        label: str | None = None,
    ) -> None:
        """Subscribe each client straight to ``topic`` with these queue settings (called before start)."""
        self._topic = topic
        self.capacity = capacity
        self.policy = OverflowPolicy.parse(policy)
        self._metrics = metrics
        self._label = label or topic.name

    def start(self) -> None:
        self._stopping = False
        self.transport.serve(self._serve_client)

    def encode(self, records: list[TopicRecord]) -> bytes:
        """The wire bytes of a batch: codec, then middleware, then framing."""
        payloads = self.codec.encode(records)
        for middleware in self.middleware:
            payloads = middleware.encode(payloads)
        return self.framing.encode(payloads) if payloads else b""

    def _serve_client(self, conn: Connection) -> None:
        if self._stopping:
            return
        if self._topic is not None:
            sub = self._topic.subscribe(policy=self.policy, capacity=self.capacity, kind="sink")
        else:
            sub = Subscription(None, policy=self.policy, capacity=self.capacity, kind="sink")
        self._clients.add(sub)
        gauge = self._metrics.sink_clients(self._label) if self._metrics is not None else None
        sent = self._metrics.sink_sent(self._label) if self._metrics is not None else None
        if gauge is not None:
            gauge.inc()
        log.info("%s: client %s connected", self.description, conn.peer)
        encode = self.encode
        try:
            while True:
                delivery = sub.take()
                if delivery is None:
                    return
                for batch in delivery.batches:
                    data = batch.encoded(self, encode)
                    if data:
                        conn.sendall(data)
                        n = len(batch.records)
                        self.records_sent += n
                        self.bytes_sent += len(data)
                        if sent is not None:
                            sent.inc(n)
        except OSError as exc:
            log.info("%s: client %s gone: %s", self.description, conn.peer, exc)
        finally:
            self._clients.discard(sub)
            if gauge is not None:
                gauge.dec()
            if sub.dropped:
                log.info("%s: client %s lost %d records (too slow)", self.description, conn.peer, sub.dropped)
            sub.close()

    def write(self, records: Sequence[TopicRecord]) -> None:
        """Offer a batch to every client queue (for use without :meth:`attach`); never blocks under ``drop``."""
        if not records:
            return
        batch = PublishedBatch(self._topic.name if self._topic is not None else "", list(records))
        for sub in list(self._clients):
            sub.offer(batch)

    def stop(self, timeout: float = 2.0) -> None:
        """Send what the clients' queues hold (up to ``timeout``), then close every connection."""
        self._stopping = True
        for sub in list(self._clients):
            sub.seal()
        deadline = time.monotonic() + timeout
        while self._clients and time.monotonic() < deadline:
            gevent.sleep(0.01)
        self.transport.close()


def create(table: dict[str, Any]) -> StreamSink:
    """Create a ``stream`` sink from its table.

    Options: ``transport`` (required), ``framing`` (default lines), ``codec``
    (default json), ``middleware`` (default none).
    """
    opts = Options(table)
    transport = create_plugin("transport", opts.raw("transport"), where="transport")
    framing = create_plugin("framing", opts.raw("framing", "lines"), where="framing")
    middleware_value = opts.raw("middleware", [])
    if not isinstance(middleware_value, list):
        raise ConfigError("middleware", f"must be a list of middleware types or tables, got {middleware_value!r}")
    middleware = [create_plugin("middleware", m, where=f"middleware[{i}]") for i, m in enumerate(middleware_value)]
    codec = create_plugin("codec", opts.raw("codec", "json"), where="codec")
    opts.done()
    if getattr(framing, "text_only", False):
        if not getattr(codec, "text", False):
            raise ConfigError(
                "codec",
                f"codec {codec.name!r} is binary; {framing.name!r} framing carries text codecs only "
                "(SPEC section 2); use length-prefixed framing",
            )
        if middleware:
            raise ConfigError(
                "middleware",
                f"{framing.name!r} framing carries uncompressed text only (SPEC section 2); "
                "use length-prefixed framing with middleware",
            )
    return StreamSink(transport, framing, codec, middleware)
