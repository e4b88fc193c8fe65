"""The API server: gevent's WSGI server, gevent-websocket's upgrade, ``/ws`` routed before Falcon.

Falcon's WebSocket support is ASGI-only, so the handler upgrades
``GET /ws`` itself (only when the request is authorised: otherwise Falcon
answers it, 401) and hands the upgraded connection to a
:class:`gauss.http.ws.WebSocketSession`; every other request goes to the
Falcon app of :mod:`gauss.http.app`.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any, Callable, Iterable

import gevent
import gevent.pool
from gevent.pywsgi import LoggingLogAdapter, WSGIHandler, WSGIServer
from geventwebsocket.handler import WebSocketHandler

from gauss.http.app import create_app
from gauss.http.metrics import ApiMetrics
from gauss.http.middleware import bearer_token, header, query_param, token_matches
from gauss.http.options import ApiOptions
from gauss.http.ws import WebSocketSession

if TYPE_CHECKING:
    from gauss.hub import Hub

__all__ = ["ApiServer"]

log = logging.getLogger(__name__)
access_log = logging.getLogger("gauss.http.access")

WS_PATH = "/ws"


class _Handler(WebSocketHandler):
    """Upgrade only authorised ``GET /ws``; everything else is plain WSGI."""

    server: _Server

    def handle(self) -> None:
        # PERF: without TCP_NODELAY the last small write of an answer (the end of
        # a chunked body, a small push) waits for the client's delayed ACK: +40 ms.
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        super().handle()

    def run_application(self) -> Any:
        if self.environ.get("PATH_INFO") == WS_PATH and self.server.api.ws_allowed(self.environ):
            return super().run_application()
        return WSGIHandler.run_application(self)

    def log_request(self) -> None:
        if access_log.isEnabledFor(logging.DEBUG):
            access_log.debug("%s", self.format_request())


class _Server(WSGIServer):
    api: ApiServer
    logger: logging.Logger


class ApiServer:
    """The HTTP REST + WebSocket API of one hub, on ``bind``:``port`` (0: any free port)."""

    def __init__(self, hub: Hub, bind: str, port: int, options: ApiOptions) -> None:
        self.hub = hub
        self.options = options
        self.metrics = ApiMetrics(hub.metrics.registry)
        self.app = create_app(hub, options, self.metrics)
        self._sessions: set[WebSocketSession] = set()
        self._server = _Server(
            (bind, port),
            self._dispatch,
            handler_class=_Handler,
            spawn=gevent.pool.Pool(options.max_connections),
            log=LoggingLogAdapter(access_log, logging.DEBUG),
            error_log=LoggingLogAdapter(log, logging.ERROR),
        )
        self._server.api = self
        self._server.logger = logging.getLogger("gauss.http.websocket")

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
            auth = "no token: open to whoever can connect"
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

        def shutdown() -> None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        session = WebSocketSession(
            handler.rfile.read, sock.sendall, shutdown, self.hub.registry, self.options, self.metrics,
            peer="%s:%s" % tuple(handler.client_address[:2]) if handler.client_address else "",
        )  # fmt: skip
        self._sessions.add(session)
        try:
            session.run()
        finally:
            self._sessions.discard(session)
            ws.closed = True  # the session did the closing handshake; geventwebsocket must not
        return []
