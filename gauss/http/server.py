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

Stopping (SPEC section 3) closes at once every connection waiting for its
next request with none of it received (a browser's kept-alive one); a
request in progress is answered, with ``Connection: close``, within the
stop's timeout.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import logging
import socket
import struct
import termios
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import gevent
import gevent.pool
from gevent.pywsgi import MAX_REQUEST_LINE, LoggingLogAdapter, WSGIHandler, WSGIServer
from geventwebsocket.handler import WebSocketHandler

from gauss.http.app import create_app
from gauss.http.encoding import dumps
from gauss.http.guard import environ_refusal
from gauss.http.limits import SHARE_KEY, ConnectionTable, InflightBudget, Share, WriteTimeout, timed_sendall
from gauss.http.metrics import ApiMetrics
from gauss.http.middleware import bearer_token, header, query_param, token_matches
from gauss.http.options import ApiOptions
from gauss.http.ws import WebSocketSession
from gauss.listening import listen
from gauss.ratelimit import RateLimitedLog

if TYPE_CHECKING:
    from gauss.hub import Hub

__all__ = ["ApiServer"]

log = logging.getLogger(__name__)
access_log = logging.getLogger("gauss.http.access")
_client_error_log = RateLimitedLog(log, interval=10.0, level=logging.INFO)

WS_PATH = "/ws"
WS_VERSION = "13"
"""The WebSocket version accepted (RFC 6455); gevent-websocket's drafts 7 and 8 are not."""


def _error_response(status: bytes, message: str, extra: bytes = b"") -> bytes:
    """A whole JSON error answer that closes the connection, for refusals before any application runs."""
    body = dumps({"error": message})
    head = b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nConnection: close\r\n" + extra
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def _refusal_response(limit: int) -> bytes:
    message = f"server at max_connections ({limit}) with none idle; retry shortly"
    return _error_response(b"503 Service Unavailable", message, b"Retry-After: 1\r\n")


_BAD_REQUEST = _error_response(b"400 Bad Request", "malformed HTTP request")
# gevent's own 414 has an empty body; its limit counts the line with its CRLF.
_REQUEST_LINE_TOO_LONG = _error_response(b"414 URI Too Long", f"request line too long (limit {MAX_REQUEST_LINE} bytes)")


_BACKLOG = 128
"""The listen() backlog (gevent's StreamServer default)."""

MAX_REQUEST_BODY = 65_536
"""The largest request body read (and thrown away: no route takes one); a larger one is a 413."""

_REFUSED_BODY_LINGER_S = 1.0
"""How long the body of a 413 is read and thrown away before the connection closes."""


def _unread_bytes(sock: socket.socket) -> int:
    """Bytes the kernel holds for ``sock`` not read yet (0 when it cannot tell); never waits."""
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, bytes(4)))[0])
    except (OSError, ValueError):  # closed
        return 0


def _declared_body(environ: Mapping[str, Any]) -> int:
    """The request body's declared length (0 when none or not a number: gevent refuses those itself)."""
    value = environ.get("CONTENT_LENGTH") or ""
    return int(value) if value.isdigit() else 0


def _upgrade_refusal(request_version: str, environ: Mapping[str, Any]) -> tuple[str, list[tuple[str, str]]] | None:
    """Why this WebSocket upgrade is refused and the headers its 400 carries (None: a valid upgrade)."""
    if request_version != "HTTP/1.1":
        return f"a WebSocket upgrade needs HTTP/1.1, not {request_version}", []
    version = environ.get("HTTP_SEC_WEBSOCKET_VERSION")
    if version != WS_VERSION:
        problem = "missing" if version is None else "unsupported"
        # RFC 6455 section 4.2.2: a version refusal names the versions the server speaks.
        return f"Sec-WebSocket-Version {problem} (supported: {WS_VERSION})", [("Sec-WebSocket-Version", WS_VERSION)]
    key = environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()
    if not key:
        return "Sec-WebSocket-Key is missing", []
    try:
        nonce = base64.b64decode(key, validate=True)
    except ValueError:  # binascii.Error
        nonce = b""
    if len(nonce) != 16:
        return "Sec-WebSocket-Key must be base64 of 16 bytes", []
    return None


