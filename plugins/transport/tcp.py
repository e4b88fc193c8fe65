"""TCP transports on gevent: ``tcp-server`` (listen, many connections) and ``tcp-client`` (dial, reconnect).

Both hand each connection to the stage's handler in its own greenlet. The
server binds synchronously in :meth:`TcpServer.serve` (so a port in use
fails at start). The client reconnects with capped exponential back-off and
logs once per outage, not once per attempt. Sockets get TCP_NODELAY (quotes
are small and latency matters) and large kernel buffers (ingest reads
256 KiB at a time).

Hostile or careless clients (issue 11): a server at ``max_connections``
closes its longest-idle connection to admit the new one, so idle sockets can
never lock a real feeder out (refusing the newcomer would let 1,024 silent
sockets keep every feeder away). ``idle_timeout_s`` (off by default: a feed
may be silent for a while) closes connections that have been silent that
long; ``max_connections_per_peer`` (off by default: feeds often share one
address) makes a peer at its limit give up its own longest-idle connection,
so one address cannot push out everyone else. A descriptor limit reached in
``accept`` is treated like ``max_connections``. None of this logs per
connection: the server counts (:attr:`TcpServer.closed_by`,
:attr:`TcpServer.accepted`) and the hub's status line reports the counts.
"""

from __future__ import annotations

import errno
import logging
import socket as _stdsocket
import time
from typing import Annotated, Any, Callable

import gevent
import gevent.socket
import msgspec

from gauss.errors import ConfigError
from gauss.listening import listen
from gauss.ratelimit import RateLimitedLog
from gauss.registry import PluginConfig, check_bind

__all__ = [
    "TcpConnection",
    "TcpServer",
    "TcpClient",
    "TcpSocketConfig",
    "TcpServerConfig",
    "TcpClientConfig",
    "CLOSE_REASONS",
]

log = logging.getLogger(__name__)

DEFAULT_BUFFER = 1 << 20
DEFAULT_MAX_CONNECTIONS = 1024

CLOSE_REASONS = ("max_connections", "per_peer", "idle_timeout", "descriptors")
"""Why a ``tcp-server`` closed a connection itself (keys of :attr:`TcpServer.closed_by`)."""

Handler = Callable[["TcpConnection"], None]

_monotonic = time.monotonic

_Host = Annotated[str, msgspec.Meta(min_length=1)]
_Buffer = Annotated[int, msgspec.Meta(ge=0, le=1 << 30)]
_Seconds = Annotated[float, msgspec.Meta(ge=0.001)]


class TcpSocketConfig(PluginConfig, frozen=True, kw_only=True):
    """The socket options both TCP transports take."""

    nodelay: bool = True
    """Set TCP_NODELAY (quotes are small and latency matters)."""
    recv_buffer: _Buffer = DEFAULT_BUFFER
    """SO_RCVBUF in bytes (0: the kernel's default)."""
    send_buffer: _Buffer = DEFAULT_BUFFER
    """SO_SNDBUF in bytes (0: the kernel's default)."""


