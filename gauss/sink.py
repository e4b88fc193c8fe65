"""Sinks: topic -> one bounded queue per client -> codec -> middleware* -> framing -> transport.

The mirror of :mod:`gauss.source`. A sink implements
:class:`~gauss.protocols.TopicSink`: the hub attaches it to its topic and
starts it; :class:`StreamSink` (``type = "stream"`` in ``[[sinks]]``) is the
built-in one, a fan-out of one topic to every connection of a transport,
over the same :class:`~gauss.wire.WireFormat` a source reads.

With a ``tcp-server`` transport every connected client gets its own
subscription to the topic: a bounded queue with the sink's ``queue_size`` and
``policy`` (default ``drop``), so a client that stops reading loses records
(counted in ``gauss_subscriber_dropped_records_total{kind="sink"}``) and never
slows the others or ingest. A batch is encoded once, whatever the number of
clients (the bytes are cached on the published batch). With ``tcp-client``
the one downstream connection is a client like any other; records published
while it is disconnected are not sent. A connection that takes records
rather than bytes (:class:`~gauss.protocols.RecordConnection`, a message
bus) gets each batch with the encoder to route it itself.

A client that stops reading is not kept forever (issue 11: it pinned up to
``queue_size`` records): a write that does not complete within
``write_timeout_s`` (default 30, like the API's) closes the connection, and
a watchdog disconnects a client whose queue has overflowed continuously for
``overflow_grace_s`` (default 10, like the WebSocket one). Both are counted
in ``gauss_sink_disconnects_total{reason}`` and the hub's status line, and
logged rate-limited, never one line per client.

A client receives the records published after it connected; a sink sends
payloads (``data``), not whole records (SPEC section 2).
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Sequence

import gevent
import msgspec

from gauss.core import TopicRecord
from gauss.metrics import MetricCount, Metrics, current
from gauss.protocols import Connection, CountingTransport, RecordConnection, SinkAwareTransport, Transport
from gauss.ratelimit import RateLimitedLog
from gauss.records import OverflowPolicy
from gauss.registry import TransportSpec
from gauss.subscription import DEFAULT_CAPACITY, Subscription
from gauss.topics import Topic
from gauss.wire import WireConfig, WireFormat

__all__ = ["StreamSink", "StreamSinkConfig", "DEFAULT_WRITE_TIMEOUT_S", "DEFAULT_OVERFLOW_GRACE_S"]

log = logging.getLogger(__name__)

DEFAULT_WRITE_TIMEOUT_S = 30.0
"""Seconds one write to a client may take before the client is disconnected (the API's default)."""

DEFAULT_OVERFLOW_GRACE_S = 10.0
"""Seconds a client's queue may stay overflowed before the client is disconnected (the WebSocket default)."""


_OWN_REASONS = ("write_timeout", "slow")
"""Why the sink itself disconnects a client (its transport has reasons of its own: max_connections, ...)."""


class StreamSinkConfig(WireConfig, frozen=True, kw_only=True):
    """A ``stream`` sink's own keys: its transport, its wire format (``framing``, ``middleware``, ``codec``) and its limits."""

    transport: TransportSpec
    write_timeout_s: Annotated[float, msgspec.Meta(ge=0.001)] = DEFAULT_WRITE_TIMEOUT_S
    overflow_grace_s: Annotated[float, msgspec.Meta(ge=0.0)] = DEFAULT_OVERFLOW_GRACE_S


class _Client:
    """One connected client: its connection, its queue and what the watchdog knows of it."""

    __slots__ = ("conn", "sub", "seen_dropped", "overflowing_since", "cut")

    def __init__(self, conn: Connection, sub: Subscription) -> None:
        self.conn = conn
        self.sub = sub
        self.seen_dropped = 0
        self.overflowing_since: float | None = None
        self.cut = ""
        """Why the sink disconnected it ("" while it has not)."""


class StreamSink:
    """Fan-out of one topic to every connection of a transport (a :class:`~gauss.protocols.TopicSink`)."""

    name = "stream"
    Config = StreamSinkConfig

    @classmethod
    def from_config(cls, config: StreamSinkConfig) -> StreamSink:
        return cls(
            config.transport.build(),
            WireFormat.from_config(config),
            write_timeout_s=config.write_timeout_s,
            overflow_grace_s=config.overflow_grace_s,
        )

    def __init__(
        self,
        transport: Transport,
        wire: WireFormat,
        *,
        write_timeout_s: float = DEFAULT_WRITE_TIMEOUT_S,
        overflow_grace_s: float = DEFAULT_OVERFLOW_GRACE_S,
    ) -> None:
        self.transport = transport
        self.wire = wire
        self.write_timeout_s = write_timeout_s
        self.overflow_grace_s = overflow_grace_s
        self.capacity = DEFAULT_CAPACITY
        self.policy = OverflowPolicy.DROP
        self.bytes_sent = 0
        self._topic: Topic | None = None
        self._clients: dict[Subscription, _Client] = {}
        self._stopping = False
        self._label = ""
        self._metrics = Metrics()  # the hub's, once attached; the counters live once, there
        self._count_with(self._metrics)
        self._watchdog: gevent.Greenlet | None = None
        self._cut_log = RateLimitedLog(log)
        if isinstance(transport, CountingTransport):
            transport.on_close = self._count_disconnect

    @property
    def description(self) -> str:
        topic = self._topic.name if self._topic is not None else "(detached)"
        return f"sink {topic}: {self.transport.description} ({self.wire.chain(outbound=True)})"

    @property
    def address(self) -> tuple[str, int]:
        return self.transport.address  # type: ignore[attr-defined, no-any-return]

    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def idle(self) -> bool:
        return all(sub.depth == 0 for sub in self._clients)

    @property
    def closed_by(self) -> dict[str, int]:
        """Clients the transport (``max_connections``, ``idle_timeout``, ...) or the sink disconnected, by reason."""
        transport = self.transport
        return {**(transport.closed_by if isinstance(transport, CountingTransport) else {}), **self.disconnects}

    records_sent = MetricCount("_sent", "Records written to clients (``gauss_sink_records_sent``).")

    @property
    def disconnects(self) -> dict[str, int]:
        """Clients the sink disconnected itself, by reason (``gauss_sink_disconnects``)."""
        return {reason: int(current(self._metrics.sink_disconnects(self._label, reason))) for reason in _OWN_REASONS}

    def _count_with(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._sent = metrics.sink_sent(self._label)
        self._clients_gauge = metrics.sink_clients(self._label)
        for reason in _OWN_REASONS:  # the series exist (at 0) from the start
            metrics.sink_disconnects(self._label, reason)

    def _count_disconnect(self, reason: str) -> None:
        """A client the sink (or its transport: max_connections, idle_timeout, ...) disconnected."""
        self._metrics.sink_disconnects(self._label, reason).inc()

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
        self._label = label or topic.name
        self._count_with(metrics if metrics is not None else self._metrics)
        if isinstance(self.transport, SinkAwareTransport):
            self.transport.attach_sink(topic.name, self._metrics)

    def start(self) -> None:
        self._stopping = False
        self.transport.serve(self._serve_client)
        if self._watchdog is None:
            self._watchdog = gevent.spawn(self._watch)

    def encode(self, records: Sequence[TopicRecord]) -> bytes:
        """The wire bytes of a batch: codec, then middleware, then framing."""
        return self.wire.encode(records)

    def _serve_client(self, conn: Connection) -> None:
        if self._stopping:
            return
        if self._topic is not None:
            sub = self._topic.subscribe(policy=self.policy, capacity=self.capacity, kind="sink")
        else:
            sub = Subscription(None, policy=self.policy, capacity=self.capacity, kind="sink")
        client = self._clients[sub] = _Client(conn, sub)
        gauge = self._clients_gauge
        sent = self._sent
        gauge.inc()
        log.debug("%s: client %s connected", self.description, conn.peer)
        encode = self.encode
        sendall = conn.sendall
        send_records = conn.send_records if isinstance(conn, RecordConnection) else None
        # One timer per client, restarted for each write (PERF: no new object per batch).
        timer = gevent.Timeout(self.write_timeout_s)
        try:
            while True:
                delivery = sub.take()
                if delivery is None:
                    return
                for batch in delivery.batches:
                    if send_records is not None:
                        self.bytes_sent += send_records(batch.topic, batch.records, encode)
                        sent.inc(len(batch.records))
                        continue
                    data = batch.encoded(self.wire.key, encode)
                    if data:
                        timer.start()
                        try:
                            sendall(data)
                        finally:
                            timer.cancel()
                        self.bytes_sent += len(data)
                        sent.inc(len(batch.records))
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            self._cut(client, "write_timeout", f"a write took longer than write_timeout_s ({self.write_timeout_s:g} s)")
        except OSError as exc:
            if not client.cut:
                log.debug("%s: client %s gone: %s", self.description, conn.peer, exc)
        finally:
            self._clients.pop(sub, None)
            gauge.dec()
            if sub.dropped:
                log.debug("%s: client %s lost %d records (too slow)", self.description, conn.peer, sub.dropped)
            sub.close()

    def _cut(self, client: _Client, reason: str, why: str) -> None:
        if client.cut:
            return
        client.cut = reason
        self._count_disconnect(reason)
        self._cut_log("%s: disconnected client %s: %s", self.description, client.conn.peer, why)
        client.conn.close()
        client.sub.close()

    def _watch(self) -> None:
        """Disconnect clients whose queues stay overflowed (new drops, or full) for ``overflow_grace_s``.

        Also ends the subscription of a client whose connection the transport
        closed (``max_connections``, ``idle_timeout_s``): on a quiet topic its
        greenlet waits for records, not on the socket, and would otherwise
        hold its subscription until the next publish.
        """
        grace = self.overflow_grace_s
        interval = min(0.5, max(0.02, grace / 4))
        while True:
            gevent.sleep(interval)
            now = time.monotonic()
            for client in list(self._clients.values()):
                sub = client.sub
                if client.conn.closed:
                    sub.close()
                    continue
                dropped = sub.dropped
                overflowing = dropped != client.seen_dropped or sub.depth >= sub.capacity
                client.seen_dropped = dropped
                if not overflowing:
                    client.overflowing_since = None
                elif client.overflowing_since is None:
                    client.overflowing_since = now
                elif now - client.overflowing_since >= grace:
                    self._cut(
                        client,
                        "slow",
                        f"its queue overflowed for {now - client.overflowing_since:.1f} s (overflow_grace_s)",
                    )

    def stop(self, timeout: float = 2.0) -> None:
        """Send what the clients' queues hold (up to ``timeout``), then close every connection."""
        self._stopping = True
        for sub in list(self._clients):
            sub.seal()
        deadline = time.monotonic() + timeout
        while self._clients and time.monotonic() < deadline:
            gevent.sleep(0.01)
        if self._watchdog is not None:
            self._watchdog.kill(block=False)
            self._watchdog = None
        self.transport.close()