def _take_absolute_form(environ: dict[str, Any]) -> None:
    """``GET http://host:port/path``: the path is the URL's, and so is the host (RFC 9112 section 3.2.2).

    A server must accept the absolute form; the URL's authority then stands
    for the ``Host`` header, and the Host checks (SPEC section 4) judge it.
    """
    path = environ.get("PATH_INFO", "")
    scheme, sep, rest = path.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return
    authority, slash, tail = rest.partition("/")
    environ["PATH_INFO"] = slash + tail if slash else "/"
    environ["HTTP_HOST"] = authority


class _Handler(WebSocketHandler):
    """One connection: timed request heads, timed writes, upgrade only allowed ``GET /ws``."""

    server: _Server
    SUPPORTED_VERSIONS = (WS_VERSION,)
    ignored_socket_errors = WSGIHandler.ignored_socket_errors + (errno.ETIMEDOUT,)
    evicted = False
    stopped = False
    """True once the server's stop closed this connection while it waited for a request."""
    provided_content_length: str | bool | None  # set by start_response (gevent, gevent-websocket)
    response_headers: list[tuple[bytes, bytes]]  # set by start_response, latin-1
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

    def close_for_stop(self) -> None:
        """The server stops: end this connection's wait for a request, unless one is arriving.

        Only for a connection in :meth:`_next_request` (none of its next request
        received): bytes in the kernel are a request that came before the stop,
        answered with ``Connection: close``.
        """
        sock = getattr(self, "socket", None)
        if sock is None or _unread_bytes(sock):
            return
        self.stopped = True
        try:
            sock.shutdown(socket.SHUT_RDWR)  # its peek returns b"" at once
        except OSError:
            pass

    def handle_one_request(self) -> Any:
        api = self.server.api
        options = api.options
        if self._served and api.stopping:
            return None  # the answer just sent was this connection's last
        api.connections.idle(self)
        if self._served and not self._await_request(options.keepalive_s):
            return None
        timer = self._head_timer = gevent.Timeout.start_new(options.request_timeout_s)
        try:
            # The first request's first byte is waited for under the head's clock, as before,
            # but where a stop can see that nothing of a request has come (a browser's preconnect).
            if not self._served and not self._next_request():
                return None
            result = super().handle_one_request()
        except gevent.Timeout as fired:
            if fired is not timer:
                raise
            api.metrics.http_timeouts.labels("request_head").inc()
            return None
        finally:
            timer.close()
            self._head_timer = None
        if isinstance(result, tuple) and result[0] == "414":
            api.metrics.http_bad_requests.inc()
            _client_error_log("request line over %d bytes from %s", MAX_REQUEST_LINE, self.client_address)
            result = ("414", _REQUEST_LINE_TOO_LONG)
        self._served += 1
        return result

    def _await_request(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the next request's first byte on a kept-alive connection."""
        timer = gevent.Timeout.start_new(seconds)
        try:
            return self._next_request()
        except gevent.Timeout as fired:
            if fired is not timer:
                raise
            self.server.api.metrics.http_timeouts.labels("keepalive").inc()
            return False
        finally:
            timer.close()

    def _next_request(self) -> bool:
        """Wait for the next request's first byte (False: the connection ended, or the server stops)."""
        api = self.server.api
        if api.stopping and not _unread_bytes(self.socket):
            return False
        waiting = api.waiting
        waiting.add(self)
        try:
            return bool(self.rfile.peek(1)) and not self.stopped
        except (OSError, ValueError):  # reset, or the file was closed by an eviction
            return False
        finally:
            waiting.discard(self)

    def get_environ(self) -> dict[str, Any]:
        # The head is in: the application's time is not the head's, and a
        # connection with a request is no longer idle.
        if self._head_timer is not None:
            self._head_timer.close()
        self.server.api.connections.busy(self)
        environ: dict[str, Any] = super().get_environ()
        environ[SHARE_KEY] = self.share
        _take_absolute_form(environ)
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
        linger = self.server.api.options.request_timeout_s
        try:
            if _declared_body(self.environ) > MAX_REQUEST_BODY:
                self._refuse_body()
                linger = min(linger, _REFUSED_BODY_LINGER_S)
            elif self.environ.get("PATH_INFO") == WS_PATH and self.server.api.ws_allowed(self.environ):
                super().run_application()
            else:
                WSGIHandler.run_application(self)
        finally:
            self._discard_body(linger)

    def _discard_body(self, seconds: float) -> None:
        """Read what is left of the request body within ``seconds``.

        gevent does it next, with no time limit: a client sending its body
        slowly (or never) held the connection. Cut off, the connection closes;
        its read side is shut, so gevent's own discard ends at once. A refused
        body gets only a short linger, for the client to read its 413 before
        the close (closing on unread bytes would reset the connection).
        """
        timer = gevent.Timeout.start_new(seconds)
        try:
            self.wsgi_input._discard()
        except gevent.Timeout as fired:
            if fired is not timer:
                raise
            self.server.api.metrics.http_timeouts.labels("request_body").inc()
            self.close_connection = True
            try:
                self.socket.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        except OSError:
            self.close_connection = True
        finally:
            timer.close()

    def _refuse_body(self) -> None:
        """413: no route takes a body; the connection closes after the answer."""
        self.server.api.metrics.http_bad_requests.inc()
        self.close_connection = True
        self.start_response("413 Content Too Large", [("Content-Type", "application/json"), ("Connection", "close")])
        self.result = [dumps({"error": f"request body over {MAX_REQUEST_BODY} bytes: the API takes none"})]
        self.process_result()

    def upgrade_websocket(self) -> Any:
        """Upgrade a valid WebSocket request; refuse a bad one with a JSON 400 (RFC 6455 section 4.2.2).

        Validated here, not by gevent-websocket: its refusals were a 402 (sic), a
        426, 400s without Content-Type, and an invalid base64 key escaped as a
        traceback. Anything but an upgrade goes on to Falcon (which answers 400).
        """
        environ = self.environ
        if (
            environ.get("REQUEST_METHOD") != "GET"
            or environ.get("HTTP_UPGRADE", "").lower() != "websocket"
            or "upgrade" not in environ.get("HTTP_CONNECTION", "").lower()
        ):
            return None
        refusal = _upgrade_refusal(self.request_version, environ)
        if refusal is None:
            return self.upgrade_connection()
        reason, headers = refusal
        self.logger.warning(reason)
        self.start_response("400 Bad Request", [("Content-Type", "application/json"), *headers])
        return [dumps({"error": f"/ws: {reason}"})]

    def _handle_client_error(self, ex: Exception) -> Any:
        # A malformed request head: 400, counted, one log line per 10 s, never a traceback.
        if self.evicted:
            # Not the client's fault: evict() cut its head short, and the socket it
            # shut down takes no answer (sending one was a BrokenPipeError traceback).
            log.debug("connection from %s evicted during its request head", self.client_address)
            return None
        self.server.api.metrics.http_bad_requests.inc()
        _client_error_log("bad request head from %s: %s", self.client_address, str(ex)[:200] or type(ex).__name__)
        return ("400", _BAD_REQUEST)

    def finalize_headers(self) -> None:
        if self.command == "HEAD" and self.provided_content_length is None:
            # Falcon drops a HEAD's body but knows no length for a streamed one: gevent
            # would add Content-Length: 0 (not GET's, RFC 9110 section 9.3.2) or chunked
            # encoding, whose last chunk the client would read as the next answer.
            self.provided_content_length = ""  # neither header
        super().finalize_headers()
        if self.server.api.stopping and not self.connection_upgraded:
            # The server stops: this answer is the connection's last, and says so.
            self.close_connection = True
            headers = [item for item in self.response_headers if item[0].lower() != b"connection"]
            self.response_headers = [*headers, (b"Connection", b"close")]

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
        self.stopping = False
        """True from :meth:`stop` on: no new requests, no keep-alive."""
        self.waiting: set[_Handler] = set()
        """Connections waiting for their next request, none of it received."""
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
        """Bind and serve (an address in use or not local: ConfigError at ``api.port``)."""
        bind, port = self._server.address
        # Bound here, not by gevent, whose listener leaks its socket when the bind fails.
        self._server.set_listener(listen(bind, port, _BACKLOG, key="api.port"))
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
        """Stop accepting, close idle connections and WebSockets (1001), let requests finish within ``timeout``.

        A connection waiting for its next request would otherwise hold the stop
        for the whole ``timeout`` (gevent waits for every connection's greenlet).
        """
        self.stopping = True
        self._server.close()  # stop accepting
        for handler in list(self.waiting):
            handler.close_for_stop()
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
        if self.stopping:  # upgraded after stop() closed the others
            session.close(code=1001)
        try:
            session.run()
        finally:
            self._sessions.discard(session)
            ws.closed = True  # the session did the closing handshake; geventwebsocket must not
        return []
