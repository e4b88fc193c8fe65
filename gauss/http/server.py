"""The API server: gevent's WSGI server, gevent-websocket's upgrade, ``/ws`` routed before Falcon.

Falcon's WebSocket support is ASGI-only, so the handler upgrades
``GET /ws`` itself (only when the request is authorised and its ``Host`` and
``Origin`` pass :mod:`gauss.http.guard`: otherwise Falcon answers it, 401 or
403) and hands the upgraded connection to a
:class:`gauss.http.ws.WebSocketSession`; every other request goes to the
Falcon app of :mod:`gauss.http.app`.

Every connection runs against the clock (SPEC section 4): its request head
must arrive within ``request_timeout_s``, an idle keep-alive connection is
closed after ``keepalive_s``, and a write the client does not take within
``write_timeout_s`` cuts it off. Connection slots are
:class:`gauss.http.limits.ConnectionTable`'s: the accept loop never stops.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import TYPE_CHECKING, Any, Callable, Iterable

import gevent
import gevent.pool
from gevent.pywsgi import LoggingLogAdapter, WSGIHandler, WSGIServer
from geventwebsocket.handler import WebSocketHandler

from gauss.http.app import create_app
from gauss.http.encoding import dumps
from gauss.http.guard import environ_refusal
from gauss.http.limits import SHARE_KEY, ConnectionTable, InflightBudget, Share, WriteTimeout, timed_sendall
from gauss.http.metrics import ApiMetrics
from gauss.http.middleware import bearer_token, header, query_param, token_matches
from gauss.http.options import ApiOptions
from gauss.http.ws import WebSocketSession
from gauss.ratelimit import RateLimitedLog

if TYPE_CHECKING:
    from gauss.hub import Hub

__all__ = ["ApiServer"]

log = logging.getLogger(__name__)
access_log = logging.getLogger("gauss.http.access")
_client_error_log = RateLimitedLog(log, interval=10.0, level=logging.INFO)

WS_PATH = "/ws"


def _refusal_response(limit: int) -> bytes:
    body = dumps({"error": f"server at max_connections ({limit}) with none idle; retry shortly"})
    head = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    return head + b"Content-Length: %d\r\nRetry-After: 1\r\n\r\n" % len(body) + body


def _bad_request_response() -> bytes:
    body = dumps({"error": "malformed HTTP request"})
    head = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


_BAD_REQUEST = _bad_request_response()


class _Handler(WebSocketHandler):
    """One connection: timed request heads, timed writes, upgrade only allowed ``GET /ws``."""

    server: _Server
    ignored_socket_errors = WSGIHandler.ignored_socket_errors + (errno.ETIMEDOUT,)
    evicted = False
    _head_timer: gevent.Timeout | None = None
    _served = 0

    def handle(self) -> None:
        api = self.server.api
        # PERF: without TCP_NODELAY the last small write of an answer (the end of
        # a chunked body, a small push) waits for the client's delayed ACK: +40 ms.
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        table = api.connections
        if not table.admit():
            api.metrics.http_connections_refused.inc()
            try:
                self.socket.send(_refusal_response(table.limit), 0, 0.0)  # never waits: it may be lost
            except OSError:
                pass
            self.rfile.close()  # the socket's descriptor closes with its last file
            self.socket.close()
            return
        self.share = Share()
        try:
            super().handle()
        finally:
            table.release(self)

    def evict(self) -> None:
        """Make way for a newcomer: end this idle connection (its read returns at once)."""
        self.server.api.metrics.http_connections_evicted.inc()
        sock = getattr(self, "socket", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_one_request(self) -> Any:
        api = self.server.api
        options = api.options
        api.connections.idle(self)
        if self._served and not self._await_request(options.keepalive_s):
            return None
        timer = self._head_timer = gevent.Timeout.start_new(options.request_timeout_s)
        try:
            result = super().handle_one_request()
        except gevent.Timeout as fired:
            if fired is not timer:
                raise
            api.metrics.http_timeouts.labels("request_head").inc()
            return None
        finally:
            timer.close()
            self._head_timer = None
        self._served += 1
        return result

    def _await_request(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the next request's first byte on a kept-alive connection."""
        timer = gevent.Timeout.start_new(seconds)
        try:
            return bool(self.rfile.peek(1))
        except gevent.Timeout as fired:
            if fired is not timer:
                raise
            self.server.api.metrics.http_timeouts.labels("keepalive").inc()
            return False
        except (OSError, ValueError):  # reset, or the file was closed by an eviction
            return False
        finally:
            timer.close()

    def get_environ(self) -> dict[str, Any]:
        # The head is in: the application's time is not the head's, and a
        # connection with a request is no longer idle.
        if self._head_timer is not None:
            self._head_timer.close()
        self.server.api.connections.busy(self)
        environ: dict[str, Any] = super().get_environ()
        environ[SHARE_KEY] = self.share
        return environ

    def _sendall(self, data: bytes) -> None:
        try:
            timed_sendall(self.socket, data, self.server.api.options.write_timeout_s)
        except WriteTimeout:
            self.server.api.metrics.http_timeouts.labels("write").inc()
            self.close_connection = True
            self.status = "write timeout"
            raise
        except OSError as exc:
            self.status = f"socket error: {exc}"
            raise
        self.response_length += len(data)

    def run_application(self) -> Any:
        if self.environ.get("PATH_INFO") == WS_PATH and self.server.api.ws_allowed(self.environ):
            return super().run_application()
        return WSGIHandler.run_application(self)

    def upgrade_websocket(self) -> Any:
        # gevent-websocket answers a bad upgrade with a body of str (a TypeError on
        # write) and lets an invalid base64 key escape as binascii.Error: both
        # were tracebacks per request. Its refusals become JSON errors here.
        try:
            result = super().upgrade_websocket()
        except ValueError:  # binascii.Error: Sec-WebSocket-Key is not base64
            self.start_response("400 Bad Request", [("Content-Type", "application/json")])
            return [dumps({"error": "/ws: Sec-WebSocket-Key is not valid base64"})]
        if isinstance(result, list) and any(isinstance(part, str) for part in result):
            message = "".join(part if isinstance(part, str) else part.decode("latin-1") for part in result)
            return [dumps({"error": f"/ws: {message}"})]
        return result

    def _handle_client_error(self, ex: Exception) -> Any:
        # A malformed request head: 400, counted, one log line per 10 s, never a traceback.
        self.server.api.metrics.http_bad_requests.inc()
        _client_error_log("bad request head from %s: %s", self.client_address, str(ex)[:200] or type(ex).__name__)
        return ("400", _BAD_REQUEST)

    def log_request(self) -> None:
        if access_log.isEnabledFor(logging.DEBUG):
            access_log.debug("%s", self.format_request())