class TcpServerConfig(TcpSocketConfig, frozen=True, kw_only=True):
    """The options of a ``tcp-server`` transport."""

    bind: _Host = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)]
    """The port to listen on (0: any free port)."""
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_MAX_CONNECTIONS
    """When full, the longest-idle connection is closed to admit a new one."""
    max_connections_per_peer: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Connections one address may hold (0: no limit)."""
    idle_timeout_s: _Seconds | None = None
    """Seconds without a byte in or out after which a connection is closed (None: never)."""
    backlog: Annotated[int, msgspec.Meta(ge=1)] = 128
    """The listen() backlog."""

    def __post_init__(self) -> None:
        check_bind("bind", self.bind)

    def listen_address(self) -> tuple[str, int]:
        return (self.bind, self.port)


class TcpClientConfig(TcpSocketConfig, frozen=True, kw_only=True):
    """The options of a ``tcp-client`` transport."""

    host: _Host = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)]
    reconnect_min: _Seconds = 0.1
    """The first back-off after a failed connect, in seconds (doubled each attempt)."""
    reconnect_max: _Seconds = 5.0
    """The longest back-off, in seconds."""
    connect_timeout: _Seconds = 5.0
    """Seconds one connect attempt may take."""

    def __post_init__(self) -> None:
        if self.reconnect_max < self.reconnect_min:
            raise ConfigError("reconnect_max", f"must be at least reconnect_min ({self.reconnect_min}), got {self.reconnect_max}")


def _tune(sock: Any, nodelay: bool, recv_buffer: int, send_buffer: int) -> None:
    if nodelay:
        sock.setsockopt(_stdsocket.IPPROTO_TCP, _stdsocket.TCP_NODELAY, 1)
    if recv_buffer:
        sock.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_RCVBUF, recv_buffer)
    if send_buffer:
        sock.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_SNDBUF, send_buffer)


class TcpConnection:
    """One TCP connection (the ``Connection`` protocol).

    ``last_active`` is the ``time.monotonic()`` of the last chunk received or
    sent (of the connect, before any): what "longest idle" is measured by.
    """

    __slots__ = ("sock", "peer", "host", "last_active", "_closed")

    def __init__(self, sock: Any, peer: str, host: str = "") -> None:
        self.sock = sock
        self.peer = peer
        self.host = host
        """The peer's address without the port (what ``max_connections_per_peer`` counts by)."""
        self.last_active = _monotonic()
        self._closed = False

    def recv(self, max_bytes: int = 65536) -> bytes:
        """The next chunk; ``b""`` at end of stream or once closed."""
        if self._closed:
            return b""
        try:
            data: bytes = self.sock.recv(max_bytes)
        except OSError:
            if self._closed:
                return b""
            raise
        if data:
            self.last_active = _monotonic()
        return data

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.last_active = _monotonic()

    def close(self) -> None:
        """Close; a greenlet blocked in recv or sendall on it wakes up."""
        if self._closed:
            return
        self._closed = True
        try:
            self.sock.shutdown(_stdsocket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    @property
    def closed(self) -> bool:
        return self._closed


class _Connections:
    """The open connections of a transport and their handler greenlets."""

    def __init__(self) -> None:
        self.open: dict[TcpConnection, gevent.Greenlet] = {}
        self.ended = 0
        """Connections whose handler has returned, so far."""

    def spawn(self, handler: Handler, conn: TcpConnection, description: str) -> gevent.Greenlet:
        greenlet = gevent.spawn(self._run, handler, conn, description)
        self.open[conn] = greenlet
        return greenlet

    def _run(self, handler: Handler, conn: TcpConnection, description: str) -> None:
        try:
            handler(conn)
        except OSError as exc:
            # NOTE: not one INFO line per connection: 2,000 short-lived connections wrote
            # thousands of lines (issue 11); the status line counts them instead.
            log.debug("%s: connection %s ended: %s", description, conn.peer, exc)
        except Exception:  # noqa: BLE001 - one connection's failure must not affect others
            log.exception("%s: handler failed on connection %s", description, conn.peer)
        finally:
            conn.close()
            self.ended += 1
            self.open.pop(conn, None)

    def close_all(self, timeout: float) -> None:
        greenlets = list(self.open.values())
        for conn in list(self.open):
            conn.close()
        gevent.joinall(greenlets, timeout=timeout)


class TcpServer:
    """Listens on ``bind:port`` (port 0: any free port, see :attr:`address`)."""

    dials = False
    Config = TcpServerConfig

    def __init__(
        self,
        bind: str = "127.0.0.1",
        port: int = 0,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_connections_per_peer: int = 0,
        idle_timeout_s: float | None = None,
        backlog: int = 128,
        nodelay: bool = True,
        recv_buffer: int = DEFAULT_BUFFER,
        send_buffer: int = DEFAULT_BUFFER,
    ) -> None:
        self.bind = bind
        self.port = port
        self.max_connections = max_connections
        self.max_connections_per_peer = max_connections_per_peer
        """Connections one address may hold (0: no limit)."""
        self.idle_timeout_s = idle_timeout_s
        """Seconds without a byte in or out after which a connection is closed (None: never)."""
        self.backlog = backlog
        self.nodelay = nodelay
        self.recv_buffer = recv_buffer
        self.send_buffer = send_buffer
        self._listener: Any = None
        self._acceptor: gevent.Greenlet | None = None
        self._reaper: gevent.Greenlet | None = None
        self._connections = _Connections()
        self._per_peer: dict[str, int] = {}
        self._accept_log = RateLimitedLog(log)
        self.accepted = 0
        """Connections accepted so far."""
        self.closed_by: dict[str, int] = dict.fromkeys(CLOSE_REASONS, 0)
        """Connections the server closed itself, by reason (:data:`CLOSE_REASONS`)."""
        self.on_close: Callable[[str], None] | None = None
        """Called with the reason each time the server closes a connection itself (for metrics)."""

    @classmethod
    def from_config(cls, config: TcpServerConfig) -> TcpServer:
        return cls(**config.options())

    @property
    def description(self) -> str:
        return f"tcp-server {self.bind}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` actually bound (after :meth:`serve`)."""
        return (self.bind, self.port)

    @property
    def connections(self) -> int:
        return len(self._connections.open)

    @property
    def ended(self) -> int:
        """Connections that have ended so far (for whatever reason)."""
        return self._connections.ended

    def serve(self, handler: Handler) -> None:
        """Bind and listen now (an address in use or not local: ConfigError at transport.port), accept in a greenlet."""
        if self._listener is not None:
            raise RuntimeError(f"{self.description} is serving already")
        listener = listen(self.bind, self.port, self.backlog, key="transport.port")
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._acceptor = gevent.spawn(self._accept, handler)
        if self.idle_timeout_s is not None:
            self._reaper = gevent.spawn(self._reap, self.idle_timeout_s)

    # --- admission -----------------------------------------------------------------

    def _evict(self, reason: str, host: str | None = None) -> bool:
        """Close the longest-idle connection (of ``host`` when given); False when there is none."""
        open_ = self._connections.open
        if host is None:
            candidates: Any = open_
        else:
            candidates = [c for c in open_ if c.host == host]
        if not candidates:
            return False
        victim = min(candidates, key=_last_active)
        # Forget it now (its handler greenlet finishes later), so the count admits the newcomer.
        open_.pop(victim, None)
        self._forget_peer(victim)
        victim.close()
        self._count_close(reason)
        return True

    def _count_close(self, reason: str) -> None:
        self.closed_by[reason] += 1
        if self.on_close is not None:
            self.on_close(reason)

    def _forget_peer(self, conn: TcpConnection) -> None:
        if not self.max_connections_per_peer:
            return
        left = self._per_peer.get(conn.host, 0) - 1
        if left > 0:
            self._per_peer[conn.host] = left
        else:
            self._per_peer.pop(conn.host, None)

    def _accept(self, handler: Handler) -> None:
        listener = self._listener
        per_peer = self.max_connections_per_peer
        while True:
            try:
                sock, addr = listener.accept()
            except OSError as exc:
                if self._listener is None:
                    return
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: an idle connection must not keep the next feeder out.
                    if exc.errno in (errno.EMFILE, errno.ENFILE) and self._evict("descriptors"):
                        continue
                    self._accept_log("%s: accept failed: %s; retrying", self.description, exc)
                    gevent.sleep(0.1)
                    continue
                log.error("%s: accept failed: %s; no longer accepting", self.description, exc)
                return
            host = str(addr[0])
            conn = TcpConnection(sock, f"{host}:{addr[1]}", host)
            if per_peer and self._per_peer.get(host, 0) >= per_peer:
                self._evict("per_peer", host)
            if len(self._connections.open) >= self.max_connections:
                self._evict("max_connections")
            try:
                _tune(sock, self.nodelay, self.recv_buffer, self.send_buffer)
            except OSError as exc:
                log.debug("%s: connection %s lost at setup: %s", self.description, conn.peer, exc)
                sock.close()
                continue
            self.accepted += 1
            if per_peer:
                self._per_peer[host] = self._per_peer.get(host, 0) + 1
            self._connections.spawn(self._serve_one(handler), conn, self.description)

    def _serve_one(self, handler: Handler) -> Handler:
        if not self.max_connections_per_peer:
            return handler

        def counted(conn: TcpConnection) -> None:
            try:
                handler(conn)
            finally:
                # An evicted connection was forgotten already (it is no longer open).
                if conn in self._connections.open:
                    self._forget_peer(conn)

        return counted

    def _reap(self, idle_timeout: float) -> None:
        interval = min(1.0, max(0.01, idle_timeout / 4))
        open_ = self._connections.open
        while True:
            gevent.sleep(interval)
            cutoff = _monotonic() - idle_timeout
            for conn in [c for c in open_ if c.last_active < cutoff]:
                if open_.pop(conn, None) is not None:
                    self._forget_peer(conn)
                    conn.close()
                    self._count_close("idle_timeout")

    def close(self, timeout: float = 2.0) -> None:
        """Stop accepting, close every connection and wait (up to ``timeout``) for their handlers."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        for greenlet in (self._acceptor, self._reaper):
            if greenlet is not None:
                greenlet.kill(block=True, timeout=timeout)
        self._acceptor = self._reaper = None
        self._connections.close_all(timeout)


def _last_active(conn: TcpConnection) -> float:
    return conn.last_active


class TcpClient:
    """Dials ``host:port``; reconnects with capped exponential back-off while open."""

    dials = True
    Config = TcpClientConfig

    def __init__(
        self,
        host: str,
        port: int,
        *,
        reconnect_min: float = 0.1,
        reconnect_max: float = 5.0,
        connect_timeout: float = 5.0,
        nodelay: bool = True,
        recv_buffer: int = DEFAULT_BUFFER,
        send_buffer: int = DEFAULT_BUFFER,
    ) -> None:
        self.host = host
        self.port = port
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.connect_timeout = connect_timeout
        self.nodelay = nodelay
        self.recv_buffer = recv_buffer
        self.send_buffer = send_buffer
        self._dialer: gevent.Greenlet | None = None
        self._connections = _Connections()
        self._closing = False
        self.connects = 0
        """Connections made so far."""

    @classmethod
    def from_config(cls, config: TcpClientConfig) -> TcpClient:
        return cls(**config.options())

    @property
    def description(self) -> str:
        return f"tcp-client {self.host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def connected(self) -> bool:
        return bool(self._connections.open)

    def serve(self, handler: Handler) -> None:
        if self._dialer is not None:
            raise RuntimeError(f"{self.description} is running already")
        self._closing = False
        self._dialer = gevent.spawn(self._dial, handler)

    def _dial(self, handler: Handler) -> None:
        delay = self.reconnect_min
        outage_since: int | None = None  # failed attempts in the current outage, None when none
        while not self._closing:
            try:
                sock = gevent.socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
                sock.settimeout(None)
                _tune(sock, self.nodelay, self.recv_buffer, self.send_buffer)
            except OSError as exc:
                if outage_since is None:
                    log.warning(
                        "%s: cannot connect (%s); retrying with back-off up to %.1fs",
                        self.description, exc, self.reconnect_max,
                    )  # fmt: skip
                    outage_since = 0
                outage_since += 1
                gevent.sleep(delay)
                delay = min(delay * 2, self.reconnect_max)
                continue
            if outage_since:
                log.info("%s: connected after %d failed attempts", self.description, outage_since)
            else:
                log.info("%s: connected", self.description)
            delay = self.reconnect_min
            self.connects += 1
            conn = TcpConnection(sock, f"{self.host}:{self.port}")
            self._connections.spawn(handler, conn, self.description).join()
            if self._closing:
                return
            log.warning("%s: connection lost; reconnecting", self.description)
            outage_since = 0
            gevent.sleep(delay)

    def close(self, timeout: float = 2.0) -> None:
        """Stop dialing and close the connection."""
        self._closing = True
        self._connections.close_all(timeout)
        if self._dialer is not None:
            self._dialer.kill(block=True, timeout=timeout)
            self._dialer = None
