"""Browser-facing checks of SPEC section 4: which ``Host`` a tokenless API answers, which ``Origin`` may open ``/ws``.

First, with or without a token, an HTTP/1.1 request without ``Host``, or
with two, is a 400 (RFC 9112 section 3.2; a malformed ``Host : x`` arrives as none). The two
checks below close holes that only a browser opens, so both let programs through:

- DNS rebinding: a page on ``evil.example`` re-points that name at
  127.0.0.1 and then reads the tokenless API as "its own" site. The browser
  still sends ``Host: evil.example``, so a tokenless API answers only
  loopback names and ``[api] allowed_hosts`` (403 otherwise). With a token the
  page would need the token, so the check is off.
- Cross-site WebSocket hijacking: browsers let any page open a WebSocket to
  any address (no CORS for WebSockets) and send its ``Origin``. An upgrade
  whose ``Origin`` is neither the API's own (``http(s)://`` + its ``Host``)
  nor in ``cors_origins`` gets 403. No ``Origin``: not a browser, accepted.
"""

from __future__ import annotations

from typing import Any, Mapping

import falcon

from gauss.http.options import ApiOptions

__all__ = ["LOOPBACK_HOSTS", "MISSING_HOST", "GuardMiddleware", "environ_refusal", "host_refusal", "origin_refusal"]

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})
"""Host names (without port) a tokenless API always answers."""

MISSING_HOST = "missing Host header (HTTP/1.1 requires one)"


def _host_name(host: str) -> str:
    """``Host`` without its port: ``127.0.0.1:9200`` -> ``127.0.0.1``, ``[::1]:9200`` -> ``[::1]``."""
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    name, _, port = host.rpartition(":")
    return name if name and port.isdigit() else host


def host_refusal(options: ApiOptions, host: str | None) -> str | None:
    """Why a request with this ``Host`` is refused (None: answered)."""
    if options.token is not None or host is None:
        return None  # a token guards the API itself; no Host: HTTP/1.0, not a browser
    host = host.strip().lower()
    allowed = options.allowed_hosts
    if _host_name(host) in LOOPBACK_HOSTS or allowed == ("*",) or host in allowed or _host_name(host) in allowed:
        return None
    return f"host {host!r} refused: a tokenless API answers only loopback names and [api] allowed_hosts"


def origin_refusal(options: ApiOptions, origin: str | None, host: str | None) -> str | None:
    """Why a WebSocket upgrade from this ``Origin`` is refused (None: accepted)."""
    if origin is None:
        return None
    origin = origin.strip().lower().rstrip("/")
    if host is not None and origin in (f"http://{host.strip().lower()}", f"https://{host.strip().lower()}"):
        return None
    cors = options.cors_origins
    if cors == ("*",) or origin in (o.lower().rstrip("/") for o in cors):
        return None
    return f"origin {origin!r} refused: WebSocket upgrades are accepted from the API's own origin and [api] cors_origins"


def environ_refusal(options: ApiOptions, environ: Mapping[str, Any], *, websocket: bool) -> falcon.HTTPError | None:
    """The error that refuses this WSGI request, or None.

    400 for an HTTP/1.1 request without ``Host``; else 403 from :func:`host_refusal`,
    then (for a WebSocket upgrade) :func:`origin_refusal`.
    """
    host = environ.get("HTTP_HOST")
    if host is None and environ.get("SERVER_PROTOCOL") == "HTTP/1.1":
        return falcon.HTTPBadRequest(description=MISSING_HOST)
    if host is not None and "," in host:  # gevent joins repeated headers with commas
        return falcon.HTTPBadRequest(description="more than one Host header")
    refusal = host_refusal(options, host)
    if refusal is None and websocket:
        refusal = origin_refusal(options, environ.get("HTTP_ORIGIN"), host)
    return None if refusal is None else falcon.HTTPForbidden(description=refusal)


class GuardMiddleware:
    """400 ``{"error": ...}`` for HTTP/1.1 without ``Host``, 403 for a refused ``Host`` (any route) or ``Origin`` (``/ws``)."""

    def __init__(self, options: ApiOptions, ws_path: str) -> None:
        self._options = options
        self._ws_path = ws_path

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        refusal = environ_refusal(self._options, req.env, websocket=req.path == self._ws_path)
        if refusal is not None:
            raise refusal