class _RateLimitedLogger:
    """gevent-websocket's ``server.logger``: its per-request warnings, at most one per 10 s."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._warn = RateLimitedLog(logger, interval=10.0, level=logging.INFO)

    def debug(self, message: str, *args: Any) -> None:
        self._logger.debug(message, *args)

    def info(self, message: str, *args: Any) -> None:
        self._logger.debug(message, *args)

    def warning(self, message: str, *args: Any) -> None:
        self._warn("WebSocket upgrade refused: " + message, *args)

    warn = warning
    error = warning
    exception = warning


class _Server(WSGIServer):
    api: ApiServer
    logger: Any


class ApiServer:
    """The HTTP REST + WebSocket API of one hub, on ``bind``:``port`` (0: any free port)."""

    def __init__(self, hub: Hub, bind: str, port: int, options: ApiOptions) -> None:
        self.hub = hub
        self.options = options
        self.metrics = ApiMetrics(hub.metrics.registry)
        self.connections = ConnectionTable(options.max_connections)
        self.budget = InflightBudget(
            options.max_inflight_bytes,
            options.max_inflight_bytes_per_connection,
            options.inflight_wait_s,
            on_refusal=self.metrics.inflight_refusals.inc,
        )
        self.metrics.watch(self.connections, self.budget)
        self.app = create_app(hub, options, self.metrics, budget=self.budget)
        self._sessions: set[WebSocketSession] = set()
        self._server = _Server(
            (bind, port),
            self._dispatch,
            handler_class=_Handler,
            # Unbounded on purpose: ConnectionTable decides who is served, so the
            # accept loop never stops (a full gevent Pool stops accepting: issue 11).
            spawn=gevent.pool.Pool(),
            log=LoggingLogAdapter(access_log, logging.DEBUG),
            error_log=LoggingLogAdapter(log, logging.ERROR),
        )
        self._server.api = self
        self._server.logger = _RateLimitedLogger(logging.getLogger("gauss.http.websocket"))

    @property
    def address(self) -> tuple[str, int]:
        """Where the server listens (the real port when 0 was asked for)."""
        host, port = self._server.address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Bind and serve (raises OSError when the address is taken)."""
        self._server.start()
        host, port = self.address
        token = self.options.token
        if token is None:
            auth = "no token: open to whoever can connect (loopback Host names and allowed_hosts only)"
        elif token:
            auth = "bearer token required"
        else:
            auth = "LOCKED: every request but /api/health is refused"
            log.error("API: token_env names %s, which is not set; %s", self.options.token_env, auth)
        log.info("API on http://%s:%d (REST /api, WebSocket /ws, /metrics); %s", host, port, auth)

    def stop(self, timeout: float = 5.0) -> None:
        """Close every WebSocket (close code 1001), then stop the HTTP server."""
        for session in list(self._sessions):
            session.close(code=1001)
        self._server.stop(timeout=timeout)

    @property
    def websocket_sessions(self) -> int:
        return len(self._sessions)

    def ws_allowed(self, environ: dict[str, Any]) -> bool:
        """Upgrade this ``/ws`` request? (If not, Falcon answers it: 401 or 403 with the reason.)"""
        if environ_refusal(self.options, environ, websocket=True) is not None:
            return False
        token = self.options.token
        if token is None:
            return True
        presented = bearer_token(header(environ, "Authorization"), query_param(environ.get("QUERY_STRING", ""), "token"))
        return token_matches(token, presented)

    def _dispatch(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        ws = environ.get("wsgi.websocket")
        if ws is None:
            return self.app(environ, start_response)  # type: ignore[no-any-return]
        self.metrics.http_requests.labels(WS_PATH, "GET", "101").inc()
        handler = ws.handler
        sock = handler.socket
        if self.options.ws_send_buffer:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.options.ws_send_buffer)
            except OSError:  # the connection is already gone: the session ends at its first read
                pass
        write_timeout = self.options.write_timeout_s
        timeouts = self.metrics.http_timeouts.labels("ws_write")

        def write(data: bytes) -> None:
            try:
                timed_sendall(sock, data, write_timeout)
            except WriteTimeout:
                timeouts.inc()
                raise

        def shutdown() -> None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        table = self.connections

        def idle(waiting: bool) -> None:
            if waiting:
                table.idle(handler)
            else:
                table.busy(handler)

        session = WebSocketSession(
            handler.rfile.read, write, shutdown, self.hub.registry, self.options, self.metrics,
            peer="%s:%s" % tuple(handler.client_address[:2]) if handler.client_address else "",
            budget=self.budget, share=environ.get(SHARE_KEY), idle=idle,
        )  # fmt: skip
        self._sessions.add(session)
        try:
            session.run()
        finally:
            self._sessions.discard(session)
            ws.closed = True  # the session did the closing handshake; geventwebsocket must not
        return []
